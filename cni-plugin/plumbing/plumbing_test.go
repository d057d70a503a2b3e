package plumbing

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestHostVethName(t *testing.T) {
	a := HostVethName("mer", "c0ffee", "eth0")
	if len(a) != 3+11 || !strings.HasPrefix(a, "mer") {
		t.Fatalf("name %q", a)
	}
	// sha1("c0ffee/eth0") starts with these 11 hex characters.
	if want := "mer637712c8083"; a != want {
		t.Fatalf("HostVethName = %q, want %q", a, want)
	}
	if HostVethName("mer", "c0ffee", "net1") == a || HostVethName("mer", "c0ffef", "eth0") == a {
		t.Fatal("different attachments share a name")
	}
	if n := HostVethName("abcd", "x", "eth0"); len(n) != 15 {
		t.Fatalf("%q is %d characters, want IFNAMSIZ-1 = 15", n, len(n))
	}
}

func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		_ = testutils.UnmountNS(n)
	})
	return n
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
}

func handle(t *testing.T, n ns.NetNS) *netlink.Handle {
	t.Helper()
	h, err := handleAt(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func spec(id string, ip string) Spec {
	return Spec{HostVeth: HostVethName("mer", id, "eth0"), IfName: "eth0", PodIP: netip.MustParseAddr(ip), MTU: 1400}
}

func TestSetupCheckTeardown(t *testing.T) {
	requireRoot(t)
	node, pod := newNS(t), newNS(t)
	s := spec(t.Name(), "10.244.1.5")
	w, err := Setup(node, pod, s)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	nodeH, podH := handle(t, node), handle(t, pod)

	// Pod side.
	pl, err := podH.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if pl.Attrs().MTU != 1400 || pl.Attrs().Flags&net.FlagUp == 0 || pl.Attrs().HardwareAddr.String() != w.Pod.MAC.String() {
		t.Errorf("pod link %+v", pl.Attrs())
	}
	addrs, _ := podH.AddrList(pl, unix.AF_INET)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.244.1.5/32" {
		t.Errorf("pod addresses %v", addrs)
	}
	routes, _ := podH.RouteList(pl, unix.AF_INET)
	var gotDefault bool
	for _, r := range routes {
		if r.Dst.String() == "0.0.0.0/0" && r.Gw.String() == "169.254.1.1" && r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			gotDefault = true
		}
	}
	if !gotDefault {
		t.Errorf("no default via 169.254.1.1 onlink in %v", routes)
	}
	neighs, _ := podH.NeighList(pl.Attrs().Index, unix.AF_INET)
	if len(neighs) != 1 || neighs[0].IP.String() != "169.254.1.1" || neighs[0].State != netlink.NUD_PERMANENT ||
		neighs[0].HardwareAddr.String() != w.Host.MAC.String() {
		t.Errorf("pod neighbours %+v, want 169.254.1.1 -> %s permanent", neighs, w.Host.MAC)
	}

	// Host side: up, no IPv4 address, the /32 route with our protocol.
	hl, err := nodeH.LinkByName(s.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	if hl.Attrs().MTU != 1400 || hl.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("host link %+v", hl.Attrs())
	}
	if a, _ := nodeH.AddrList(hl, unix.AF_INET); len(a) != 0 {
		t.Errorf("host veth has IPv4 addresses %v", a)
	}
	hr, _ := nodeH.RouteList(hl, unix.AF_INET)
	if len(hr) != 1 || hr[0].Dst.String() != "10.244.1.5/32" || hr[0].Protocol != 202 || hr[0].Scope != netlink.SCOPE_LINK {
		t.Errorf("host routes %+v, want 10.244.1.5/32 scope link proto 202", hr)
	}
	readSysctl := func(path string) string {
		var v []byte
		if err := node.Do(func(ns.NetNS) error { var err error; v, err = os.ReadFile(path); return err }); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(v))
	}
	if v := readSysctl("/proc/sys/net/ipv4/ip_forward"); v != "1" {
		t.Errorf("node ip_forward %s", v)
	}
	if v := readSysctl("/proc/sys/net/ipv4/conf/" + s.HostVeth + "/rp_filter"); v != "1" {
		t.Errorf("host veth rp_filter %s", v)
	}

	if err := Check(node, pod, s, w); err != nil {
		t.Fatalf("Check after Setup: %v", err)
	}
	if err := Check(node, pod, Spec{HostVeth: s.HostVeth, IfName: "eth0", PodIP: netip.MustParseAddr("10.244.1.6"), MTU: 1400}, w); err == nil ||
		!strings.Contains(err.Error(), "10.244.1.6") {
		t.Fatalf("Check with the wrong IP: %v", err)
	}
	// Break the pod's gateway entry: Check must notice.
	if err := podH.NeighDel(permanentNeigh(pl.Attrs().Index, Gateway, w.Host.MAC)); err != nil {
		t.Fatal(err)
	}
	if err := Check(node, pod, s, w); err == nil || !strings.Contains(err.Error(), "gateway neighbour") {
		t.Fatalf("Check without gateway neighbour: %v", err)
	}

	// Teardown removes both ends and the route; a second one is fine, and
	// so is one whose netns is gone.
	if err := Teardown(node, pod.Path(), s.HostVeth, "eth0"); err != nil {
		t.Fatal(err)
	}
	if _, err := nodeH.LinkByName(s.HostVeth); err == nil {
		t.Error("host veth survived Teardown")
	}
	if _, err := podH.LinkByName("eth0"); err == nil {
		t.Error("pod veth survived Teardown")
	}
	if r, _ := nodeH.RouteListFiltered(unix.AF_INET, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL); len(r) != 0 {
		t.Errorf("routes left: %v", r)
	}
	if err := Teardown(node, pod.Path(), s.HostVeth, "eth0"); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
	if err := Teardown(node, "/var/run/netns/meridian-does-not-exist", s.HostVeth, "eth0"); err != nil {
		t.Fatalf("Teardown with missing netns: %v", err)
	}
	if err := Teardown(node, "", s.HostVeth, "eth0"); err != nil {
		t.Fatalf("Teardown without netns: %v", err)
	}
}

func TestSetupReplacesStaleHostVeth(t *testing.T) {
	requireRoot(t)
	node, pod1, pod2 := newNS(t), newNS(t), newNS(t)
	s := spec(t.Name(), "10.244.1.9")
	if _, err := Setup(node, pod1, s); err != nil {
		t.Fatal(err)
	}
	// The same attachment set up again (the first sandbox died without a
	// DEL): the old pair goes, the new one works.
	w, err := Setup(node, pod2, s)
	if err != nil {
		t.Fatalf("second Setup: %v", err)
	}
	if _, err := handle(t, pod1).LinkByName("eth0"); err == nil {
		t.Error("old pod end survived")
	}
	if err := Check(node, pod2, s, w); err != nil {
		t.Fatal(err)
	}
}

func TestSetupFailureCleansUp(t *testing.T) {
	requireRoot(t)
	node, pod := newNS(t), newNS(t)
	podH := handle(t, pod)
	// Something else already owns eth0 in the pod.
	if err := podH.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "other0"}); err != nil {
		t.Fatal(err)
	}
	s := spec(t.Name(), "10.244.1.10")
	if _, err := Setup(node, pod, s); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("Setup over an existing eth0: %v", err)
	}
	if _, err := handle(t, node).LinkByName(s.HostVeth); !errors.As(err, new(netlink.LinkNotFoundError)) {
		t.Fatalf("host veth left behind: %v", err)
	}
	// A bad MTU fails in the kernel after nothing was created.
	s2 := spec(t.Name()+"2", "10.244.1.11")
	s2.IfName, s2.MTU = "eth1", 70000
	if _, err := Setup(node, pod, s2); err == nil {
		t.Fatal("Setup with MTU 70000 succeeded")
	}
	links, _ := handle(t, node).LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "mer") {
			t.Errorf("link %s left behind", l.Attrs().Name)
		}
	}
}
