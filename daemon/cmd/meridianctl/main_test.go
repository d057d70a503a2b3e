package main

import (
	"bytes"
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/cni-plugin/ipam"
	"github.com/meridian-net/meridian/daemon/apiserver"
	"github.com/meridian-net/meridian/daemon/routes"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Fake sources behind a real API server: the test covers the gRPC client
// and the output formats, not the kernel or the speaker.
type kernel []routes.Route

func (k kernel) Current() ([]routes.Route, error) { return k, nil }

type rib struct {
	paths []bgp.Path
	peers []bgp.PeerState
}

func (r rib) Paths(context.Context) ([]bgp.Path, error)      { return r.paths, nil }
func (r rib) Peers(context.Context) ([]bgp.PeerState, error) { return r.peers, nil }

type store []ipam.Allocation

func (s store) List() ([]ipam.Allocation, error) { return s, nil }

func serve(t *testing.T) string {
	t.Helper()
	a, p := netip.MustParseAddr, netip.MustParsePrefix
	src := apiserver.Sources{
		Kernel: kernel{
			{Dst: p("10.244.0.0/24"), Blackhole: true},
			{Dst: p("10.244.1.0/24"), NextHops: []netip.Addr{a("198.18.0.12")}},
			{Dst: p("10.244.9.0/24"), NextHops: []netip.Addr{a("198.18.0.12"), a("198.18.0.13")}},
		},
		BGP: rib{
			paths: []bgp.Path{
				{Prefix: p("10.244.1.0/24"), NextHop: a("198.18.0.12"), PeerAddress: a("198.18.0.12"), LocalPref: 100, Best: true},
				{Prefix: p("10.244.2.0/24"), NextHop: a("198.18.0.13"), PeerAddress: a("198.18.0.13"), ASPath: []uint32{64513, 64514}, LocalPref: 100, Stale: true},
			},
			peers: []bgp.PeerState{
				{Peer: bgp.Peer{Name: "node-2", Address: a("198.18.0.12"), ASN: 64512}, State: "established", EndOfRIB: true},
				{Peer: bgp.Peer{Name: "node-3", Address: a("198.18.0.13"), ASN: 64512}, State: "active"},
			},
		},
		IPAM: store{
			{Addr: a("10.244.0.2"), Attachment: ipam.Attachment{ContainerID: "0123abcd", IfName: "eth0"}},
			{Addr: a("10.244.0.3")},
		},
	}
	path := filepath.Join(t.TempDir(), "meridian.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- apiserver.New(src, nil).Serve(ctx, path) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Lstat(path); err == nil {
			return path
		}
		if time.Now().After(deadline) {
			t.Fatal("API socket did not appear")
		}
	}
}

func TestGolden(t *testing.T) {
	socket := serve(t)
	ctx := context.Background()
	for name, run := range map[string]func(*bytes.Buffer) error{
		"routes.table":        func(b *bytes.Buffer) error { return listRoutes(ctx, b, socket, "", "", "table") },
		"routes.json":         func(b *bytes.Buffer) error { return listRoutes(ctx, b, socket, "", "", "json") },
		"routes-filter.table": func(b *bytes.Buffer) error { return listRoutes(ctx, b, socket, "10.244.1.0/24", "", "table") },
		"routes-rib.table":    func(b *bytes.Buffer) error { return listRoutes(ctx, b, socket, "", "rib", "table") },
		"peers.table":         func(b *bytes.Buffer) error { return listPeers(ctx, b, socket, "table") },
		"peers.json":          func(b *bytes.Buffer) error { return listPeers(ctx, b, socket, "json") },
		"ipam.table":          func(b *bytes.Buffer) error { return listIPAM(ctx, b, socket, "table") },
		"ipam.json":           func(b *bytes.Buffer) error { return listIPAM(ctx, b, socket, "json") },
	} {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			if err := run(&b); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if b.String() != string(want) {
				t.Errorf("output differs from %s (-update rewrites it):\n got:\n%s\nwant:\n%s", golden, b.String(), want)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	socket := serve(t)
	ctx := context.Background()
	var b bytes.Buffer
	if err := listRoutes(ctx, &b, socket, "10.244.1.1/24", "", "table"); err == nil || !strings.Contains(err.Error(), "did you mean 10.244.1.0/24") {
		t.Errorf("bad filter: %v", err)
	}
	if err := listRoutes(ctx, &b, socket, "", "bogus", "table"); err == nil || !strings.Contains(err.Error(), "--source") {
		t.Errorf("bad source: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "none.sock")
	if err := listPeers(ctx, &b, missing, "table"); err == nil || !strings.Contains(err.Error(), "--api-socket") {
		t.Errorf("missing socket: %v", err)
	}
	if b.Len() != 0 {
		t.Errorf("errors wrote output: %q", b.String())
	}
}
