package routes

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/encap"
)

// fuzzAddr maps fuzz input onto addresses that collide often: the top bit
// of sel picks a free-form IPv4 address, otherwise one inside 10.244.0.0/16
// or 198.18.0.0/24 so paths hit pod CIDRs, allowed ranges and the node IP.
func fuzzAddr(sel byte, b []byte) netip.Addr {
	switch sel % 4 {
	case 0:
		return netip.AddrFrom4([4]byte{b[0], b[1], b[2], b[3]})
	case 1, 2:
		return netip.AddrFrom4([4]byte{10, 244, b[2] % 8, b[3]})
	default:
		return netip.AddrFrom4([4]byte{198, 18, 0, b[3] % 16})
	}
}

func fuzzPrefix(sel byte, b []byte, bits byte) netip.Prefix {
	return netip.PrefixFrom(fuzzAddr(sel, b), int(bits%33))
}

// fuzzToR is the external peer whose paths mean the fabric has a prefix.
var fuzzToR = netip.MustParseAddr("198.18.0.1")

// decode turns fuzz bytes into a Local and paths: 11 bytes for the local
// node, then 11 bytes per path. Bits of the header pick the encapsulation
// mode, type and connected subnets; bits of a path's last byte make it come
// from the ToR, be rejected, or make its next hop the prefix's owner.
func decode(data []byte) (Local, []bgp.Path) {
	var local Local
	if len(data) < 11 {
		return local, nil
	}
	h := data[:11]
	local.PodCIDRs = []netip.Prefix{fuzzPrefix(h[0], h[1:5], h[5])}
	if h[0]&0x80 != 0 {
		local.PodCIDRs = append(local.PodCIDRs, fuzzPrefix(h[0]>>2, h[5:9], h[9]))
	}
	local.NodeIP = fuzzAddr(3, h[6:10])
	switch h[10] % 4 {
	case 0: // nothing allowed
	case 1:
		local.AllowedPrefixes = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	case 2:
		local.AllowedPrefixes = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("0.0.0.0/0")}
	default:
		local.AllowedPrefixes = []netip.Prefix{fuzzPrefix(h[10]>>2, h[1:5], h[10]>>3)}
	}
	local.Encap = Encap{
		Mode:          []encap.Mode{"", encap.ModeNever, encap.ModeCrossSubnet, encap.ModeAlways}[h[7]%4],
		Type:          []encap.Type{"", encap.TypeIPIP, encap.TypeVXLAN, encap.TypeVXLAN}[h[8]%4],
		Connected:     [][]netip.Prefix{nil, {netip.MustParsePrefix("198.18.0.0/24")}, {netip.MustParsePrefix("198.18.0.0/29")}, {netip.MustParsePrefix("0.0.0.0/0")}}[(h[8]>>2)%4],
		FabricPeers:   []netip.Addr{fuzzToR},
		PodCIDROwners: map[netip.Prefix]netip.Addr{},
	}
	for _, p := range local.PodCIDRs {
		local.Encap.PodCIDROwners[p.Masked()] = local.NodeIP
	}
	var paths []bgp.Path
	for rec := data[11:]; len(rec) >= 11; rec = rec[11:] {
		p := bgp.Path{
			Prefix:  fuzzPrefix(rec[0], rec[1:5], rec[5]),
			NextHop: fuzzAddr(rec[0]>>2, rec[6:10]),
			Best:    rec[10]&1 != 0,
			Stale:   rec[10]&2 != 0,
		}
		p.PeerAddress = p.NextHop
		if rec[10]&4 != 0 {
			p.PeerAddress = fuzzToR
		}
		if rec[10]&8 != 0 {
			p.Rejected = bgp.ReasonNextHopNotOwner
		}
		if rec[10]&16 != 0 && p.Prefix.IsValid() {
			local.Encap.PodCIDROwners[p.Prefix.Masked()] = p.NextHop
		}
		paths = append(paths, p)
	}
	return local, paths
}

// checkTunnelRoute holds what every tunnelled route must satisfy.
func checkTunnelRoute(t *testing.T, r Route, local Local) {
	t.Helper()
	e := local.Encap
	if e.Mode != encap.ModeAlways && e.Mode != encap.ModeCrossSubnet {
		t.Fatalf("route %v tunnelled in mode %q", r, e.Mode)
	}
	if len(r.NextHops) != 1 || !r.Endpoint.IsValid() || r.Endpoint == local.NodeIP || e.PodCIDROwners[r.Dst] != r.Endpoint {
		t.Fatalf("route %v: tunnel endpoint is not the prefix's owner %v", r, e.PodCIDROwners[r.Dst])
	}
	switch r.Dev {
	case encap.IPIPDevice:
		if e.Type == encap.TypeVXLAN || r.NextHops[0] != r.Endpoint {
			t.Fatalf("IPIP route %v with type %q", r, e.Type)
		}
	case encap.VXLANDevice:
		if e.Type != encap.TypeVXLAN || r.NextHops[0] != r.Dst.Addr() {
			t.Fatalf("VXLAN route %v with type %q", r, e.Type)
		}
	default:
		t.Fatalf("route %v through an unknown device", r)
	}
}

func FuzzDesired(f *testing.F) {
	// Path records start with 13: prefix in 10.244.0.0/16, next hop in
	// 198.18.0.0/24.
	f.Add([]byte{1, 0, 0, 1, 0, 24, 0, 0, 0, 11, 1,
		13, 0, 0, 2, 0, 24, 0, 0, 0, 12, 1,
		13, 0, 0, 2, 0, 24, 0, 0, 0, 13, 3,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 1})
	f.Add([]byte{0x81, 0, 0, 1, 0, 23, 0, 0, 0, 11, 2,
		13, 0, 0, 1, 0, 25, 0, 0, 0, 12, 1,
		13, 0, 0, 0, 0, 16, 0, 0, 0, 11, 1,
		13, 0, 0, 4, 0, 24, 0, 0, 0, 12, 1})
	// Encapsulation: cross-subnet VXLAN, 198.18.0.0/29 connected; one
	// path owned and off-subnet, one from the ToR.
	f.Add([]byte{1, 0, 0, 1, 0, 24, 0, 0, 2, 11, 1,
		13, 0, 0, 2, 0, 24, 0, 0, 0, 12, 17,
		13, 0, 0, 3, 0, 24, 0, 0, 0, 13, 17,
		13, 0, 0, 3, 0, 24, 0, 0, 0, 13, 20})
	f.Fuzz(func(t *testing.T, data []byte) {
		local, paths := decode(data)
		routes, skipped := Desired(paths, local)

		var own []netip.Prefix
		for _, p := range local.PodCIDRs {
			if p.IsValid() && p.Addr().Is4() && p.Bits() > 0 {
				own = append(own, p.Masked())
			}
		}
		bestDst := map[netip.Prefix]bool{}
		for _, p := range paths {
			if p.Best {
				bestDst[p.Prefix.Masked()] = true
			}
		}
		for i, r := range routes {
			if i > 0 && comparePrefix(routes[i-1].Dst, r.Dst) >= 0 {
				t.Fatalf("routes not strictly sorted by prefix: %v", routes)
			}
			if r.Dst != r.Dst.Masked() || !r.Dst.Addr().Is4() {
				t.Fatalf("route %v has an unmasked or non-IPv4 destination", r)
			}
			if r.Dst.Bits() == 0 {
				t.Fatalf("default route %v in output", r)
			}
			if r.Blackhole {
				if len(r.NextHops) != 0 || !slices.Contains(own, r.Dst) {
					t.Fatalf("blackhole %v is not one of the own pod CIDRs %v", r, own)
				}
				continue
			}
			for _, p := range own {
				if r.Dst.Overlaps(p) {
					t.Fatalf("route %v overlaps own pod CIDR %v", r, p)
				}
			}
			if !slices.ContainsFunc(local.AllowedPrefixes, func(a netip.Prefix) bool { return contains(a.Masked(), r.Dst) }) {
				t.Fatalf("route %v outside allowed %v", r, local.AllowedPrefixes)
			}
			if !bestDst[r.Dst] {
				t.Fatalf("route %v has no best path", r)
			}
			if len(r.NextHops) == 0 {
				t.Fatalf("route %v has no next hop", r)
			}
			if (r.Reason == "") != (local.Encap.Mode == "") {
				t.Fatalf("route %v: reason %q with mode %q", r, r.Reason, local.Encap.Mode)
			}
			if r.Dev != "" {
				checkTunnelRoute(t, r, local)
			} else if r.Endpoint.IsValid() || r.Reason == encap.ReasonModeAlways || r.Reason == encap.ReasonNextHopNotConnected {
				t.Fatalf("native route %v with a tunnel endpoint or a tunnel's reason", r)
			}
			for j, nh := range r.NextHops {
				if !validNextHop(nh) || nh == local.NodeIP {
					t.Fatalf("route %v has bad next hop %v", r, nh)
				}
				if j > 0 && r.NextHops[j-1].Compare(nh) >= 0 {
					t.Fatalf("route %v next hops not sorted and unique", r)
				}
			}
		}
		for _, s := range skipped {
			if s.Reason == "" {
				t.Fatalf("skip without reason: %v", s)
			}
		}

		// Deterministic and independent of input order.
		again, againSkipped := Desired(slices.Clone(paths), local)
		rev := slices.Clone(paths)
		slices.Reverse(rev)
		revRoutes, revSkipped := Desired(rev, local)
		if !reflect.DeepEqual(routes, again) || !reflect.DeepEqual(skipped, againSkipped) ||
			!reflect.DeepEqual(routes, revRoutes) || !reflect.DeepEqual(skipped, revSkipped) {
			t.Fatalf("non-deterministic output:\n%v\n%v\n%v", routes, again, revRoutes)
		}

		// The result diffs cleanly against itself and builds from nothing.
		if a, r, d := Diff(routes, routes); a != nil || r != nil || d != nil {
			t.Fatalf("Diff(x, x) = %v %v %v", a, r, d)
		}
		if a, _, _ := Diff(routes, nil); !reflect.DeepEqual(a, routes) {
			t.Fatalf("Diff(x, nil) add = %v, want %v", a, routes)
		}
	})
}
