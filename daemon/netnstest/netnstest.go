// Package netnstest gives kernel tests throw-away network namespaces: each
// one made with the CNI plugins' testutils, its loopback up, a netlink
// handle bound to it, and everything removed when the test ends, also when
// it fails. The routes, tunnel and IPIP-in-a-VM tests share it.
package netnstest

import (
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test needs root")
	}
}

// New makes a network namespace with lo up and returns it, a handle on it
// (for netns-bound netlink sockets and NsFd) and a netlink handle in it.
func New(t testing.TB) (ns.NetNS, netns.NsHandle, *netlink.Handle) {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := testutils.UnmountNS(n); err != nil {
			t.Errorf("unmount netns: %v", err)
		}
	})
	nh, err := netns.GetFromPath(n.Path())
	if err != nil {
		t.Fatalf("open netns: %v", err)
	}
	t.Cleanup(func() { nh.Close() })
	h, err := netlink.NewHandleAt(nh)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo: %v", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatalf("set lo up: %v", err)
	}
	return n, nh, h
}

// Logger logs through t at debug level, so a failing kernel test shows
// what the applier under test did.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
