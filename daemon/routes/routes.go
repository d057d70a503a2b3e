// Package routes turns the paths meridiand learned over BGP into kernel
// routes and keeps the main routing table in step with them.
//
// The decision (Desired, Diff) is pure and lives in this file; the Applier
// (applier_linux.go) is the only writer of Meridian's routes in the kernel.
package routes

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/encap"
)

// Protocol is the route protocol number (rtm_protocol, see
// /etc/iproute2/rt_protos) Meridian stamps on the routes it installs.
// Meridian owns exactly the IPv4 routes with this protocol in the main
// table: it never modifies or deletes a route with another protocol, and
// prunes every route with this one that it no longer wants. The CNI plugin
// marks its pod /32 routes with 202 so that neither prunes the other's.
// It is untyped so it converts to netlink.RouteProtocol without this file
// importing netlink.
const Protocol = 201

// Reason codes for Skip. They are stable: metrics, logs, meridianctl and
// tests use them verbatim.
const (
	// ReasonNotBest: the speaker did not select the path.
	ReasonNotBest = "notBest"
	// ReasonPrefixInvalid: the prefix is unset or not IPv4.
	ReasonPrefixInvalid = "prefixInvalid"
	// ReasonOwnPodCIDR: the prefix overlaps one of this node's pod CIDRs;
	// traffic for those is delivered locally (CNI /32s) or dropped by the
	// blackhole, never sent to another node.
	ReasonOwnPodCIDR = "ownPodCIDR"
	// ReasonOutsideAllowed: the prefix is not inside any allowed prefix
	// (the cluster CIDR), so a peer cannot steer arbitrary traffic.
	ReasonOutsideAllowed = "outsideAllowed"
	// ReasonDefaultRoute: a learned 0.0.0.0/0 would replace the node's own
	// uplink; Meridian never installs one.
	ReasonDefaultRoute = "defaultRoute"
	// ReasonNextHopInvalid: the next hop is unset, not IPv4, in 0.0.0.0/8,
	// loopback, multicast or broadcast.
	ReasonNextHopInvalid = "nextHopInvalid"
	// ReasonNextHopIsSelf: the next hop is this node, which would loop.
	ReasonNextHopIsSelf = "nextHopIsSelf"
)

// Route is one route Meridian wants in (or found in) the main table.
type Route struct {
	Dst netip.Prefix
	// NextHops are the gateways, sorted and unique; more than one makes an
	// ECMP multipath route. Empty for a blackhole.
	NextHops []netip.Addr
	// Blackhole drops matching packets (RTN_BLACKHOLE).
	Blackhole bool
	// Dev, when set, sends the route through that tunnel device
	// (encap.IPIPDevice or encap.VXLANDevice) with its one next hop
	// onlink: for IPIP the remote node, for VXLAN the remote VTEP address.
	Dev string

	// Endpoint is the remote node a tunnelled route's packets are carried
	// to (the outer destination). For IPIP it is the next hop; for VXLAN
	// the forwarding entry holds it, not the route, so routes read back
	// from the kernel leave it unset and Equal ignores it.
	Endpoint netip.Addr
	// Reason is the encapsulation decision's code (encap.Reason*) for a
	// learned route; empty for blackholes and routes read back. Equal
	// ignores it.
	Reason string
}

// String renders the route the way `ip route` writes it (multipath on one
// line, as `ip route add` takes it), e.g.
// "10.244.2.0/24 via 198.18.0.12 proto 201".
func (r Route) String() string { return r.format(true) }

// target is String without the protocol, for errors and logs that already
// say the route is Meridian's.
func (r Route) target() string { return r.format(false) }

func (r Route) format(proto bool) string {
	var b strings.Builder
	if r.Blackhole {
		b.WriteString("blackhole ")
	}
	b.WriteString(r.Dst.String())
	if !r.Blackhole && len(r.NextHops) == 1 {
		b.WriteString(" via ")
		b.WriteString(r.NextHops[0].String())
	}
	if r.Dev != "" {
		b.WriteString(" dev ")
		b.WriteString(r.Dev)
		b.WriteString(" onlink")
	}
	if proto {
		b.WriteString(" proto ")
		b.WriteString(strconv.Itoa(Protocol))
	}
	if !r.Blackhole && len(r.NextHops) > 1 {
		for _, nh := range r.NextHops {
			b.WriteString(" nexthop via ")
			b.WriteString(nh.String())
		}
	}
	return b.String()
}

// Equal reports whether two routes program the same kernel state.
func (r Route) Equal(o Route) bool {
	return r.Dst == o.Dst && r.Blackhole == o.Blackhole && r.Dev == o.Dev && slices.Equal(r.NextHops, o.NextHops)
}

// Local is what Desired needs to know about this node.
type Local struct {
	// PodCIDRs are the node's own pod CIDRs. Each gets a blackhole route so
	// that traffic for pod IPs not (or no longer) allocated here is dropped
	// on this node instead of following the default route out again; the
	// CNI's /32 routes for live pods are more specific and win.
	PodCIDRs []netip.Prefix
	// NodeIP is this node's address; a path pointing at it would loop.
	NodeIP netip.Addr
	// AllowedPrefixes bound where learned routes may go (the cluster CIDR,
	// e.g. 10.244.0.0/16). Empty allows nothing.
	AllowedPrefixes []netip.Prefix
	// Encap decides which learned routes go through a tunnel. The zero
	// value routes everything natively.
	Encap Encap
}

// Encap is what the encapsulation decision (encap.Decide) needs.
type Encap struct {
	// Mode is the encapsulation mode; empty decides nothing: plain routes
	// over the best paths' next hops, with no Reason.
	Mode encap.Mode
	// Type is the tunnel; empty is encap.DefaultType.
	Type encap.Type
	// Connected are the subnets of the node's links (not the tunnels').
	Connected []netip.Prefix
	// FabricPeers are the addresses of the external peers (ToRs,
	// bgp.Peer.External): a path from one means the fabric routes the
	// prefix natively.
	FabricPeers []netip.Addr
	// PodCIDROwners maps each node's pod CIDR to the node's address, where
	// a tunnel to that CIDR ends. A prefix no node owns is never
	// tunnelled.
	PodCIDROwners map[netip.Prefix]netip.Addr
}

// Skip says why a path, or a pod CIDR, did not become a route.
type Skip struct {
	Prefix netip.Prefix
	Reason string
}

// Desired computes the routes the main table should hold for the given
// paths: one route per prefix over all its best paths (ECMP when several
// peers' paths were selected), plus a blackhole per own pod CIDR. Each
// learned route is native or tunnelled as encap.Decide says for
// local.Encap: natively over the best paths' next hops or through the ToRs
// that announced it, or through the tunnel device to the node owning the
// prefix (IPIP: via the node, onlink on tunl0; VXLAN: via the node's VTEP
// address, the network address of its pod CIDR, onlink on the VXLAN
// device). Stale best
// paths are kept, because during a peer's graceful restart (RFC 4724) the
// forwarding state must survive. Both results are sorted and deterministic;
// skipped has one entry per prefix and reason.
func Desired(paths []bgp.Path, local Local) (routes []Route, skipped []Skip) {
	skips := map[Skip]struct{}{}
	skip := func(p netip.Prefix, reason string) { skips[Skip{Prefix: p, Reason: reason}] = struct{}{} }

	var own []netip.Prefix
	for _, p := range local.PodCIDRs {
		if !p.IsValid() || !p.Addr().Is4() {
			skip(p, ReasonPrefixInvalid)
			continue
		}
		if p.Bits() == 0 {
			// A misconfigured /0 pod CIDR must not blackhole the node.
			skip(p.Masked(), ReasonDefaultRoute)
			continue
		}
		own = append(own, p.Masked())
	}
	var allowed []netip.Prefix
	for _, p := range local.AllowedPrefixes {
		if p.IsValid() && p.Addr().Is4() {
			allowed = append(allowed, p.Masked())
		}
	}
	nodeIP := local.NodeIP.Unmap()
	fabricPeers := map[netip.Addr]bool{}
	for _, a := range local.Encap.FabricPeers {
		fabricPeers[a.Unmap()] = true
	}

	hops := map[netip.Prefix][]netip.Addr{}
	fabric := map[netip.Prefix][]netip.Addr{}
	for _, path := range paths {
		// Non-IPv4 prefixes are reported as given; everything else is
		// reported and keyed masked, since the kernel only takes masked
		// destinations and BGP NLRI carry no host bits.
		dst := path.Prefix
		if !dst.IsValid() || !dst.Addr().Is4() {
			skip(dst, ReasonPrefixInvalid)
			continue
		}
		dst = dst.Masked()
		if peer := path.PeerAddress.Unmap(); path.Rejected == "" && fabricPeers[peer] && peer != nodeIP &&
			validNextHop(peer) && checkPrefix(dst, own, allowed) == "" {
			// Any accepted ToR path, best or not: the mesh's path to the
			// owner usually wins selection on AS path length, yet the
			// fabric still routes the prefix.
			fabric[dst] = append(fabric[dst], peer)
		}
		if !path.Best {
			skip(dst, ReasonNotBest)
			continue
		}
		if reason := checkPrefix(dst, own, allowed); reason != "" {
			skip(dst, reason)
			continue
		}
		nh := path.NextHop.Unmap()
		switch {
		case !validNextHop(nh):
			skip(dst, ReasonNextHopInvalid)
			continue
		case nh == nodeIP:
			skip(dst, ReasonNextHopIsSelf)
			continue
		}
		if !slices.Contains(hops[dst], nh) {
			hops[dst] = append(hops[dst], nh)
		}
	}

	for dst, nhs := range hops {
		routes = append(routes, learned(dst, nhs, fabric[dst], nodeIP, local.Encap))
	}
	// Learned routes never overlap own pod CIDRs, so only duplicates among
	// the pod CIDRs themselves need removing.
	slices.SortFunc(own, comparePrefix)
	for _, p := range slices.Compact(own) {
		routes = append(routes, Route{Dst: p, Blackhole: true})
	}
	slices.SortFunc(routes, func(a, b Route) int { return comparePrefix(a.Dst, b.Dst) })

	for s := range skips {
		skipped = append(skipped, s)
	}
	slices.SortFunc(skipped, func(a, b Skip) int {
		return cmp.Or(comparePrefix(a.Prefix, b.Prefix), strings.Compare(a.Reason, b.Reason))
	})
	return routes, skipped
}

// learned builds the route for one learned prefix with the next hops of its
// best paths.
func learned(dst netip.Prefix, nhs, fabric []netip.Addr, nodeIP netip.Addr, e Encap) Route {
	if e.Mode == "" {
		slices.SortFunc(nhs, netip.Addr.Compare)
		return Route{Dst: dst, NextHops: nhs}
	}
	endpoint := e.PodCIDROwners[dst].Unmap()
	if !validNextHop(endpoint) || endpoint == nodeIP {
		endpoint = netip.Addr{}
	}
	typ := e.Type
	if typ == "" {
		typ = encap.DefaultType
	}
	vtep, vtepOK := encap.TunnelAddress(dst)
	if typ == encap.TypeVXLAN && !vtepOK {
		// No network address to spare as the remote VTEP's.
		endpoint = netip.Addr{}
	}
	d := encap.Decide(encap.Input{Mode: e.Mode, NextHops: nhs, FabricPeers: fabric, Endpoint: endpoint, Connected: e.Connected})
	if !d.Encapsulate {
		return Route{Dst: dst, NextHops: d.NextHops, Reason: d.Reason}
	}
	if typ == encap.TypeVXLAN {
		return Route{Dst: dst, NextHops: []netip.Addr{vtep}, Dev: encap.VXLANDevice, Endpoint: d.Endpoint, Reason: d.Reason}
	}
	return Route{Dst: dst, NextHops: []netip.Addr{d.Endpoint}, Dev: encap.IPIPDevice, Endpoint: d.Endpoint, Reason: d.Reason}
}

// checkPrefix returns the reason a learned, masked IPv4 prefix must not be
// installed, or "".
func checkPrefix(dst netip.Prefix, own, allowed []netip.Prefix) string {
	if dst.Bits() == 0 {
		return ReasonDefaultRoute
	}
	// Overlap, not containment: a learned supernet of our pod CIDR (an
	// aggregate of the cluster CIDR, say) would otherwise be installed and
	// the blackhole's purpose kept only by longest-prefix match.
	for _, p := range own {
		if dst.Overlaps(p) {
			return ReasonOwnPodCIDR
		}
	}
	for _, a := range allowed {
		if contains(a, dst) {
			return ""
		}
	}
	return ReasonOutsideAllowed
}

// contains reports whether inner lies entirely within outer.
func contains(outer, inner netip.Prefix) bool {
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

// thisNetwork is 0.0.0.0/8, "this host on this network" (RFC 1122 section
// 3.2.1.3): a source address only, never a gateway.
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

func validNextHop(a netip.Addr) bool {
	return a.Is4() && !thisNetwork.Contains(a) && !a.IsLoopback() && !a.IsMulticast() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// Diff compares desired with current by destination: add holds desired
// routes with no current route, replace the desired form of routes that
// exist but differ, remove current routes with no desired one. Each result
// is sorted by destination. If a slice holds a destination twice, the first
// entry counts.
func Diff(desired, current []Route) (add, replace, remove []Route) {
	cur := make(map[netip.Prefix]Route, len(current))
	for _, r := range current {
		if _, dup := cur[r.Dst]; !dup {
			cur[r.Dst] = r
		}
	}
	want := make(map[netip.Prefix]struct{}, len(desired))
	for _, d := range desired {
		if _, dup := want[d.Dst]; dup {
			continue
		}
		want[d.Dst] = struct{}{}
		c, ok := cur[d.Dst]
		switch {
		case !ok:
			add = append(add, d)
		case !c.Equal(d):
			replace = append(replace, d)
		}
	}
	for dst, c := range cur {
		if _, ok := want[dst]; !ok {
			remove = append(remove, c)
		}
	}
	byDst := func(a, b Route) int { return comparePrefix(a.Dst, b.Dst) }
	slices.SortFunc(add, byDst)
	slices.SortFunc(replace, byDst)
	slices.SortFunc(remove, byDst)
	return add, replace, remove
}
