package bgp

import (
	"net/netip"
	"slices"
	"testing"
)

var (
	n1  = netip.MustParseAddr("198.18.0.11")
	n2  = netip.MustParseAddr("198.18.0.12")
	tor = netip.MustParseAddr("198.18.0.201")
)

func testPolicy() ImportPolicy {
	return ImportPolicy{
		Allowed:     []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		OwnPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		PodCIDROwners: map[netip.Prefix]netip.Addr{
			netip.MustParsePrefix("10.244.1.0/24"): n1,
			netip.MustParsePrefix("10.244.2.0/24"): n2,
		},
		NodeAddresses: []netip.Addr{n1, n2},
	}
}

func withFabric(peers ...netip.Addr) *ImportPolicy {
	p := testPolicy()
	p.FabricPeers = peers
	return &p
}

func TestImportPolicyCheck(t *testing.T) {
	p := testPolicy()
	tests := []struct {
		name    string
		prefix  string
		nextHop netip.Addr
		policy  *ImportPolicy
		want    string
	}{
		{"other node's pod CIDR from its owner", "10.244.2.0/24", n2, nil, ""},
		{"other node's pod CIDR via a ToR that is not a fabric peer", "10.244.2.0/24", tor, nil, ReasonNextHopNotOwner},
		{"other node's pod CIDR via the fabric peer that sent it", "10.244.2.0/24", tor, withFabric(tor), ""},
		{"other node's pod CIDR via a third address from a fabric peer", "10.244.2.0/24", netip.MustParseAddr("198.18.0.99"), withFabric(tor), ReasonNextHopNotOwner},
		{"more specific of a pod CIDR even via the fabric", "10.244.2.0/25", tor, withFabric(tor), ReasonPodCIDRMoreSpecific},
		{"own pod CIDR even via the fabric", "10.244.1.0/24", tor, withFabric(tor), ReasonOwnPodCIDR},
		{"unallocated part of the cluster CIDR", "10.244.200.0/24", tor, nil, ""},
		{"default route", "0.0.0.0/0", tor, nil, ReasonDefaultRoute},
		{"own pod CIDR", "10.244.1.0/24", n1, nil, ReasonOwnPodCIDR},
		{"inside own pod CIDR", "10.244.1.128/25", tor, nil, ReasonOwnPodCIDR},
		{"aggregate covering own pod CIDR", "10.244.0.0/16", tor, nil, ReasonOwnPodCIDR},
		{"more specific of another node's pod CIDR", "10.244.2.0/25", tor, nil, ReasonPodCIDRMoreSpecific},
		{"more specific even from the owner", "10.244.2.7/32", n2, nil, ReasonPodCIDRMoreSpecific},
		{"outside the cluster", "192.0.2.0/24", tor, nil, ReasonOutsideAllowed},
		{"covers a node", "198.18.0.0/24", tor, &ImportPolicy{Allowed: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")}, NodeAddresses: []netip.Addr{n1}}, ReasonCoversNode},
		{"zero policy accepts nothing", "10.244.200.0/24", tor, &ImportPolicy{}, ReasonOutsideAllowed},
		{"host bits are masked", "10.244.200.1/24", tor, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pol := p
			if tc.policy != nil {
				pol = *tc.policy
			}
			got := pol.Check(Path{Prefix: netip.MustParsePrefix(tc.prefix), NextHop: tc.nextHop, PeerAddress: tor})
			if got != tc.want {
				t.Errorf("Check(%s via %s) = %q, want %q", tc.prefix, tc.nextHop, got, tc.want)
			}
		})
	}
	if got := p.Check(Path{}); got != ReasonPrefixInvalid {
		t.Errorf("Check(zero path) = %q, want %q", got, ReasonPrefixInvalid)
	}
	if got := p.Check(Path{Prefix: netip.MustParsePrefix("fd00::/64")}); got != ReasonPrefixInvalid {
		t.Errorf("Check(IPv6) = %q, want %q", got, ReasonPrefixInvalid)
	}
}

func TestImportPolicyApplyAndCount(t *testing.T) {
	p := testPolicy()
	p.MaxPrefixes = map[netip.Addr]uint32{tor: 2}
	paths := []Path{
		{Prefix: netip.MustParsePrefix("10.244.203.0/24"), NextHop: tor, PeerAddress: tor},
		{Prefix: netip.MustParsePrefix("10.244.201.0/24"), NextHop: tor, PeerAddress: tor},
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: tor, PeerAddress: tor},
		{Prefix: netip.MustParsePrefix("10.244.202.0/24"), NextHop: tor, PeerAddress: tor},
		{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: n2, PeerAddress: n2},
	}
	got := p.Apply(paths)
	want := []string{ReasonMaxPrefixes, "", ReasonDefaultRoute, "", ""}
	for i := range got {
		if got[i].Rejected != want[i] {
			t.Errorf("path %s: Rejected = %q, want %q", got[i].Prefix, got[i].Rejected, want[i])
		}
		if paths[i].Rejected != "" {
			t.Errorf("Apply changed its input")
		}
	}
	counts := Count(got)
	c := counts[tor]
	if c.Received != 4 || c.Accepted != 2 || c.Rejected[ReasonMaxPrefixes] != 1 || c.Rejected[ReasonDefaultRoute] != 1 {
		t.Errorf("counts for the ToR = %+v", c)
	}
	if c := counts[n2]; c.Received != 1 || c.Accepted != 1 || len(c.Rejected) != 0 {
		t.Errorf("counts for n2 = %+v", c)
	}
}

func TestMultipath(t *testing.T) {
	tor2 := netip.MustParseAddr("198.18.0.202")
	pfx := netip.MustParsePrefix("10.244.200.0/24")
	other := netip.MustParsePrefix("10.244.201.0/24")
	paths := []Path{
		{Prefix: pfx, NextHop: tor, PeerAddress: tor, ASPath: []uint32{65100}, LocalPref: 100, Best: true},
		{Prefix: pfx, NextHop: tor2, PeerAddress: tor2, ASPath: []uint32{65200}, LocalPref: 100},
		{Prefix: pfx, NextHop: n2, PeerAddress: n2, ASPath: []uint32{65100, 65300}, LocalPref: 100},
		{Prefix: other, NextHop: tor, PeerAddress: tor, LocalPref: 100, Best: true, Rejected: ReasonOutsideAllowed},
		{Prefix: other, NextHop: tor2, PeerAddress: tor2, LocalPref: 100, MED: 10},
		{Prefix: other, NextHop: n2, PeerAddress: n2, LocalPref: 100, MED: 20},
	}
	best := map[netip.Prefix][]netip.Addr{}
	for _, p := range Multipath(paths) {
		if p.Rejected != "" {
			t.Errorf("rejected path %s via %s returned", p.Prefix, p.NextHop)
		}
		if p.Best {
			best[p.Prefix] = append(best[p.Prefix], p.NextHop)
		}
	}
	if got := best[pfx]; len(got) != 2 || got[0] != tor || got[1] != tor2 {
		t.Errorf("best next hops for %s = %v, want both ToRs (equal cost, longer AS path left out)", pfx, got)
	}
	if got := best[other]; len(got) != 1 || got[0] != tor2 {
		t.Errorf("best next hops for %s = %v, want %s (the speaker's best was refused; lowest MED)", other, got, tor2)
	}
}

// FuzzImportPolicy checks the invariants that hold whatever a peer sends:
// an accepted prefix is inside the allowed set, never a default route,
// never overlapping this node's pod CIDR, never more specific than a
// node's pod CIDR, never covering a node, and a node's pod CIDR only with
// its owner as next hop, or the fabric peer that sent it.
func FuzzImportPolicy(f *testing.F) {
	f.Add([]byte{10, 244, 2, 0}, uint8(24), []byte{198, 18, 0, 12})
	f.Add([]byte{0, 0, 0, 0}, uint8(0), []byte{198, 18, 0, 201})
	f.Add([]byte{10, 244, 1, 128}, uint8(25), []byte{198, 18, 0, 201})
	f.Add([]byte{10, 244, 200, 0}, uint8(24), []byte{198, 18, 0, 201})
	f.Fuzz(func(t *testing.T, addr []byte, bits uint8, nh []byte) {
		a, ok := netip.AddrFromSlice(addr)
		if !ok {
			return
		}
		next, _ := netip.AddrFromSlice(nh)
		// The top bit of bits makes the sender a fabric peer.
		p := testPolicy()
		if bits&0x80 != 0 {
			p.FabricPeers = []netip.Addr{tor}
		}
		prefix := netip.PrefixFrom(a, int(bits&0x7f))
		paths := p.Apply([]Path{{Prefix: prefix, NextHop: next, PeerAddress: tor}})
		if len(paths) != 1 {
			t.Fatalf("Apply returned %d paths for 1", len(paths))
		}
		if paths[0].Rejected != p.Check(paths[0]) {
			t.Fatalf("Apply and Check disagree")
		}
		if paths[0].Rejected != "" {
			return
		}
		dst := prefix.Masked()
		if !dst.Addr().Is4() || dst.Bits() == 0 {
			t.Fatalf("accepted %s", prefix)
		}
		inside := false
		for _, al := range p.Allowed {
			inside = inside || (al.Bits() <= dst.Bits() && al.Contains(dst.Addr()))
		}
		if !inside {
			t.Fatalf("accepted %s outside the allowed set", dst)
		}
		for _, own := range p.OwnPodCIDRs {
			if own.Overlaps(dst) {
				t.Fatalf("accepted %s overlapping own pod CIDR %s", dst, own)
			}
		}
		for cidr, owner := range p.PodCIDROwners {
			if cidr == dst && next.Unmap() != owner && !(next.Unmap() == tor && slices.Contains(p.FabricPeers, tor)) {
				t.Fatalf("accepted %s via %s, owner is %s", dst, next, owner)
			}
			if cidr.Bits() < dst.Bits() && cidr.Contains(dst.Addr()) {
				t.Fatalf("accepted %s inside pod CIDR %s", dst, cidr)
			}
		}
		for _, n := range p.NodeAddresses {
			if dst.Contains(n) {
				t.Fatalf("accepted %s covering node %s", dst, n)
			}
		}
		if mp := Multipath(paths); len(mp) != 1 || !mp[0].Best {
			t.Fatalf("a lone accepted path is not best after Multipath: %+v", mp)
		}
	})
}
