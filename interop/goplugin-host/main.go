// goplugin-host: drives shoes-vz-plugin exactly as myshoes does (whywaita/myshoes:pkg/shoes/shoes.go):
// hashicorp/go-plugin, ProtocolVersion 1, cookie SHOES_PLUGIN_MAGIC_COOKIE=are_you_a_shoes?, plugin
// key "shoes_grpc", gRPC only, a fresh plugin process per call, Kill() right after the call.
//
//	goplugin-host [flags] PLUGIN   add, ping, delete, delete again (NOT_FOUND), one process each
//	goplugin-host sniff FILE...    Go's http.DetectContentType of each file's first 512 bytes
//
// Every result is one JSON line on stdout; go-plugin's own log (with the plugin's stderr re-logged
// at its hclog level) goes to stderr. Exit status 1 when a check fails.
//
// Built in GOPATH mode from Debian's packages only (interop/build.sh); the Shoes stubs are generated
// from proto/shoes_vz/wire/myshoes.proto into myshoes' own import path.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	pb "github.com/whywaita/myshoes/api/proto.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// myshoes' handshake (pkg/shoes/shoes.go)
var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "SHOES_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "are_you_a_shoes?",
}

const pluginKey = "shoes_grpc"

// shoesPlugin is the host side of myshoes' plugin.Plugin: it only dispenses a ShoesClient.
type shoesPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (shoesPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("goplugin-host is a host only")
}

func (shoesPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (interface{}, error) {
	return pb.NewShoesClient(conn), nil
}

type result map[string]interface{}

func emit(r result) {
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000.0 }

// call starts one plugin process, runs fn against it and Kill()s it, as myshoes' GetClient + defer
// teardown do. It records handshake, RPC and Kill durations in r.
func call(path string, logger hclog.Logger, r result, fn func(pb.ShoesClient, plugin.ClientProtocol) error) error {
	started := time.Now()
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  handshake,
		Plugins:          map[string]plugin.Plugin{pluginKey: &shoesPlugin{}},
		Cmd:              exec.Command(path),
		Managed:          true,
		Stderr:           os.Stderr,
		SyncStdout:       os.Stderr, // myshoes: os.Stdout; ours carries the JSON results
		SyncStderr:       os.Stderr,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger,
	})
	defer func() {
		killStart := time.Now()
		client.Kill()
		r["kill_ms"] = ms(time.Since(killStart))
	}()
	rpcClient, err := client.Client()
	if err != nil {
		return fmt.Errorf("start plugin: %v", err)
	}
	r["handshake_ms"] = ms(time.Since(started))
	if n := client.NegotiatedVersion(); n != 1 {
		return fmt.Errorf("negotiated app protocol %d, want 1", n)
	}
	raw, err := rpcClient.Dispense(pluginKey)
	if err != nil {
		return fmt.Errorf("dispense: %v", err)
	}
	rpcStart := time.Now()
	err = fn(raw.(pb.ShoesClient), rpcClient)
	r["rpc_ms"] = ms(time.Since(rpcStart))
	return err
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "sniff" {
		os.Exit(sniff(os.Args[2:]))
	}
	runnerName := flag.String("runner-name", "", "runner_name (default myshoes-<random>)")
	resourceType := flag.String("resource-type", "Unknown", "ResourceType enum name: Unknown, Nano … XLarge4")
	labels := flag.String("labels", "self-hosted,macos", "comma-separated labels")
	script := flag.String("setup-script", "#!/bin/bash\necho shoes-vz interop\n", "setup_script")
	timeout := flag.Duration("timeout", 5*time.Minute, "AddInstance deadline (myshoes: 5 min)")
	maxKill := flag.Duration("max-kill", time.Second, "fail when Kill() takes longer (go-plugin waits 2 s)")
	logLevel := flag.String("log-level", "debug", "go-plugin host log level")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: goplugin-host [flags] PLUGIN | goplugin-host sniff FILE...")
		os.Exit(2)
	}
	path := flag.Arg(0)
	if *runnerName == "" {
		rand.Seed(time.Now().UnixNano())
		*runnerName = fmt.Sprintf("myshoes-%08x-%04x", rand.Uint32(), rand.Uint32()&0xffff)
	}
	rt, ok := pb.ResourceType_value[*resourceType]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown resource type %q\n", *resourceType)
		os.Exit(2)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "myshoes", Output: os.Stderr, Level: hclog.LevelFromString(*logLevel)})

	var failures []string
	fail := func(step, format string, args ...interface{}) {
		failures = append(failures, step+": "+fmt.Sprintf(format, args...))
	}
	checkKill := func(step string, r result) {
		if k, ok := r["kill_ms"].(float64); !ok || k > ms(*maxKill) {
			fail(step, "Kill() took %v ms, limit %v", r["kill_ms"], ms(*maxKill))
		}
	}

	// 1. AddInstance (plus the health check go-plugin's Ping() makes)
	add := result{"step": "add", "runner_name": *runnerName}
	var cloudID string
	err := call(path, logger, add, func(shoes pb.ShoesClient, proto plugin.ClientProtocol) error {
		if err := proto.Ping(); err != nil {
			return fmt.Errorf("ping (grpc.health.v1 \"plugin\"): %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		resp, err := shoes.AddInstance(ctx, &pb.AddInstanceRequest{
			RunnerName:   *runnerName,
			SetupScript:  *script,
			ResourceType: pb.ResourceType(rt),
			Labels:       splitLabels(*labels),
		})
		add["code"] = status.Code(err).String()
		if err != nil {
			add["error"] = status.Convert(err).Message()
			return nil
		}
		cloudID = resp.CloudId
		add["cloud_id"], add["shoes_type"], add["ip_address"] = resp.CloudId, resp.ShoesType, resp.IpAddress
		add["resource_type"] = resp.ResourceType.String()
		return nil
	})
	if err != nil {
		fail("add", "%v", err)
	} else if add["code"] != "OK" {
		fail("add", "AddInstance: %v %v", add["code"], add["error"])
	} else {
		if !strings.HasPrefix(cloudID, "shoes-vz-") {
			fail("add", "cloud_id %q does not start with shoes-vz-", cloudID)
		}
		if add["shoes_type"] != "shoes-vz" {
			fail("add", "shoes_type %q, want shoes-vz", add["shoes_type"])
		}
		if ip, _ := add["ip_address"].(string); net.ParseIP(ip) == nil {
			fail("add", "ip_address %q is not an IP address", ip)
		}
	}
	checkKill("add", add)
	emit(add)

	// 2. DeleteInstance, then 3. the same again: NOT_FOUND (myshoes treats it as done)
	for _, step := range []string{"delete", "delete-again"} {
		r := result{"step": step, "cloud_id": cloudID}
		err := call(path, logger, r, func(shoes pb.ShoesClient, _ plugin.ClientProtocol) error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // myshoes' DeletingTimeout
			defer cancel()
			_, err := shoes.DeleteInstance(ctx, &pb.DeleteInstanceRequest{CloudId: cloudID, Labels: splitLabels(*labels)})
			r["code"] = status.Code(err).String()
			if err != nil {
				r["error"] = status.Convert(err).Message()
			}
			return nil
		})
		want := map[string]string{"delete": "OK", "delete-again": "NotFound"}[step]
		if err != nil {
			fail(step, "%v", err)
		} else if r["code"] != want {
			fail(step, "DeleteInstance: %v %v, want %s", r["code"], r["error"], want)
		}
		checkKill(step, r)
		emit(r)
	}

	emit(result{"step": "result", "ok": len(failures) == 0, "failures": failures})
	if len(failures) > 0 {
		os.Exit(1)
	}
}

func splitLabels(s string) []string {
	var out []string
	for _, l := range strings.Split(s, ",") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// sniff prints what myshoes' checkBinary sees: http.DetectContentType over the file's bytes.
func sniff(files []string) int {
	rc := 0
	for _, f := range files {
		data, err := ioutil.ReadFile(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			rc = 1
			continue
		}
		emit(result{"file": f, "content_type": http.DetectContentType(data)})
	}
	return rc
}
