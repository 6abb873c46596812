#!/bin/sh
# Build interop/goplugin-host into OUTDIR (default: interop/bin) with Debian's Go packages only:
# GOPATH mode, no module downloads, no network. Needs Debian's Go packages (scripts/system-packages;
# scripts/setup test installs them).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out=${1:-$here/bin}
mkdir -p "$out"
out=$(cd "$out" && pwd)

for tool in go protoc protoc-gen-go; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "build.sh: $tool not found: run scripts/setup test (it installs Debian's Go packages)" >&2
        exit 1
    }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$work/src
# myshoes' Shoes stubs, in myshoes' own import path (go_package in myshoes.proto)
mkdir -p "$src"
protoc -I "$root/proto" --go_out=plugins=grpc:"$src" "$root/proto/shoes_vz/wire/myshoes.proto"
mkdir -p "$src/shoesvz/goplugin-host"
cp "$here/goplugin-host/main.go" "$src/shoesvz/goplugin-host/"

export GO111MODULE=off GOFLAGS= GOPROXY=off GOPATH="$work:/usr/share/gocode"
export GOCACHE="${GOCACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shoes-vz-go-build}"
cd "$src/shoesvz/goplugin-host"
go build -o "$out/goplugin-host" .
echo "$out/goplugin-host"
