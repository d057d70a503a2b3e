package bgp

import (
	"cmp"
	"net/netip"
	"slices"
)

// Reasons ImportPolicy refuses a path. They are stable strings: counters,
// logs, the API and tests key on them, and the first three match the
// reasons of routes.Desired.
const (
	// ReasonDefaultRoute: 0.0.0.0/0 would replace the node's uplink.
	ReasonDefaultRoute = "defaultRoute"
	// ReasonOwnPodCIDR: the prefix overlaps this node's pod CIDR, whose
	// traffic is delivered here and nowhere else.
	ReasonOwnPodCIDR = "ownPodCIDR"
	// ReasonOutsideAllowed: the prefix is not inside the allowed set.
	ReasonOutsideAllowed = "outsideAllowed"
	// ReasonPodCIDRMoreSpecific: the prefix is carved out of a node's pod
	// CIDR; longest-prefix match would let it steal part of that node's
	// pods.
	ReasonPodCIDRMoreSpecific = "podCIDRMoreSpecific"
	// ReasonCoversNode: the prefix contains a node's address, so
	// installing it could divert the node-to-node traffic BGP itself runs
	// over.
	ReasonCoversNode = "coversNodeAddress"
	// ReasonNextHopNotOwner: a path to a node's pod CIDR whose next hop is
	// neither that node nor a fabric router that sent it itself. The next
	// hop rather than the sender is checked, because reflectors and ToRs on
	// the nodes' subnet pass the owner's next hop on unchanged.
	ReasonNextHopNotOwner = "nextHopNotOwner"
	// ReasonMaxPrefixes: the neighbour announced more accepted prefixes
	// than its limit with MaxPrefixDrop.
	ReasonMaxPrefixes = "maxPrefixes"
	// ReasonPrefixInvalid: not a valid IPv4 prefix.
	ReasonPrefixInvalid = "prefixInvalid"
)

// ImportPolicy is what a node accepts from its peers. Peers' updates are
// untrusted: whatever the allowed set says, a default route, the node's own
// pod CIDR, anything more specific than a node's pod CIDR, a prefix
// covering a node's address and another node's pod CIDR pointing anywhere
// but at that node (or at the fabric router that announced it) are
// refused. The zero value accepts nothing.
type ImportPolicy struct {
	// Allowed bounds what may be accepted: a prefix must lie inside one.
	Allowed []netip.Prefix
	// OwnPodCIDRs are this node's pod CIDRs.
	OwnPodCIDRs []netip.Prefix
	// PodCIDROwners maps every node's pod CIDR to the node's address.
	PodCIDROwners map[netip.Prefix]netip.Addr
	// NodeAddresses are every node's addresses.
	NodeAddresses []netip.Addr
	// FabricPeers are the neighbours outside the cluster (BGPPeers: ToRs,
	// spines). An eBGP router on another subnet rewrites the next hop to
	// itself, so from such a peer a node's pod CIDR is also accepted with
	// that peer as next hop: it is the fabric's route to the node, which
	// is what lets racks route pods natively. A node in the mesh never
	// gets this: it can only announce its own pod CIDR.
	FabricPeers []netip.Addr
	// MaxPrefixes holds the per-neighbour limits enforced here (Drop);
	// other actions are the speaker's or only reported.
	MaxPrefixes map[netip.Addr]uint32
}

// Check returns why one path is refused, or "" when it is accepted. It
// does not apply MaxPrefixes, which depends on the neighbour's other paths.
func (p ImportPolicy) Check(path Path) string {
	dst := path.Prefix
	if !dst.IsValid() || !dst.Addr().Is4() {
		return ReasonPrefixInvalid
	}
	dst = dst.Masked()
	if dst.Bits() == 0 {
		return ReasonDefaultRoute
	}
	for _, own := range p.OwnPodCIDRs {
		if dst.Overlaps(own) {
			return ReasonOwnPodCIDR
		}
	}
	if owner, ok := p.PodCIDROwners[dst]; ok {
		nh := path.NextHop.Unmap()
		viaFabric := nh == path.PeerAddress.Unmap() && slices.Contains(p.FabricPeers, nh)
		if nh != owner && !viaFabric {
			return ReasonNextHopNotOwner
		}
	} else {
		for cidr := range p.PodCIDROwners {
			if cidr.Bits() < dst.Bits() && cidr.Contains(dst.Addr()) {
				return ReasonPodCIDRMoreSpecific
			}
		}
	}
	for _, a := range p.NodeAddresses {
		if dst.Contains(a.Unmap()) {
			return ReasonCoversNode
		}
	}
	for _, a := range p.Allowed {
		if a.IsValid() && a.Bits() <= dst.Bits() && a.Masked().Contains(dst.Addr()) {
			return ""
		}
	}
	return ReasonOutsideAllowed
}

// Apply judges every path, setting Rejected, and returns them in the
// given order. A neighbour's accepted prefixes beyond its MaxPrefixes
// limit are refused, lowest prefixes first kept, so the same RIB always
// gives the same answer.
func (p ImportPolicy) Apply(paths []Path) []Path {
	out := make([]Path, len(paths))
	type key struct {
		peer   netip.Addr
		prefix netip.Prefix
	}
	perPeer := map[netip.Addr][]netip.Prefix{}
	for i, path := range paths {
		path.Rejected = p.Check(path)
		out[i] = path
		if path.Rejected == "" && p.MaxPrefixes[path.PeerAddress] > 0 {
			perPeer[path.PeerAddress] = append(perPeer[path.PeerAddress], path.Prefix.Masked())
		}
	}
	over := map[key]bool{}
	for peer, prefixes := range perPeer {
		slices.SortFunc(prefixes, comparePrefix)
		prefixes = slices.Compact(prefixes)
		limit := int(p.MaxPrefixes[peer])
		for _, pf := range prefixes[min(limit, len(prefixes)):] {
			over[key{peer, pf}] = true
		}
	}
	if len(over) > 0 {
		for i := range out {
			if out[i].Rejected == "" && over[key{out[i].PeerAddress, out[i].Prefix.Masked()}] {
				out[i].Rejected = ReasonMaxPrefixes
			}
		}
	}
	return out
}

// Count tallies judged paths per neighbour into Received, Accepted and
// Rejected.
func Count(paths []Path) map[netip.Addr]PeerState {
	out := map[netip.Addr]PeerState{}
	for _, path := range paths {
		st := out[path.PeerAddress]
		st.Received++
		if path.Rejected == "" {
			st.Accepted++
		} else {
			if st.Rejected == nil {
				st.Rejected = map[string]int{}
			}
			st.Rejected[path.Rejected]++
		}
		out[path.PeerAddress] = st
	}
	return out
}

// Multipath returns the accepted paths with Best marking the paths to
// forward over: per prefix the speaker's best accepted path and every
// accepted path equal to it in LOCAL_PREF, AS path length, ORIGIN and MED
// (BGP multipath with "as-path multipath-relax": two ToRs in different
// ASes still share the load). GoBGP cannot do this itself: its ListPath
// marks a second path best only when all attributes and the source equal
// the first. When the speaker's best was refused, the best accepted path
// by the same four attributes takes its place.
func Multipath(paths []Path) []Path {
	byPrefix := map[netip.Prefix][]Path{}
	var order []netip.Prefix
	for _, path := range paths {
		if path.Rejected != "" {
			continue
		}
		dst := path.Prefix.Masked()
		if _, ok := byPrefix[dst]; !ok {
			order = append(order, dst)
		}
		byPrefix[dst] = append(byPrefix[dst], path)
	}
	var out []Path
	for _, dst := range order {
		ps := byPrefix[dst]
		ref := -1
		for i, path := range ps {
			if path.Best {
				ref = i
				break
			}
		}
		if ref < 0 {
			ref = 0
			for i := range ps {
				if compareCost(ps[i], ps[ref]) < 0 {
					ref = i
				}
			}
		}
		for _, path := range ps {
			path.Best = compareCost(path, ps[ref]) == 0
			out = append(out, path)
		}
	}
	return out
}

// compareCost orders paths by the attributes multipath requires equal;
// lower is better.
func compareCost(a, b Path) int {
	return cmp.Or(
		cmp.Compare(b.LocalPref, a.LocalPref),
		cmp.Compare(len(a.ASPath), len(b.ASPath)),
		cmp.Compare(a.Origin, b.Origin),
		cmp.Compare(a.MED, b.MED),
	)
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}
