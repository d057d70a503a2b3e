package routing

import (
	"net/netip"
	"testing"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/cluster"
)

func TestFromOwners(t *testing.T) {
	owners := cluster.PodCIDROwners([]cluster.NodeInfo{
		{Name: "n2", InternalIP: netip.MustParseAddr("198.18.0.12"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}},
		{Name: "n3", InternalIP: netip.MustParseAddr("198.18.0.13"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}},
		{Name: "noaddr", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.9.0/24")}},
	})
	path := func(prefix, nh, peer string) bgp.Path {
		return bgp.Path{Prefix: netip.MustParsePrefix(prefix), NextHop: netip.MustParseAddr(nh), PeerAddress: netip.MustParseAddr(peer), Best: true}
	}
	tests := []struct {
		name     string
		path     bgp.Path
		kept     bool
		rejected bool
	}{
		{"owner announces its CIDR", path("10.244.2.0/24", "198.18.0.12", "198.18.0.12"), true, false},
		{"another node announces it", path("10.244.2.0/24", "198.18.0.13", "198.18.0.13"), false, true},
		{"reflected with the owner's next hop", path("10.244.3.0/24", "198.18.0.13", "198.18.0.99"), true, false},
		{"IPv4-mapped next hop of the owner", path("10.244.3.0/24", "::ffff:198.18.0.13", "198.18.0.13"), true, false},
		{"not a node's CIDR: left to Desired", path("192.0.2.0/24", "198.18.0.12", "198.18.0.12"), true, false},
		{"CIDR of a node without address: left to Desired", path("10.244.9.0/24", "198.18.0.12", "198.18.0.12"), true, false},
		{"unmasked prefix is matched masked", bgp.Path{Prefix: netip.PrefixFrom(netip.MustParseAddr("10.244.2.7"), 24), NextHop: netip.MustParseAddr("198.18.0.13"), Best: true}, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kept, rejected := fromOwners([]bgp.Path{tc.path}, owners)
			if (len(kept) == 1) != tc.kept {
				t.Errorf("kept = %v, want kept=%v", kept, tc.kept)
			}
			if (len(rejected) == 1) != tc.rejected {
				t.Errorf("rejected = %v, want rejected=%v", rejected, tc.rejected)
			}
			if tc.rejected && rejected[0].Reason != ReasonNextHopNotOwner {
				t.Errorf("reason %q", rejected[0].Reason)
			}
		})
	}
}
