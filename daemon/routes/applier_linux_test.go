package routes

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/netnstest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Kernel tests: each builds a throw-away "node" namespace joined by a veth
// to a "peer" namespace, so 198.18.0.0/24 is a connected subnet with two
// neighbours (198.18.0.12 and .13) that can serve as next hops.

const (
	nodeLink = "mrd-node"
	peerLink = "mrd-peer"
)

var (
	peerAddrs = []string{"198.18.0.12/24", "198.18.0.13/24"}
	// unconnected is a next hop no connected route covers.
	unconnected = netip.MustParseAddr("198.19.5.5")
)

type lab struct {
	node, peer   ns.NetNS
	nodeNS       netns.NsHandle
	h, peerH     *netlink.Handle
	nodeLinkIdx  int
	applier      *Applier
	defaultPaths []bgp.Path
}

func newLab(t *testing.T) *lab {
	t.Helper()
	netnstest.RequireRoot(t)
	l := &lab{}
	l.node, l.nodeNS, l.h = netnstest.New(t)
	var peerNS netns.NsHandle
	l.peer, peerNS, l.peerH = netnstest.New(t)

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: nodeLink},
		PeerName:      peerLink,
		PeerNamespace: netlink.NsFd(int(peerNS)),
	}
	if err := l.h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	link, err := l.h.LinkByName(nodeLink)
	if err != nil {
		t.Fatalf("find %s: %v", nodeLink, err)
	}
	l.nodeLinkIdx = link.Attrs().Index
	addAddr(t, l.h, link, "198.18.0.11/24")
	if err := l.h.LinkSetUp(link); err != nil {
		t.Fatalf("set %s up: %v", nodeLink, err)
	}
	plink, err := l.peerH.LinkByName(peerLink)
	if err != nil {
		t.Fatalf("find %s: %v", peerLink, err)
	}
	for _, a := range peerAddrs {
		addAddr(t, l.peerH, plink, a)
	}
	if err := l.peerH.LinkSetUp(plink); err != nil {
		t.Fatalf("set %s up: %v", peerLink, err)
	}
	l.applier = NewApplier(l.h, netnstest.Logger(t))
	return l
}

func addAddr(t *testing.T, h *netlink.Handle, link netlink.Link, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(link, a); err != nil {
		t.Fatalf("add %s: %v", cidr, err)
	}
}

func ipnet(p string) *net.IPNet {
	_, n, err := net.ParseCIDR(p)
	if err != nil {
		panic(err)
	}
	return n
}

// kernelRoutes lists the IPv4 main table of h, optionally only one protocol
// (proto < 0: all).
func kernelRoutes(t *testing.T, h *netlink.Handle, proto int) []netlink.Route {
	t.Helper()
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: netlink.RouteProtocol(proto)}
	mask := netlink.RT_FILTER_TABLE
	if proto >= 0 {
		mask |= netlink.RT_FILTER_PROTOCOL
	}
	for range dumpAttempts {
		rs, err := h.RouteListFiltered(netlink.FAMILY_V4, filter, mask)
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			continue
		}
		if err != nil {
			t.Fatalf("list routes: %v", err)
		}
		return rs
	}
	t.Fatal("route dump kept being interrupted")
	return nil
}

// summary renders kernel routes in a comparable form, independent of dump
// order.
func summary(rs []netlink.Route) []string {
	var out []string
	for _, r := range rs {
		s := fmt.Sprintf("%v proto %d type %d scope %d gw %v prio %d", r.Dst, r.Protocol, r.Type, r.Scope, r.Gw, r.Priority)
		for _, m := range r.MultiPath {
			s += fmt.Sprintf(" nexthop %v dev %d weight %d", m.Gw, m.LinkIndex, m.Hops+1)
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func findRoute(rs []netlink.Route, dst string) (netlink.Route, bool) {
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == dst {
			return r, true
		}
	}
	return netlink.Route{}, false
}

func mustApply(t *testing.T, a *Applier, desired []Route, prune bool, want Result) {
	t.Helper()
	res, err := a.Apply(desired, prune)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if res != want {
		t.Fatalf("Apply result = %+v, want %+v", res, want)
	}
}

// watchRoutes records IPv4 route events in the namespace until the returned
// function is called; that function adds a marker route as a barrier (its
// event is the last of everything before it) and returns the events seen
// before the marker.
func watchRoutes(t *testing.T, l *lab) func() []netlink.RouteUpdate {
	t.Helper()
	ch := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	if err := netlink.RouteSubscribeAt(l.nodeNS, ch, done); err != nil {
		t.Fatalf("subscribe to routes: %v", err)
	}
	stop := func() {
		select {
		case <-done:
		default:
			close(done)
		}
	}
	t.Cleanup(stop)
	return func() []netlink.RouteUpdate {
		t.Helper()
		defer stop()
		marker := &netlink.Route{Dst: ipnet("198.19.255.0/24"), Gw: net.ParseIP("198.18.0.12"), Protocol: unix.RTPROT_STATIC}
		if err := l.h.RouteAdd(marker); err != nil {
			t.Fatalf("add marker route: %v", err)
		}
		var seen []netlink.RouteUpdate
		timeout := time.After(10 * time.Second)
		for {
			select {
			case u, ok := <-ch:
				if !ok {
					t.Fatal("route subscription closed before the marker arrived")
				}
				if u.Family != netlink.FAMILY_V4 {
					continue // IPv6 link-local routes come and go on their own
				}
				if u.Dst != nil && u.Dst.String() == "198.19.255.0/24" {
					if err := l.h.RouteDel(marker); err != nil {
						t.Fatalf("remove marker route: %v", err)
					}
					return seen
				}
				seen = append(seen, u)
			case <-timeout:
				t.Fatal("marker route event never arrived")
			}
		}
	}
}

func testDesired(t *testing.T) []Route {
	t.Helper()
	paths := []bgp.Path{
		best("10.244.2.0/24", peerB),
		best("10.244.3.0/24", peerB),
		best("10.244.3.0/24", peerC),
	}
	routes, skipped := Desired(paths, defaultLocal())
	if len(skipped) != 0 || len(routes) != 3 {
		t.Fatalf("Desired = %v, %v; want 3 routes and no skips", routes, skipped)
	}
	return routes
}

func TestApplyInstallsAndAdopts(t *testing.T) {
	l := newLab(t)
	desired := testDesired(t)

	mustApply(t, l.applier, desired, true, Result{Added: 3})

	rs := kernelRoutes(t, l.h, Protocol)
	if len(rs) != 3 {
		t.Fatalf("kernel has %d proto %d routes, want 3:\n%s", len(rs), Protocol, strings.Join(summary(rs), "\n"))
	}
	for _, r := range rs {
		if r.Protocol != Protocol || r.Table != unix.RT_TABLE_MAIN || r.Scope != netlink.SCOPE_UNIVERSE {
			t.Errorf("route %v: protocol %d table %d scope %d, want %d main universe", r.Dst, r.Protocol, r.Table, r.Scope, Protocol)
		}
	}
	single, ok := findRoute(rs, "10.244.2.0/24")
	if !ok || single.Type != unix.RTN_UNICAST || !single.Gw.Equal(net.ParseIP("198.18.0.12")) ||
		single.LinkIndex != l.nodeLinkIdx || len(single.MultiPath) != 0 {
		t.Errorf("10.244.2.0/24 = %+v, want unicast via 198.18.0.12 dev %s", single, nodeLink)
	}
	multi, ok := findRoute(rs, "10.244.3.0/24")
	if !ok || multi.Gw != nil || len(multi.MultiPath) != 2 {
		t.Fatalf("10.244.3.0/24 = %+v, want one multipath route", multi)
	}
	var gws []string
	for _, m := range multi.MultiPath {
		gws = append(gws, m.Gw.String())
		if m.LinkIndex != l.nodeLinkIdx || m.Hops != 0 {
			t.Errorf("next hop %+v: want dev %s weight 1", m, nodeLink)
		}
	}
	slices.Sort(gws)
	if !slices.Equal(gws, []string{"198.18.0.12", "198.18.0.13"}) {
		t.Errorf("multipath next hops = %v", gws)
	}
	bh, ok := findRoute(rs, "10.244.1.0/24")
	if !ok || bh.Type != unix.RTN_BLACKHOLE || bh.Gw != nil {
		t.Errorf("10.244.1.0/24 = %+v, want a blackhole", bh)
	}

	cur, err := l.applier.Current()
	if err != nil {
		t.Fatalf("Current: %v", err)
	}
	if !reflect.DeepEqual(cur, desired) {
		t.Fatalf("Current = %v, want %v", cur, desired)
	}

	// Re-applying, and a fresh Applier adopting the routes after a restart
	// (with or without pruning), must not touch the kernel at all: no route
	// deleted and re-added, none changed. (An identical RouteReplace would
	// not show up here, the kernel drops it without a notification; it does
	// not disturb traffic either.)
	finish := watchRoutes(t, l)
	mustApply(t, l.applier, desired, true, Result{Kept: 3})
	h2, err := netlink.NewHandleAt(l.nodeNS)
	if err != nil {
		t.Fatalf("second handle: %v", err)
	}
	t.Cleanup(h2.Close)
	adopter := NewApplier(h2, nil)
	mustApply(t, adopter, desired, false, Result{Kept: 3})
	mustApply(t, adopter, desired, true, Result{Kept: 3})
	if events := finish(); len(events) != 0 {
		t.Errorf("idempotent Apply changed the kernel:\n%s", eventSummary(events))
	}
	if got := summary(kernelRoutes(t, l.h, Protocol)); !slices.Equal(got, summary(rs)) {
		t.Errorf("routes changed:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(summary(rs), "\n"))
	}

	// Shutdown removes everything Meridian owns and nothing else.
	others := summary(kernelRoutes(t, l.h, -1))
	others = slices.DeleteFunc(others, func(s string) bool { return strings.Contains(s, fmt.Sprintf("proto %d ", Protocol)) })
	mustApply(t, l.applier, nil, true, Result{Removed: 3})
	if rs := kernelRoutes(t, l.h, Protocol); len(rs) != 0 {
		t.Errorf("routes left after Apply(nil, true): %v", summary(rs))
	}
	if got := summary(kernelRoutes(t, l.h, -1)); !slices.Equal(got, others) {
		t.Errorf("other routes changed:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(others, "\n"))
	}
	mustApply(t, l.applier, nil, true, Result{})
}

func eventSummary(us []netlink.RouteUpdate) string {
	var out []string
	for _, u := range us {
		kind := "NEW"
		if u.Type == unix.RTM_DELROUTE {
			kind = "DEL"
		}
		out = append(out, kind+" "+summary([]netlink.Route{u.Route})[0])
	}
	return strings.Join(out, "\n")
}

func TestApplyNeverTouchesOtherProtocols(t *testing.T) {
	l := newLab(t)
	foreign := []*netlink.Route{
		// An operator's static route on a prefix Meridian also wants.
		{Dst: ipnet("10.244.9.0/24"), Gw: net.ParseIP("198.18.0.12"), Protocol: unix.RTPROT_STATIC},
		// A CNI pod route inside the node's own pod CIDR.
		{Dst: ipnet("10.244.1.5/32"), LinkIndex: l.nodeLinkIdx, Scope: netlink.SCOPE_LINK, Protocol: 202},
		// A route of some other daemon next to ours.
		{Dst: ipnet("10.244.8.0/24"), Gw: net.ParseIP("198.18.0.13"), Protocol: unix.RTPROT_BOOT},
		{Dst: ipnet("10.244.7.0/24"), Type: unix.RTN_BLACKHOLE, Protocol: 202},
	}
	for _, r := range foreign {
		if err := l.h.RouteAdd(r); err != nil {
			t.Fatalf("add foreign route %v: %v", r.Dst, err)
		}
	}
	before := summary(kernelRoutes(t, l.h, -1))

	desired := append(testDesired(t), Route{Dst: pfx("10.244.9.0/24"), NextHops: []netip.Addr{peerC}})
	res, err := l.applier.Apply(desired, true)
	if want := (Result{Added: 3, Failed: 1}); res != want {
		t.Errorf("Apply result = %+v, want %+v", res, want)
	}
	if !errors.Is(err, unix.EEXIST) || !strings.Contains(err.Error(), "install route 10.244.9.0/24 via 198.18.0.13") {
		t.Errorf("Apply error = %v, want EEXIST for 10.244.9.0/24", err)
	}
	static, ok := findRoute(kernelRoutes(t, l.h, unix.RTPROT_STATIC), "10.244.9.0/24")
	if !ok || !static.Gw.Equal(net.ParseIP("198.18.0.12")) {
		t.Errorf("static route was changed: %+v", static)
	}

	mustApply(t, l.applier, nil, true, Result{Removed: 3})
	if got := summary(kernelRoutes(t, l.h, -1)); !slices.Equal(got, before) {
		t.Errorf("routes after shutdown:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
}

func TestApplyPrunesOnlyWhenAsked(t *testing.T) {
	l := newLab(t)
	desired := testDesired(t)
	mustApply(t, l.applier, desired, true, Result{Added: 3})

	// A route of ours in another slot (metric 100): Meridian never writes
	// one, so it is only ever pruned.
	stray := &netlink.Route{Dst: ipnet("10.244.2.0/24"), Gw: net.ParseIP("198.18.0.13"), Priority: 100, Protocol: Protocol}
	if err := l.h.RouteAdd(stray); err != nil {
		t.Fatalf("add stray route: %v", err)
	}

	keep := desired[:2] // drops 10.244.3.0/24
	mustApply(t, l.applier, keep, false, Result{Kept: 2, Unpruned: 2})
	if got := summary(kernelRoutes(t, l.h, Protocol)); len(got) != 4 {
		t.Fatalf("prune=false removed routes; kernel has:\n%s", strings.Join(got, "\n"))
	}

	mustApply(t, l.applier, keep, true, Result{Kept: 2, Removed: 2})
	rs := kernelRoutes(t, l.h, Protocol)
	if len(rs) != 2 {
		t.Fatalf("after pruning the kernel has:\n%s", strings.Join(summary(rs), "\n"))
	}
	for _, r := range rs {
		if r.Priority != 0 || r.Dst.String() == "10.244.3.0/24" {
			t.Errorf("route %v (metric %d) survived pruning", r.Dst, r.Priority)
		}
	}
	cur, err := l.applier.Current()
	if err != nil {
		t.Fatalf("Current: %v", err)
	}
	if !reflect.DeepEqual(cur, keep) {
		t.Errorf("Current = %v, want %v", cur, keep)
	}
}

func TestApplyReplaces(t *testing.T) {
	l := newLab(t)
	dst := pfx("10.244.2.0/24")
	steps := []struct {
		name  string
		route Route
		check func(netlink.Route) bool
	}{
		{"via .12", Route{Dst: dst, NextHops: []netip.Addr{peerB}}, func(r netlink.Route) bool {
			return r.Gw.Equal(net.ParseIP("198.18.0.12"))
		}},
		{"via .13", Route{Dst: dst, NextHops: []netip.Addr{peerC}}, func(r netlink.Route) bool {
			return r.Gw.Equal(net.ParseIP("198.18.0.13")) && len(r.MultiPath) == 0
		}},
		{"multipath", Route{Dst: dst, NextHops: []netip.Addr{peerB, peerC}}, func(r netlink.Route) bool {
			return r.Gw == nil && len(r.MultiPath) == 2
		}},
		{"blackhole", Route{Dst: dst, Blackhole: true}, func(r netlink.Route) bool {
			return r.Type == unix.RTN_BLACKHOLE && r.Gw == nil && len(r.MultiPath) == 0
		}},
		{"back to unicast", Route{Dst: dst, NextHops: []netip.Addr{peerB}}, func(r netlink.Route) bool {
			return r.Type == unix.RTN_UNICAST && r.Gw.Equal(net.ParseIP("198.18.0.12"))
		}},
	}
	for i, s := range steps {
		want := Result{Replaced: 1}
		if i == 0 {
			want = Result{Added: 1}
		}
		mustApply(t, l.applier, []Route{s.route}, true, want)
		rs := kernelRoutes(t, l.h, Protocol)
		if len(rs) != 1 || !s.check(rs[0]) {
			t.Fatalf("%s: kernel has %v", s.name, summary(rs))
		}
		cur, err := l.applier.Current()
		if err != nil || !reflect.DeepEqual(cur, []Route{s.route}) {
			t.Fatalf("%s: Current = %v, %v", s.name, cur, err)
		}
	}

	// A route of ours in a form Meridian does not write (device route,
	// scope link) shows up bare and is rewritten.
	odd := &netlink.Route{Dst: ipnet("10.244.6.0/24"), LinkIndex: l.nodeLinkIdx, Scope: netlink.SCOPE_LINK, Protocol: Protocol}
	if err := l.h.RouteAdd(odd); err != nil {
		t.Fatalf("add device route: %v", err)
	}
	cur, err := l.applier.Current()
	if err != nil || !slices.ContainsFunc(cur, func(r Route) bool { return r.Equal(Route{Dst: pfx("10.244.6.0/24")}) }) {
		t.Fatalf("Current = %v, %v; want a bare 10.244.6.0/24", cur, err)
	}
	fixed := []Route{steps[len(steps)-1].route, {Dst: pfx("10.244.6.0/24"), NextHops: []netip.Addr{peerC}}}
	mustApply(t, l.applier, fixed, true, Result{Kept: 1, Replaced: 1})
	r, ok := findRoute(kernelRoutes(t, l.h, Protocol), "10.244.6.0/24")
	if !ok || r.Scope != netlink.SCOPE_UNIVERSE || !r.Gw.Equal(net.ParseIP("198.18.0.13")) {
		t.Errorf("10.244.6.0/24 = %+v, want via 198.18.0.13 scope universe", r)
	}
}

func TestApplyKeepsGoingPastFailures(t *testing.T) {
	l := newLab(t)
	desired := []Route{
		{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{unconnected}},
		{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{peerB}},
		{Dst: pfx("10.244.4.0/24")},                                             // neither next hop nor blackhole
		{Dst: pfx("10.244.5.0/24"), NextHops: []netip.Addr{peerB, unconnected}}, // one bad leg
		{Dst: pfx("10.244.6.0/24"), Blackhole: true},
	}
	res, err := l.applier.Apply(desired, true)
	if want := (Result{Added: 2, Failed: 3}); res != want {
		t.Errorf("Apply result = %+v, want %+v", res, want)
	}
	if !errors.Is(err, unix.ENETUNREACH) || !errors.Is(err, ErrInvalidRoute) {
		t.Errorf("Apply error = %v, want ENETUNREACH and ErrInvalidRoute", err)
	}
	for _, s := range []string{
		"install route 10.244.2.0/24 via 198.19.5.5: ",
		"install route 10.244.4.0/24: ",
		"install route 10.244.5.0/24 nexthop via 198.18.0.12 nexthop via 198.19.5.5: ",
	} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("Apply error lacks %q: %v", s, err)
		}
	}
	got := summary(kernelRoutes(t, l.h, Protocol))
	if len(got) != 2 || !strings.HasPrefix(got[0], "10.244.3.0/24 ") || !strings.HasPrefix(got[1], "10.244.6.0/24 ") {
		t.Errorf("kernel routes = %v, want 10.244.3.0/24 and 10.244.6.0/24", got)
	}
}

// TestAppliedRoutesForward sends real datagrams through a route Apply
// installed, and checks the blackhole for the own pod CIDR.
func TestAppliedRoutesForward(t *testing.T) {
	l := newLab(t)
	plo, err := l.peerH.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	addAddr(t, l.peerH, plo, "10.244.2.1/32") // a "pod" on the peer node

	var conn *net.UDPConn
	err = l.peer.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.244.2.1")})
		return err
	})
	if err != nil {
		t.Fatalf("listen in peer: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	target := conn.LocalAddr().String()

	send := func(to string) error {
		return l.node.Do(func(ns.NetNS) error {
			c, err := net.Dial("udp4", to)
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("meridian"))
			return err
		})
	}

	if err := send(target); !errors.Is(err, unix.ENETUNREACH) {
		t.Fatalf("send without a route: %v, want ENETUNREACH", err)
	}
	mustApply(t, l.applier, testDesired(t), true, Result{Added: 3})
	if err := send(target); err != nil {
		t.Fatalf("send through the route: %v", err)
	}
	buf := make([]byte, 64)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := conn.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("receive in peer: %v", err)
	}
	if string(buf[:n]) != "meridian" || from.IP.String() != "198.18.0.11" {
		t.Errorf("got %q from %v", buf[:n], from)
	}

	// The own pod CIDR is blackholed: the kernel refuses to route to it
	// (EINVAL for locally originated traffic, RTN_BLACKHOLE).
	if err := send("10.244.1.77:9"); !errors.Is(err, unix.EINVAL) {
		t.Errorf("send into own pod CIDR: %v, want EINVAL from the blackhole", err)
	}
}

func TestEnableIPv4Forwarding(t *testing.T) {
	netnstest.RequireRoot(t)
	n, _, _ := netnstest.New(t)
	hostBefore, err := os.ReadFile(ipForwardPath)
	if err != nil {
		t.Fatal(err)
	}

	read := func() string {
		t.Helper()
		var v []byte
		if err := n.Do(func(ns.NetNS) error {
			var err error
			v, err = os.ReadFile(ipForwardPath)
			return err
		}); err != nil {
			t.Fatalf("read ip_forward: %v", err)
		}
		return strings.TrimSpace(string(v))
	}
	set0 := func() {
		t.Helper()
		if err := n.Do(func(ns.NetNS) error { return os.WriteFile(ipForwardPath, []byte("0"), 0o644) }); err != nil {
			t.Fatalf("reset ip_forward: %v", err)
		}
		if v := read(); v != "0" {
			t.Fatalf("ip_forward = %s after reset", v)
		}
	}

	set0()
	if err := EnableIPv4Forwarding(n.Path()); err != nil {
		t.Fatalf("EnableIPv4Forwarding(%s): %v", n.Path(), err)
	}
	if v := read(); v != "1" {
		t.Errorf("ip_forward = %s, want 1", v)
	}
	if err := EnableIPv4Forwarding(n.Path()); err != nil || read() != "1" {
		t.Errorf("second EnableIPv4Forwarding: %v, ip_forward %s", err, read())
	}

	// Empty path: the caller's namespace, here the test one.
	set0()
	if err := n.Do(func(ns.NetNS) error { return EnableIPv4Forwarding("") }); err != nil {
		t.Fatalf("EnableIPv4Forwarding(\"\"): %v", err)
	}
	if v := read(); v != "1" {
		t.Errorf("ip_forward = %s, want 1", v)
	}

	if err := EnableIPv4Forwarding("/nonexistent/netns"); err == nil {
		t.Error("EnableIPv4Forwarding of a missing namespace succeeded")
	}
	hostAfter, err := os.ReadFile(ipForwardPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(hostAfter) != string(hostBefore) {
		t.Errorf("host ip_forward changed from %q to %q", hostBefore, hostAfter)
	}
}
