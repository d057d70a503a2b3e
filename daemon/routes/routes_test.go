package routes

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/encap"
)

var (
	nodeIP  = netip.MustParseAddr("198.18.0.11")
	peerB   = netip.MustParseAddr("198.18.0.12")
	peerC   = netip.MustParseAddr("198.18.0.13")
	cluster = netip.MustParsePrefix("10.244.0.0/16")
	ownPods = netip.MustParsePrefix("10.244.1.0/24")
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func best(prefix string, nh netip.Addr) bgp.Path {
	return bgp.Path{Prefix: pfx(prefix), NextHop: nh, PeerAddress: nh, LocalPref: 100, Best: true}
}

func defaultLocal() Local {
	return Local{PodCIDRs: []netip.Prefix{ownPods}, NodeIP: nodeIP, AllowedPrefixes: []netip.Prefix{cluster}}
}

func blackholeOwn() Route { return Route{Dst: ownPods, Blackhole: true} }

func TestDesired(t *testing.T) {
	stale := best("10.244.3.0/24", peerC)
	stale.Stale = true
	notBest := best("10.244.2.0/24", peerC)
	notBest.Best = false

	tests := []struct {
		name        string
		paths       []bgp.Path
		local       Local
		wantRoutes  []Route
		wantSkipped []Skip
	}{
		{
			name:       "no paths leaves only the blackhole",
			local:      defaultLocal(),
			wantRoutes: []Route{blackholeOwn()},
		},
		{
			name:  "one best path per prefix",
			paths: []bgp.Path{best("10.244.3.0/24", peerC), best("10.244.2.0/24", peerB)},
			local: defaultLocal(),
			wantRoutes: []Route{
				blackholeOwn(),
				{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{peerB}},
				{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{peerC}},
			},
		},
		{
			name:  "non-best path is skipped, best one kept",
			paths: []bgp.Path{notBest, best("10.244.2.0/24", peerB)},
			local: defaultLocal(),
			wantRoutes: []Route{
				blackholeOwn(),
				{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{peerB}},
			},
			wantSkipped: []Skip{{pfx("10.244.2.0/24"), ReasonNotBest}},
		},
		{
			name: "several best paths make one multipath route, sorted and unique",
			paths: []bgp.Path{
				best("10.244.5.0/24", peerC),
				best("10.244.5.0/24", peerB),
				best("10.244.5.0/24", peerC),
			},
			local: defaultLocal(),
			wantRoutes: []Route{
				blackholeOwn(),
				{Dst: pfx("10.244.5.0/24"), NextHops: []netip.Addr{peerB, peerC}},
			},
		},
		{
			name:  "stale best path is still installed",
			paths: []bgp.Path{stale},
			local: defaultLocal(),
			wantRoutes: []Route{
				blackholeOwn(),
				{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{peerC}},
			},
		},
		{
			name: "own pod CIDR, its subnets and supernets are never learned",
			paths: []bgp.Path{
				best("10.244.1.0/24", peerB),
				best("10.244.1.128/25", peerB),
				best("10.244.0.0/16", peerB),
			},
			local:      defaultLocal(),
			wantRoutes: []Route{blackholeOwn()},
			wantSkipped: []Skip{
				{pfx("10.244.0.0/16"), ReasonOwnPodCIDR},
				{pfx("10.244.1.0/24"), ReasonOwnPodCIDR},
				{pfx("10.244.1.128/25"), ReasonOwnPodCIDR},
			},
		},
		{
			name:       "default route is refused even if allowed",
			paths:      []bgp.Path{best("0.0.0.0/0", peerB)},
			local:      Local{NodeIP: nodeIP, AllowedPrefixes: []netip.Prefix{pfx("0.0.0.0/0")}},
			wantRoutes: nil,
			wantSkipped: []Skip{
				{pfx("0.0.0.0/0"), ReasonDefaultRoute},
			},
		},
		{
			name: "outside the allowed prefixes",
			paths: []bgp.Path{
				best("192.168.7.0/24", peerB),
				best("10.245.0.0/24", peerB), // next to the allowed range
			},
			local:      defaultLocal(),
			wantRoutes: []Route{blackholeOwn()},
			wantSkipped: []Skip{
				{pfx("10.245.0.0/24"), ReasonOutsideAllowed},
				{pfx("192.168.7.0/24"), ReasonOutsideAllowed},
			},
		},
		{
			name:       "empty allowed prefixes allow nothing",
			paths:      []bgp.Path{best("10.244.2.0/24", peerB)},
			local:      Local{PodCIDRs: []netip.Prefix{ownPods}, NodeIP: nodeIP},
			wantRoutes: []Route{blackholeOwn()},
			wantSkipped: []Skip{
				{pfx("10.244.2.0/24"), ReasonOutsideAllowed},
			},
		},
		{
			name:        "supernet of the allowed range is outside it",
			paths:       []bgp.Path{best("10.0.0.0/8", peerB)},
			local:       Local{NodeIP: nodeIP, AllowedPrefixes: []netip.Prefix{cluster}},
			wantSkipped: []Skip{{pfx("10.0.0.0/8"), ReasonOutsideAllowed}},
		},
		{
			name: "multiple allowed prefixes",
			paths: []bgp.Path{
				best("10.244.2.0/24", peerB),
				best("10.96.8.0/24", peerB),
			},
			local: Local{NodeIP: nodeIP, AllowedPrefixes: []netip.Prefix{cluster, pfx("10.96.0.0/12")}},
			wantRoutes: []Route{
				{Dst: pfx("10.96.8.0/24"), NextHops: []netip.Addr{peerB}},
				{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{peerB}},
			},
		},
		{
			name: "invalid next hops",
			paths: []bgp.Path{
				best("10.244.2.0/24", netip.Addr{}),
				best("10.244.3.0/24", addr("0.0.0.0")),
				best("10.244.4.0/24", addr("127.0.0.1")),
				best("10.244.5.0/24", addr("224.0.0.5")),
				best("10.244.6.0/24", addr("255.255.255.255")),
				best("10.244.7.0/24", addr("2001:db8::1")),
				best("10.244.8.0/24", addr("0.0.0.11")),
			},
			local:      defaultLocal(),
			wantRoutes: []Route{blackholeOwn()},
			wantSkipped: []Skip{
				{pfx("10.244.2.0/24"), ReasonNextHopInvalid},
				{pfx("10.244.3.0/24"), ReasonNextHopInvalid},
				{pfx("10.244.4.0/24"), ReasonNextHopInvalid},
				{pfx("10.244.5.0/24"), ReasonNextHopInvalid},
				{pfx("10.244.6.0/24"), ReasonNextHopInvalid},
				{pfx("10.244.7.0/24"), ReasonNextHopInvalid},
				{pfx("10.244.8.0/24"), ReasonNextHopInvalid},
			},
		},
		{
			name:        "next hop is this node",
			paths:       []bgp.Path{best("10.244.2.0/24", nodeIP)},
			local:       defaultLocal(),
			wantRoutes:  []Route{blackholeOwn()},
			wantSkipped: []Skip{{pfx("10.244.2.0/24"), ReasonNextHopIsSelf}},
		},
		{
			name:  "IPv4-mapped next hop is unmapped",
			paths: []bgp.Path{best("10.244.2.0/24", addr("::ffff:198.18.0.12"))},
			local: defaultLocal(),
			wantRoutes: []Route{
				blackholeOwn(),
				{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{peerB}},
			},
		},
		{
			name: "one bad next hop of a multipath prefix only drops that hop",
			paths: []bgp.Path{
				best("10.244.2.0/24", peerB),
				best("10.244.2.0/24", nodeIP),
			},
			local: defaultLocal(),
			wantRoutes: []Route{
				blackholeOwn(),
				{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{peerB}},
			},
			wantSkipped: []Skip{{pfx("10.244.2.0/24"), ReasonNextHopIsSelf}},
		},
		{
			name: "invalid and IPv6 prefixes",
			paths: []bgp.Path{
				{NextHop: peerB, Best: true},
				best("fd00:10:244::/64", peerB),
			},
			local:      defaultLocal(),
			wantRoutes: []Route{blackholeOwn()},
			wantSkipped: []Skip{
				{netip.Prefix{}, ReasonPrefixInvalid},
				{pfx("fd00:10:244::/64"), ReasonPrefixInvalid},
			},
		},
		{
			name:  "host bits in a prefix are masked",
			paths: []bgp.Path{best("10.244.2.7/24", peerB)},
			local: defaultLocal(),
			wantRoutes: []Route{
				blackholeOwn(),
				{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{peerB}},
			},
		},
		{
			name: "duplicate and bad pod CIDRs",
			local: Local{
				PodCIDRs:        []netip.Prefix{pfx("10.244.1.9/24"), ownPods, pfx("0.0.0.0/0"), pfx("fd00::/64"), pfx("10.244.9.0/24")},
				NodeIP:          nodeIP,
				AllowedPrefixes: []netip.Prefix{cluster},
			},
			wantRoutes: []Route{blackholeOwn(), {Dst: pfx("10.244.9.0/24"), Blackhole: true}},
			wantSkipped: []Skip{
				{pfx("0.0.0.0/0"), ReasonDefaultRoute},
				{pfx("fd00::/64"), ReasonPrefixInvalid},
			},
		},
		{
			name: "skips are reported once per prefix and reason",
			paths: []bgp.Path{
				best("192.168.7.0/24", peerB),
				best("192.168.7.0/24", peerC),
			},
			local:       defaultLocal(),
			wantRoutes:  []Route{blackholeOwn()},
			wantSkipped: []Skip{{pfx("192.168.7.0/24"), ReasonOutsideAllowed}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotRoutes, gotSkipped := Desired(tt.paths, tt.local)
			if !reflect.DeepEqual(gotRoutes, tt.wantRoutes) {
				t.Errorf("routes:\n got  %v\n want %v", gotRoutes, tt.wantRoutes)
			}
			if !reflect.DeepEqual(gotSkipped, tt.wantSkipped) {
				t.Errorf("skipped:\n got  %v\n want %v", gotSkipped, tt.wantSkipped)
			}
			// Input order must not matter.
			rev := slices.Clone(tt.paths)
			slices.Reverse(rev)
			revRoutes, revSkipped := Desired(rev, tt.local)
			if !reflect.DeepEqual(revRoutes, gotRoutes) || !reflect.DeepEqual(revSkipped, gotSkipped) {
				t.Errorf("reversed input changed the output: %v %v", revRoutes, revSkipped)
			}
		})
	}
}

func TestRouteString(t *testing.T) {
	tests := []struct {
		r    Route
		want string
	}{
		{Route{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{peerB}}, "10.244.2.0/24 via 198.18.0.12 proto 201"},
		{
			Route{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{peerB, peerC}},
			"10.244.3.0/24 proto 201 nexthop via 198.18.0.12 nexthop via 198.18.0.13",
		},
		{Route{Dst: ownPods, Blackhole: true}, "blackhole 10.244.1.0/24 proto 201"},
		{Route{Dst: pfx("10.244.4.0/24")}, "10.244.4.0/24 proto 201"},
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestDiff(t *testing.T) {
	r2 := Route{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{peerB}}
	r2c := Route{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{peerC}}
	r2ecmp := Route{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{peerB, peerC}}
	r3 := Route{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{peerC}}
	r3bh := Route{Dst: pfx("10.244.3.0/24"), Blackhole: true}
	r4 := Route{Dst: pfx("10.244.4.0/24"), NextHops: []netip.Addr{peerB}}
	r4bare := Route{Dst: pfx("10.244.4.0/24")} // an unrepresentable kernel route
	bh := blackholeOwn()

	tests := []struct {
		name                 string
		desired, current     []Route
		add, replace, remove []Route
	}{
		{name: "both empty"},
		{name: "all new", desired: []Route{r3, bh, r2}, add: []Route{bh, r2, r3}},
		{name: "all gone", current: []Route{r3, r2}, remove: []Route{r2, r3}},
		{name: "same", desired: []Route{bh, r2, r3}, current: []Route{r3, r2, bh}},
		{name: "next hop changed", desired: []Route{r2c}, current: []Route{r2}, replace: []Route{r2c}},
		{name: "single to multipath", desired: []Route{r2ecmp}, current: []Route{r2}, replace: []Route{r2ecmp}},
		{name: "unicast to blackhole", desired: []Route{r3bh}, current: []Route{r3}, replace: []Route{r3bh}},
		{name: "unrepresentable current is replaced", desired: []Route{r4}, current: []Route{r4bare}, replace: []Route{r4}},
		{
			name:    "mixed",
			desired: []Route{bh, r2c, r4},
			current: []Route{r3, r2, bh},
			add:     []Route{r4}, replace: []Route{r2c}, remove: []Route{r3},
		},
		{name: "duplicate desired, first wins", desired: []Route{r2, r2c}, current: []Route{r2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			add, replace, remove := Diff(tt.desired, tt.current)
			if !reflect.DeepEqual(add, tt.add) {
				t.Errorf("add = %v, want %v", add, tt.add)
			}
			if !reflect.DeepEqual(replace, tt.replace) {
				t.Errorf("replace = %v, want %v", replace, tt.replace)
			}
			if !reflect.DeepEqual(remove, tt.remove) {
				t.Errorf("remove = %v, want %v", remove, tt.remove)
			}
		})
	}
}

func TestDesiredEncap(t *testing.T) {
	// This node 198.18.1.11 (rack 1, ToR 198.18.1.1); node B 198.18.1.12
	// in the same rack owns 10.244.2.0/24; node C 198.18.2.11 in rack 2
	// owns 10.244.3.0/24.
	self, nodeB, nodeC, tor := addr("198.18.1.11"), addr("198.18.1.12"), addr("198.18.2.11"), addr("198.18.1.1")
	owners := map[netip.Prefix]netip.Addr{ownPods: self, pfx("10.244.2.0/24"): nodeB, pfx("10.244.3.0/24"): nodeC}
	local := func(mode encap.Mode, typ encap.Type) Local {
		return Local{PodCIDRs: []netip.Prefix{ownPods}, NodeIP: self, AllowedPrefixes: []netip.Prefix{cluster},
			Encap: Encap{Mode: mode, Type: typ, Connected: []netip.Prefix{pfx("198.18.1.11/24")}, FabricPeers: []netip.Addr{tor}, PodCIDROwners: owners}}
	}
	mesh := []bgp.Path{best("10.244.2.0/24", nodeB), best("10.244.3.0/24", nodeC)}
	// The ToR's path to C's CIDR keeps C as next hop (the import policy
	// refuses any other) and loses selection to the mesh path.
	torPath := bgp.Path{Prefix: pfx("10.244.3.0/24"), NextHop: nodeC, PeerAddress: tor, ASPath: []uint32{65001, 65002}, LocalPref: 100}
	rejectedTorPath := torPath
	rejectedTorPath.Rejected = bgp.ReasonNextHopNotOwner

	b := Route{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{nodeB}, Reason: encap.ReasonNextHopConnected}
	tests := []struct {
		name  string
		paths []bgp.Path
		local Local
		want  []Route
	}{
		{"cross-subnet IPIP: same rack native, other rack through tunl0", mesh, local(encap.ModeCrossSubnet, encap.TypeIPIP), []Route{
			blackholeOwn(), b,
			{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{nodeC}, Dev: "tunl0", Endpoint: nodeC, Reason: encap.ReasonNextHopNotConnected},
		}},
		{"cross-subnet VXLAN: the remote VTEP is the network address of its pod CIDR", mesh, local(encap.ModeCrossSubnet, encap.TypeVXLAN), []Route{
			blackholeOwn(), b,
			{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{addr("10.244.3.0")}, Dev: "vxlan.meridian", Endpoint: nodeC, Reason: encap.ReasonNextHopNotConnected},
		}},
		{"cross-subnet with a ToR path: native through the ToR", append(slices.Clone(mesh), torPath), local(encap.ModeCrossSubnet, encap.TypeIPIP), []Route{
			blackholeOwn(), b,
			{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{tor}, Reason: encap.ReasonFabricHasPrefix},
		}},
		{"a rejected ToR path does not count", append(slices.Clone(mesh), rejectedTorPath), local(encap.ModeCrossSubnet, encap.TypeIPIP), []Route{
			blackholeOwn(), b,
			{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{nodeC}, Dev: "tunl0", Endpoint: nodeC, Reason: encap.ReasonNextHopNotConnected},
		}},
		{"always: both through the tunnel", mesh, local(encap.ModeAlways, encap.TypeIPIP), []Route{
			blackholeOwn(),
			{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{nodeB}, Dev: "tunl0", Endpoint: nodeB, Reason: encap.ReasonModeAlways},
			{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{nodeC}, Dev: "tunl0", Endpoint: nodeC, Reason: encap.ReasonModeAlways},
		}},
		{"never: both native", mesh, local(encap.ModeNever, encap.TypeVXLAN), []Route{
			blackholeOwn(),
			{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{nodeB}, Reason: encap.ReasonModeNever},
			{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{nodeC}, Reason: encap.ReasonModeNever},
		}},
		{"a prefix no node owns is never tunnelled", []bgp.Path{best("10.244.9.0/24", nodeC)}, local(encap.ModeAlways, encap.TypeIPIP), []Route{
			blackholeOwn(),
			{Dst: pfx("10.244.9.0/24"), NextHops: []netip.Addr{nodeC}, Reason: encap.ReasonNoTunnelEndpoint},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := Desired(tt.paths, tt.local)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("routes:\n got  %+v\n want %+v", got, tt.want)
			}
		})
	}
	// VXLAN needs a network address to spare for the remote VTEP.
	tiny := local(encap.ModeAlways, encap.TypeVXLAN)
	tiny.Encap.PodCIDROwners = map[netip.Prefix]netip.Addr{pfx("10.244.3.0/31"): nodeC}
	got, _ := Desired([]bgp.Path{best("10.244.3.0/31", nodeC)}, tiny)
	if want := (Route{Dst: pfx("10.244.3.0/31"), NextHops: []netip.Addr{nodeC}, Reason: encap.ReasonNoTunnelEndpoint}); len(got) != 2 || !reflect.DeepEqual(got[1], want) {
		t.Errorf("VXLAN to a /31: %+v, want %+v", got, want)
	}
}

func TestRouteStringTunnel(t *testing.T) {
	r := Route{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{addr("198.18.2.11")}, Dev: "tunl0", Endpoint: addr("198.18.2.11")}
	if got, want := r.String(), "10.244.3.0/24 via 198.18.2.11 dev tunl0 onlink proto 201"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	native := Route{Dst: r.Dst, NextHops: r.NextHops}
	if r.Equal(native) {
		t.Error("a tunnel route equals the native route with the same next hop")
	}
	readBack := r
	readBack.Endpoint, readBack.Reason = netip.Addr{}, ""
	if !r.Equal(readBack) {
		t.Error("Equal looks at Endpoint or Reason, which the kernel does not hold")
	}
}
