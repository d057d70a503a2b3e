package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/encap"
	"github.com/meridian-net/meridian/daemon/netnstest"
	"github.com/meridian-net/meridian/daemon/routes"
)

// Kernel tests: two throw-away "node" namespaces joined by a veth, each
// with a pod CIDR, programmed by the real appliers; traffic between the
// nodes' tunnel addresses must cross the tunnel. They need root, veth and,
// for VXLAN, the vxlan module; the IPIP test skips when the kernel has no
// ipip (integration/vm runs it in a Debian kernel that has; there
// MERIDIAN_REQUIRE_IPIP=1 turns the skip into a failure). Nothing here
// needs a binary outside the test: it runs as a static `go test -c` build.

type node struct {
	name    string
	ns      ns.NetNS
	h       *netlink.Handle
	ip      netip.Addr
	podCIDR netip.Prefix
	routes  *routes.Applier
	tunnels *Applier
}

func newNode(t *testing.T, name, ip, podCIDR string) *node {
	t.Helper()
	n, _, h := netnstest.New(t)
	log := netnstest.Logger(t).With("node", name)
	return &node{name: name, ns: n, h: h, ip: netip.MustParseAddr(ip), podCIDR: netip.MustParsePrefix(podCIDR),
		routes: routes.NewApplier(h, log), tunnels: NewApplier(h, log)}
}

// newPair builds nodes a (198.18.0.11, 10.244.1.0/24) and b (198.18.0.12,
// 10.244.2.0/24) on one veth.
func newPair(t *testing.T) (a, b *node) {
	t.Helper()
	netnstest.RequireRoot(t)
	a = newNode(t, "a", "198.18.0.11", "10.244.1.0/24")
	b = newNode(t, "b", "198.18.0.12", "10.244.2.0/24")
	bNS, err := netns.GetFromPath(b.ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer bNS.Close()
	if err := a.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mtun-a"}, PeerName: "mtun-b", PeerNamespace: netlink.NsFd(int(bNS))}); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	for _, n := range []*node{a, b} {
		l, err := n.h.LinkByName("mtun-" + n.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: n.ip.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		if err := n.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

// program runs the whole decision and both appliers on n for a peer node,
// as the routing controller does, and returns the routes it installed.
func (n *node) program(t *testing.T, mode encap.Mode, typ encap.Type, peer *node) []routes.Route {
	t.Helper()
	connected, err := Connected(n.h)
	if err != nil {
		t.Fatal(err)
	}
	hostMTU, err := LinkMTU(n.h, n.ip)
	if err != nil {
		t.Fatal(err)
	}
	var paths []bgp.Path
	owners := map[netip.Prefix]netip.Addr{n.podCIDR: n.ip}
	if peer != nil {
		paths = append(paths, bgp.Path{Prefix: peer.podCIDR, NextHop: peer.ip, PeerAddress: peer.ip, LocalPref: 100, Best: true})
		owners[peer.podCIDR] = peer.ip
	}
	rs, skipped := routes.Desired(paths, routes.Local{
		PodCIDRs: []netip.Prefix{n.podCIDR}, NodeIP: n.ip, AllowedPrefixes: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		Encap: routes.Encap{Mode: mode, Type: typ, Connected: connected, PodCIDROwners: owners},
	})
	if len(skipped) > 0 {
		t.Fatalf("%s: skipped %v", n.name, skipped)
	}
	if err := n.tunnels.Apply(Desired(mode, typ, n.ip, []netip.Prefix{n.podCIDR}, hostMTU, rs)); err != nil {
		t.Fatalf("%s: tunnel Apply: %v", n.name, err)
	}
	if _, err := n.routes.Apply(rs, true); err != nil {
		t.Fatalf("%s: routes Apply: %v", n.name, err)
	}
	return rs
}

// echo serves UDP on b's tunnel address and sends one datagram to it from
// a; the reply must come back.
func echo(t *testing.T, a, b *node) {
	t.Helper()
	bAddr, _ := encap.TunnelAddress(b.podCIDR)
	var srv net.PacketConn
	if err := b.ns.Do(func(ns.NetNS) error {
		var err error
		srv, err = net.ListenPacket("udp4", netip.AddrPortFrom(bAddr, 7777).String())
		return err
	}); err != nil {
		t.Fatalf("listen on %s in b: %v", bAddr, err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 2000)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteTo(buf[:n], from)
		}
	}()
	err := a.ns.Do(func(ns.NetNS) error {
		c, err := net.Dial("udp4", netip.AddrPortFrom(bAddr, 7777).String())
		if err != nil {
			return err
		}
		defer c.Close()
		// ARP is not involved (permanent entries or IPIP), but retry a
		// few times so a lost first datagram is not a failure.
		buf := make([]byte, 64)
		for range 5 {
			if _, err := c.Write([]byte("meridian")); err != nil {
				return err
			}
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(buf)
			if err == nil && string(buf[:n]) == "meridian" {
				if local := c.LocalAddr().(*net.UDPAddr).IP; !local.Equal(mustTunnelAddr(a).AsSlice()) {
					return errors.New("source address " + local.String() + " is not a's tunnel address")
				}
				return nil
			}
		}
		return errors.New("no echo from b through the tunnel")
	})
	if err != nil {
		t.Fatalf("a -> b: %v", err)
	}
}

func mustTunnelAddr(n *node) netip.Addr {
	a, _ := encap.TunnelAddress(n.podCIDR)
	return a
}

func linkStats(t *testing.T, n *node, dev string) (tx, rx uint64) {
	t.Helper()
	l, err := n.h.LinkByName(dev)
	if err != nil {
		t.Fatalf("%s: find %s: %v", n.name, dev, err)
	}
	s := l.Attrs().Statistics
	if s == nil {
		t.Fatalf("%s: %s has no statistics", n.name, dev)
	}
	return s.TxPackets, s.RxPackets
}

func TestVXLANCarriesTrafficBetweenNodes(t *testing.T) {
	a, b := newPair(t)
	for _, n := range []*node{a, b} {
		if err := n.tunnels.Apply(Config{Type: encap.TypeVXLAN, NodeIP: n.ip, MTU: 1450}); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				t.Skipf("kernel has no vxlan: %v", err)
			}
			t.Fatalf("%s: create the vxlan device: %v", n.name, err)
		}
	}
	rsA := a.program(t, encap.ModeAlways, encap.TypeVXLAN, b)
	b.program(t, encap.ModeAlways, encap.TypeVXLAN, a)
	if want := "10.244.2.0/24 via 10.244.2.0 dev vxlan.meridian onlink proto 201"; len(rsA) != 2 || rsA[1].String() != want {
		t.Fatalf("a's routes %v, want blackhole and %q", rsA, want)
	}

	// The device: VNI, port, source, no learning, derived MAC, MTU, the
	// pod CIDR's network address.
	l, err := a.h.LinkByName(encap.VXLANDevice)
	if err != nil {
		t.Fatal(err)
	}
	v := l.(*netlink.Vxlan)
	if v.VxlanId != encap.VXLANVNI || v.Port != encap.VXLANPort || !v.SrcAddr.Equal(a.ip.AsSlice()) || v.Learning ||
		!bytes.Equal(v.HardwareAddr, encap.VTEPMAC(a.ip)) || v.MTU != 1450 || v.Flags&net.FlagUp == 0 {
		t.Errorf("vxlan device: vni %d port %d src %s learning %v mac %s mtu %d flags %v", v.VxlanId, v.Port, v.SrcAddr, v.Learning, v.HardwareAddr, v.MTU, v.Flags)
	}
	checkAddrs(t, a, encap.VXLANDevice, "10.244.1.0/32")
	checkNeigh(t, a, l.Attrs().Index, netlink.FAMILY_V4, "10.244.2.0 "+encap.VTEPMAC(b.ip).String())
	checkNeigh(t, a, l.Attrs().Index, unix.AF_BRIDGE, "198.18.0.12 "+encap.VTEPMAC(b.ip).String())

	txA0, rxA0 := linkStats(t, a, encap.VXLANDevice)
	txB0, rxB0 := linkStats(t, b, encap.VXLANDevice)
	echo(t, a, b)
	txA, rxA := linkStats(t, a, encap.VXLANDevice)
	txB, rxB := linkStats(t, b, encap.VXLANDevice)
	if txA <= txA0 || rxA <= rxA0 || txB <= txB0 || rxB <= rxB0 {
		t.Errorf("vxlan counters did not move: a tx %d->%d rx %d->%d, b tx %d->%d rx %d->%d", txA0, txA, rxA0, rxA, txB0, txB, rxB0, rxB)
	}

	// Idempotent: the same state again changes nothing.
	before := l.Attrs().Index
	a.program(t, encap.ModeAlways, encap.TypeVXLAN, b)
	if l2, err := a.h.LinkByName(encap.VXLANDevice); err != nil || l2.Attrs().Index != before {
		t.Errorf("second Apply recreated the device (%v)", err)
	}

	if res, err := a.routes.Apply(rsA, true); err != nil || res.Changed() != 0 || res.Kept != 2 {
		t.Errorf("re-applying the VXLAN routes: %+v, %v; want 2 kept and no change", res, err)
	}

	// A stale entry on our device (a node that left) is pruned, the
	// wanted ones stay.
	stale := &netlink.Neigh{LinkIndex: before, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT,
		IP: net.ParseIP("198.18.0.99").To4(), HardwareAddr: encap.VTEPMAC(netip.MustParseAddr("198.18.0.99"))}
	if err := a.h.NeighAppend(stale); err != nil {
		t.Fatal(err)
	}
	a.program(t, encap.ModeAlways, encap.TypeVXLAN, b)
	checkNeigh(t, a, before, unix.AF_BRIDGE, "198.18.0.12 "+encap.VTEPMAC(b.ip).String())

	// The peer leaves: its entries go, the device stays.
	a.program(t, encap.ModeAlways, encap.TypeVXLAN, nil)
	checkNeigh(t, a, before, netlink.FAMILY_V4)
	checkNeigh(t, a, before, unix.AF_BRIDGE)

	// Encapsulation off: the device goes, routes are native again.
	rs := a.program(t, encap.ModeNever, encap.TypeVXLAN, b)
	if _, err := a.h.LinkByName(encap.VXLANDevice); err == nil {
		t.Error("vxlan device still there with mode Never")
	}
	if want := "10.244.2.0/24 via 198.18.0.12 proto 201"; rs[1].String() != want {
		t.Errorf("route with mode Never: %s, want %s", rs[1], want)
	}
}

func TestIPIPCarriesTrafficBetweenNodes(t *testing.T) {
	a, b := newPair(t)
	requireIPIP(t, a.h)
	requireIPIP(t, b.h)
	rsA := a.program(t, encap.ModeCrossSubnet, encap.TypeIPIP, b)
	b.program(t, encap.ModeCrossSubnet, encap.TypeIPIP, a)
	// Same subnet: cross-subnet routes natively.
	if want := "10.244.2.0/24 via 198.18.0.12 proto 201"; rsA[1].String() != want {
		t.Fatalf("cross-subnet on one subnet: %s, want %s", rsA[1], want)
	}
	rsA = a.program(t, encap.ModeAlways, encap.TypeIPIP, b)
	b.program(t, encap.ModeAlways, encap.TypeIPIP, a)
	if want := "10.244.2.0/24 via 198.18.0.12 dev tunl0 onlink proto 201"; rsA[1].String() != want {
		t.Fatalf("always: %s, want %s", rsA[1], want)
	}
	cur, err := a.routes.Current()
	if err != nil {
		t.Fatal(err)
	}
	if len(cur) != 2 || !cur[1].Equal(rsA[1]) || cur[1].Endpoint != b.ip {
		t.Errorf("routes read back %v, want %v with endpoint %s", cur, rsA, b.ip)
	}
	l, err := a.h.LinkByName(encap.IPIPDevice)
	if err != nil {
		t.Fatal(err)
	}
	if l.Attrs().MTU != 1480 || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tunl0 mtu %d flags %v, want 1480 and up", l.Attrs().MTU, l.Attrs().Flags)
	}
	checkAddrs(t, a, encap.IPIPDevice, "10.244.1.0/32")

	txA0, _ := linkStats(t, a, encap.IPIPDevice)
	_, rxB0 := linkStats(t, b, encap.IPIPDevice)
	echo(t, a, b)
	txA, _ := linkStats(t, a, encap.IPIPDevice)
	_, rxB := linkStats(t, b, encap.IPIPDevice)
	if txA <= txA0 || rxB <= rxB0 {
		t.Errorf("tunl0 counters did not move: a tx %d->%d, b rx %d->%d", txA0, txA, rxB0, rxB)
	}

	// Off: tunl0 keeps existing (the module's) but loses our address and
	// goes down; the route is native again.
	rs := a.program(t, encap.ModeNever, encap.TypeIPIP, b)
	if want := "10.244.2.0/24 via 198.18.0.12 proto 201"; rs[1].String() != want {
		t.Errorf("never: %s, want %s", rs[1], want)
	}
	checkAddrs(t, a, encap.IPIPDevice)
	if l, err := a.h.LinkByName(encap.IPIPDevice); err != nil || l.Attrs().Flags&net.FlagUp != 0 {
		t.Errorf("tunl0 after encapsulation off: %v, up %v", err, l != nil && l.Attrs().Flags&net.FlagUp != 0)
	}
}

func checkAddrs(t *testing.T, n *node, dev string, want ...string) {
	t.Helper()
	l, err := n.h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := n.h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.IPNet.String())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s: addresses of %s %v, want %v", n.name, dev, got, want)
	}
}

// checkNeigh compares the permanent entries of a link ("ip mac") with want.
func checkNeigh(t *testing.T, n *node, link, family int, want ...string) {
	t.Helper()
	ns, err := n.h.NeighList(link, family)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ns {
		if e.LinkIndex != link || e.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		got = append(got, e.IP.String()+" "+e.HardwareAddr.String())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s: entries (family %d) %v, want %v", n.name, family, got, want)
	}
}

// The racks case without BGP on the routers: a and b on two subnets behind
// a router that knows only the node subnets. Cross-subnet sends b's pod
// CIDR through the tunnel (the router would drop it natively), and the
// tunnel's outer packets follow the node's default route.
func TestVXLANCrossSubnetThroughARouter(t *testing.T) {
	crossSubnetThroughARouter(t, encap.TypeVXLAN)
}

func TestIPIPCrossSubnetThroughARouter(t *testing.T) {
	crossSubnetThroughARouter(t, encap.TypeIPIP)
}

// requireIPIP skips (fails under MERIDIAN_REQUIRE_IPIP=1) unless h's
// namespace has or can create tunl0.
func requireIPIP(t *testing.T, h *netlink.Handle) {
	t.Helper()
	if _, err := h.LinkByName(encap.IPIPDevice); err == nil {
		return
	}
	err := h.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: encap.IPIPDevice}})
	if err == nil || errors.Is(err, unix.EEXIST) {
		return
	}
	msg := fmt.Sprintf("this kernel has no ipip (creating %s: %v); integration/vm runs this test in a Debian kernel", encap.IPIPDevice, err)
	if os.Getenv("MERIDIAN_REQUIRE_IPIP") == "1" {
		// In the VM a skip would hide a broken setup.
		t.Fatal(msg + " (MERIDIAN_REQUIRE_IPIP=1)")
	}
	t.Skip(msg)
}

func crossSubnetThroughARouter(t *testing.T, typ encap.Type) {
	netnstest.RequireRoot(t)
	a := newNode(t, "a", "198.18.1.11", "10.244.1.0/24")
	b := newNode(t, "b", "198.18.2.12", "10.244.2.0/24")
	r := newNode(t, "r", "198.18.1.1", "10.244.99.0/24")
	link := func(n *node, name string, gw string) {
		t.Helper()
		rNS, err := netns.GetFromPath(r.ns.Path())
		if err != nil {
			t.Fatal(err)
		}
		defer rNS.Close()
		if err := n.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "r", PeerNamespace: netlink.NsFd(int(rNS))}); err != nil {
			t.Fatalf("add veth: %v", err)
		}
		for _, side := range []struct {
			h    *netlink.Handle
			name string
			addr string
		}{{n.h, name, n.ip.String() + "/24"}, {r.h, name + "r", gw + "/24"}} {
			l, err := side.h.LinkByName(side.name)
			if err != nil {
				t.Fatal(err)
			}
			ad, err := netlink.ParseAddr(side.addr)
			if err != nil {
				t.Fatal(err)
			}
			if err := side.h.AddrAdd(l, ad); err != nil {
				t.Fatal(err)
			}
			if err := side.h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
		if err := n.h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Gw: net.ParseIP(gw).To4()}); err != nil {
			t.Fatalf("default route: %v", err)
		}
	}
	link(a, "mtun-a", "198.18.1.1")
	link(b, "mtun-b", "198.18.2.1")
	if err := routes.EnableIPv4Forwarding(r.ns.Path()); err != nil {
		t.Fatal(err)
	}

	dev := encap.VXLANDevice
	if typ == encap.TypeIPIP {
		dev = encap.IPIPDevice
		requireIPIP(t, a.h)
		requireIPIP(t, b.h)
	}
	rsA := a.program(t, encap.ModeCrossSubnet, typ, b)
	b.program(t, encap.ModeCrossSubnet, typ, a)
	if len(rsA) != 2 || rsA[1].Dev != dev || rsA[1].Reason != encap.ReasonNextHopNotConnected {
		t.Fatalf("a's routes %+v, want b's pod CIDR through %s for nextHopNotConnected", rsA, dev)
	}
	txA0, _ := linkStats(t, a, dev)
	_, rxB0 := linkStats(t, b, dev)
	echo(t, a, b)
	txA, _ := linkStats(t, a, dev)
	_, rxB := linkStats(t, b, dev)
	if txA <= txA0 || rxB <= rxB0 {
		t.Errorf("%s counters did not move: a tx %d->%d, b rx %d->%d", dev, txA0, txA, rxB0, rxB)
	}
	// Natively there is no way: the kernel refuses b as a gateway beyond
	// the connected subnet (and the router has no pod routes anyway).
	native := []routes.Route{rsA[0], {Dst: rsA[1].Dst, NextHops: []netip.Addr{b.ip}}}
	if _, err := a.routes.Apply(native, true); !errors.Is(err, unix.ENETUNREACH) {
		t.Errorf("native route to b's pods across the router: %v, want ENETUNREACH", err)
	}
}
