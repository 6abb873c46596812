"""myshoes' `setup_script` for a guest, and a test double of the actions runner it installs.

The wrapper is the one myshoes sends (pkg/starter/scripts.go, `templateCompressedScript`): the main
script gzip'd and base64'd into `COMPRESSED_SCRIPT`, written to `$RUNNER_BASE_DIRECTORY/main.sh`
and run with `bash -c`. The main script is written here from myshoes' documented steps
(`templateCreateLatestRunnerOnce`, reference §5) rather than copied: root → `sudo -E -u
$RUNNER_USER`; `which curl` or fail, `which jq` or install it or fail, `which docker` or try to
install it; `HOME=/home/$RUNNER_USER`; `cd $RUNNER_BASE_DIRECTORY; mkdir -p runner`; the tarball
`actions-runner-linux-x64-<version>.tar.gz` from the cache lookups or `curl -O -L` from GitHub's
releases; `tar xzf … -C runner`; `config.sh --unattended … --labels myshoes,dependabot
--ephemeral` under `source /etc/environment`; `bin/runsvc.sh` overwritten (node20, else node16,
running `bin/RunnerService.js`); `runsvc.sh` in the foreground.

The runner double: `config.sh` writes `.runner` as the real one does (JSON with a UTF-8 BOM),
`run.sh` and `bin/RunnerService.js` (run by the double's `externals/node20/bin/node`) start
`bin/Runner.Listener`, which logs "Listening for Jobs" to `_diag/Runner_*.log` and stays up as a
process named `…/bin/Runner.Listener`. `curl` is a double too, in the template's guest tree
(`sim/root/usr/local/bin/curl`, first on the guest's PATH): it serves `curl -O -L <GitHub
release URL>` from the copy of the tarball in `sim/root/usr/local/share/shoes-vz-test/`.
"""

from __future__ import annotations

import base64
import gzip
import io
import tarfile
from pathlib import Path

RUNNER_VERSION = "v2.321.0"
TARBALL = f"actions-runner-linux-x64-{RUNNER_VERSION[1:]}.tar.gz"
SHARE = "usr/local/share/shoes-vz-test"

WRAPPER = """#!/bin/bash

set -e

# main script compressed base64 and gzip
export COMPRESSED_SCRIPT={compressed}
export MAIN_SCRIPT_PATH={base}/main.sh

echo ${{COMPRESSED_SCRIPT}} | base64 -d | gzip -d > ${{MAIN_SCRIPT_PATH}}

chmod +x ${{MAIN_SCRIPT_PATH}}
bash -c ${{MAIN_SCRIPT_PATH}}"""

MAIN = r"""#!/bin/bash
set -e

runner_scope=__SCOPE__
ghe_hostname=__GHE__
runner_name=__NAME__
RUNNER_TOKEN=__TOKEN__
RUNNER_USER=__USER__
RUNNER_VERSION=__VERSION__
RUNNER_BASE_DIRECTORY=__BASE__

sudo_prefix=""
if [ $(id -u) -eq 0 ]; then
  sudo_prefix="sudo -E -u ${RUNNER_USER} "
fi
echo "Configuring runner @ ${runner_scope}"

runner_plat=linux
[ ! -z "$(which sw_vers)" ] && runner_plat=osx

fatal() { echo "error: $1" >&2; exit 1; }
install_jq() {
  echo "jq is not installed, will be install jq."
  if [ -e /etc/debian_version ]; then sudo apt-get update -y -qq; sudo apt-get install -y jq; fi
  if [ "${runner_plat}" = "osx" ]; then brew install jq; fi
}
install_docker() {
  echo "docker is not installed, will be install docker."
  if [ -e /etc/debian_version ]; then sudo apt-get update -y -qq; sudo apt-get install -y docker.io; fi
  if [ "${runner_plat}" = "osx" ]; then echo "No install in macOS, It is same that GitHub-hosted"; fi
}
runner_file_name() {
  if [ "${runner_plat}" = "osx" ]; then
    arch=x64; [ "$(uname -m)" = "arm64" ] && arch=arm64
    echo "actions-runner-osx-${arch}-${RUNNER_VERSION:1}.tar.gz"
  else
    echo "actions-runner-linux-x64-${RUNNER_VERSION:1}.tar.gz"
  fi
}
extract() {
  tar xzf "./$1" -C runner
  if [ $(id -u) -eq 0 ]; then chown -R ${RUNNER_USER} ./runner; fi
}

[ -n "${runner_scope}" ] || fatal "supply scope as argument 1"
which curl || fatal "curl required.  Please install in PATH with apt-get, brew, etc"
which jq || install_jq
which jq || fatal "jq required.  Please install in PATH with apt-get, brew, etc"
which docker || install_docker

export HOME="/home/${RUNNER_USER}"
[ "${runner_plat}" = "osx" ] && export HOME="/Users/${RUNNER_USER}"

cd ${RUNNER_BASE_DIRECTORY}
${sudo_prefix}mkdir -p runner

runner_file=$(runner_file_name)
if [ -f "${RUNNER_BASE_DIRECTORY}/runner/config.sh" ]; then
  echo "already extracted"
elif [ -f "/usr/local/etc/runner-${RUNNER_VERSION}/config.sh" ]; then
  rm -r ./runner; mv /usr/local/etc/runner-${RUNNER_VERSION} ./runner
elif [ -f "${runner_file}" ]; then
  extract ${runner_file}
elif [ -f "/usr/local/etc/${runner_file}" ]; then
  mv /usr/local/etc/${runner_file} ./; extract ${runner_file}
else
  url="https://github.com/actions/runner/releases/download/${RUNNER_VERSION}/${runner_file}"
  echo "Downloading ${RUNNER_VERSION} for ${runner_plat} ..."
  curl -O -L ${url}
  ls -la *.tar.gz
  extract ${runner_file}
fi

cd ${RUNNER_BASE_DIRECTORY}/runner
runner_url="https://github.com/${runner_scope}"
[ -n "${ghe_hostname}" ] && runner_url="${ghe_hostname}/${runner_scope}"
config="./config.sh --unattended --url $runner_url --token $RUNNER_TOKEN --name $runner_name"
${sudo_prefix}bash -c "source /etc/environment; $config --labels myshoes,dependabot --ephemeral"

cat << EOF > ./bin/runsvc.sh
#!/bin/bash
trap 'kill -INT \$PID' TERM INT
if [ -f ".path" ]; then export PATH=\$(cat .path); fi
NODE_PATH="./externals/node20/bin/node"
if [ ! -e "\${NODE_PATH}" ]; then NODE_PATH="./externals/node16/bin/node"; fi
\${NODE_PATH} ./bin/RunnerService.js \$* &
PID=\$!
wait \$PID
trap - TERM INT
wait \$PID
EOF
chmod +x ./bin/runsvc.sh
cat << 'EOF' > ./bin/RunnerService.js
// myshoes' patched service: runs bin/Runner.Listener run --startuptype service, relaunching it
EOF

if [ -e "/myshoes-actions-runner-hook-job-started.sh" ]; then
  export ACTIONS_RUNNER_HOOK_JOB_STARTED="/myshoes-actions-runner-hook-job-started.sh"
fi
${sudo_prefix}bash -c "source /etc/environment; ./bin/runsvc.sh"
"""


def setup_script(runner_name: str, runner_user: str, *, scope: str = "octo-org/octo-repo",
                 base: str = "/tmp", token: str = "AAAAREGISTRATIONTOKEN") -> str:
    """The `setup_script` myshoes sends for `runner_name` (RUNNER_BASE_DIRECTORY=/tmp by default)."""
    main = (MAIN.replace("__SCOPE__", scope).replace("__GHE__", "").replace("__NAME__", runner_name)
            .replace("__TOKEN__", token).replace("__USER__", runner_user).replace("__VERSION__", RUNNER_VERSION)
            .replace("__BASE__", base))
    compressed = base64.b64encode(gzip.compress(main.encode())).decode()
    return WRAPPER.format(compressed=compressed, base=base)


CONFIG_SH = r"""#!/bin/bash
# test double of actions/runner's config.sh: what the real one leaves behind, without GitHub
set -e
cd "$(dirname "$0")"
name=""; url=""; labels=""
while [ $# -gt 0 ]; do
  case "$1" in --name) name=$2; shift;; --url) url=$2; shift;; --labels) labels=$2; shift;; --token) shift;; esac
  shift
done
[ -n "$name" ] && [ -n "$url" ] || { echo "config.sh: --url and --name are required" >&2; exit 1; }
printf '\xef\xbb\xbf{"agentId": %d, "agentName": "%s", "poolId": 1, "gitHubUrl": "%s", "workFolder": "_work"}' \
  $$ "$name" "$url" > .runner
echo "$labels" > .labels
echo "√ Runner successfully added"
echo "√ Settings Saved."
"""

RUN_SH = """#!/bin/bash
cd "$(dirname "$0")"
exec ./bin/Runner.Listener run "$@"
"""

LISTENER = """#!/bin/bash
# test double of the runner's listener: logs what the real one logs, then waits for jobs
cd "$(dirname "$0")/.."
mkdir -p _diag
log="_diag/Runner_$(date -u +%Y%m%d-%H%M%S)-utc.log"
echo "[$(date -u '+%Y-%m-%d %H:%M:%SZ') INFO Runner] Listening for Jobs" >> "$log"
echo "Listening for Jobs"
exec -a "$PWD/bin/Runner.Listener" sleep 2147483647
"""

NODE = """#!/bin/bash
# test double of the runner's node: does what bin/RunnerService.js does, start the listener
exec ./bin/Runner.Listener run --startuptype service
"""

CURL = """#!/bin/sh
# test double of curl in a sim guest: `curl -O -L URL` of a GitHub release, from a local copy
url=""
for a in "$@"; do case "$a" in -*) ;; *) url="$a" ;; esac; done
case " $* " in *" -O "*) ;; *) echo "curl (test double): only -O -L URL is served, not: $*" >&2; exit 2 ;; esac
name=${url##*/}
if [ ! -f "/usr/local/share/shoes-vz-test/$name" ]; then
  echo "curl: (22) The requested URL returned error: 404" >&2; exit 22
fi
cp "/usr/local/share/shoes-vz-test/$name" "./$name"
"""


def _add(tar: tarfile.TarFile, name: str, text: str, mode: int) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def runner_tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for d in ("bin", "externals", "externals/node20", "externals/node20/bin"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        _add(tar, "config.sh", CONFIG_SH, 0o755)
        _add(tar, "run.sh", RUN_SH, 0o755)
        _add(tar, "bin/Runner.Listener", LISTENER, 0o755)
        _add(tar, "externals/node20/bin/node", NODE, 0o755)
    return buf.getvalue()


def guest_tree(root: Path) -> Path:
    """A template guest tree (`init_sim(guest_root=…)`) with the curl double and the runner tarball."""
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/curl").write_text(CURL)
    (root / "usr/local/bin/curl").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc/environment").write_text("")  # the script sources it; not every host has one
    (root / SHARE).mkdir(parents=True)
    (root / SHARE / TARBALL).write_bytes(runner_tarball())
    return root
