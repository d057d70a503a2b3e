package routing

import (
	"net/netip"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/routes"
)

// ReasonNextHopNotOwner is the skip reason for a path to a node's pod CIDR
// whose next hop is not that node.
const ReasonNextHopNotOwner = "nextHopNotOwner"

// fromOwners drops paths to a node's pod CIDR whose next hop is not that
// node, so no speaker can draw another node's pod traffic to itself. The
// next hop is checked rather than the peer, because a route reflector
// passes the originator's next hop on unchanged. Paths for prefixes that
// are no node's pod CIDR are left to routes.Desired.
func fromOwners(paths []bgp.Path, owners map[netip.Prefix]netip.Addr) (kept []bgp.Path, rejected []routes.Skip) {
	for _, p := range paths {
		owner, ok := owners[p.Prefix.Masked()]
		if ok && p.NextHop.Unmap() != owner {
			rejected = append(rejected, routes.Skip{Prefix: p.Prefix.Masked(), Reason: ReasonNextHopNotOwner})
			continue
		}
		kept = append(kept, p)
	}
	return kept, rejected
}
