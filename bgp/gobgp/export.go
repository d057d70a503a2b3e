package gobgp

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	api "github.com/osrg/gobgp/v3/api"
)

// GoBGP applies export policies of ordinary (non route-server) neighbours
// from the global table only, so the "external peers get only our own
// paths" rule is one global export policy whose statements match the
// external neighbours through a neighbor set, which SetPeers keeps current.
const (
	externalNeighborSet = "meridian-external-peers"
	exportPolicyName    = "meridian-export"
)

// noNeighbor keeps the neighbor set non-empty: GoBGP's neighbor condition
// matches every neighbour when its set is empty, which would cut the
// reflection and the eBGP paths between nodes as soon as no external peer
// is configured. 0.0.0.0 is never a neighbour (validatePeers refuses it).
const noNeighbor = "0.0.0.0/32"

// exportPolicy rejects, towards the neighbours in externalNeighborSet,
// every path not originated here: those learned over iBGP (from other
// nodes, reflected or not) and over eBGP (nodes in other ASNs, other
// external peers). Everything else is accepted, so sessions between nodes
// export as before.
func exportPolicy() *api.Policy {
	stmt := func(name string, rt api.Conditions_RouteType) *api.Statement {
		return &api.Statement{
			Name: exportPolicyName + "-" + name,
			Conditions: &api.Conditions{
				NeighborSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: externalNeighborSet},
				RouteType:   rt,
			},
			Actions: &api.Actions{RouteAction: api.RouteAction_REJECT},
		}
	}
	return &api.Policy{
		Name: exportPolicyName,
		Statements: []*api.Statement{
			stmt("no-internal-to-external", api.Conditions_ROUTE_TYPE_INTERNAL),
			stmt("no-external-to-external", api.Conditions_ROUTE_TYPE_EXTERNAL),
		},
	}
}

// neighborSet renders addresses as (part of) GoBGP's defined set.
func neighborSet(addrs ...string) *api.DefinedSet {
	return &api.DefinedSet{DefinedType: api.DefinedType_NEIGHBOR, Name: externalNeighborSet, List: addrs}
}

func hostPrefixes(addrs map[netip.Addr]bool) []string {
	out := make([]string, 0, len(addrs))
	for a := range addrs {
		out = append(out, netip.PrefixFrom(a, a.BitLen()).String())
	}
	slices.Sort(out)
	return out
}

// installExportPolicy sets up the neighbor set, the policy and its global
// export assignment on a freshly started server.
func (s *Speaker) installExportPolicy(ctx context.Context) error {
	if err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: neighborSet(noNeighbor)}); err != nil {
		return fmt.Errorf("add neighbor set %s: %w", externalNeighborSet, err)
	}
	if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: exportPolicy()}); err != nil {
		return fmt.Errorf("add policy %s: %w", exportPolicyName, err)
	}
	err := s.srv.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Name:          "global",
		Direction:     api.PolicyDirection_EXPORT,
		Policies:      []*api.Policy{{Name: exportPolicyName}},
		DefaultAction: api.RouteAction_ACCEPT,
	}})
	if err != nil {
		return fmt.Errorf("assign export policy %s: %w", exportPolicyName, err)
	}
	return nil
}

// markExternal puts a into the neighbor set or takes it out, before the
// neighbour is added, so its first update is already filtered. Callers
// hold mu.
func (s *Speaker) markExternal(ctx context.Context, a netip.Addr, external bool) error {
	if s.external[a] == external {
		return nil
	}
	next := maps.Clone(s.external)
	if external {
		next[a] = true
	} else {
		delete(next, a)
	}
	return s.setExternal(ctx, next)
}

// setExternal makes the neighbor set exactly external. The set is changed
// in place, by appending and removing entries: GoBGP's Replace swaps in a
// new set object that the installed policy does not refer to. Callers
// hold mu.
func (s *Speaker) setExternal(ctx context.Context, external map[netip.Addr]bool) error {
	added, removed := map[netip.Addr]bool{}, map[netip.Addr]bool{}
	for a := range external {
		if !s.external[a] {
			added[a] = true
		}
	}
	for a := range s.external {
		if !external[a] {
			removed[a] = true
		}
	}
	if len(added) > 0 {
		if err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: neighborSet(hostPrefixes(added)...)}); err != nil {
			return fmt.Errorf("add %v to neighbor set %s: %w", hostPrefixes(added), externalNeighborSet, err)
		}
		maps.Copy(s.external, added)
	}
	if len(removed) > 0 {
		if err := s.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: neighborSet(hostPrefixes(removed)...)}); err != nil {
			return fmt.Errorf("remove %v from neighbor set %s: %w", hostPrefixes(removed), externalNeighborSet, err)
		}
		maps.DeleteFunc(s.external, func(a netip.Addr, _ bool) bool { return removed[a] })
	}
	return nil
}
