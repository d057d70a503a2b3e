package services

import (
	"cmp"
	"net/netip"
	"slices"
)

// StaleFlow is a set of UDP conntrack entries to delete after a sync: those
// whose original destination is Frontend and, if Endpoint is valid, whose
// reply source is Endpoint.
//
// UDP has no connection end, so an entry keeps steering a client to the
// endpoint it first got, or to the reject it first got, until it times out;
// kube-proxy deletes such entries so that DNS over UDP recovers at once.
type StaleFlow struct {
	Frontend netip.AddrPort
	// Endpoint is the removed endpoint; invalid means every entry for
	// Frontend (the port had no endpoint before, so entries made while it
	// rejected must go).
	Endpoint netip.AddrPort
}

// StaleUDPFlows compares the model in the kernel with the one just applied
// and lists the UDP conntrack entries that now point the wrong way. Call it
// only after the new model is applied, or new flows can pick the old
// endpoint again. The result is sorted.
func StaleUDPFlows(applied, next *Model) []StaleFlow {
	type frontendEndpoints struct {
		frontends []netip.AddrPort
		endpoints map[netip.AddrPort]bool
	}
	index := func(m *Model) map[TargetKey]frontendEndpoints {
		out := map[TargetKey]frontendEndpoints{}
		if m == nil {
			return out
		}
		for i := range m.Services {
			for _, p := range m.Services[i].Ports {
				if p.Protocol != UDP {
					continue
				}
				eps := map[TargetKey]map[netip.AddrPort]bool{}
				for _, t := range p.Targets {
					eps[t.Key] = map[netip.AddrPort]bool{}
					for _, e := range t.Endpoints {
						eps[t.Key][e.AddrPort()] = true
					}
				}
				for _, f := range p.Frontends {
					for _, k := range []TargetKey{f.Target, f.PodTarget} {
						if k == "" {
							continue
						}
						fe := out[k]
						fe.frontends = append(fe.frontends, netip.AddrPortFrom(f.Addr, f.Port))
						fe.endpoints = eps[k]
						out[k] = fe
					}
				}
			}
		}
		return out
	}
	before, after := index(applied), index(next)
	seen := map[StaleFlow]bool{}
	var out []StaleFlow
	add := func(f StaleFlow) {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	for k, old := range before {
		cur := after[k]
		for ep := range old.endpoints {
			if cur.endpoints[ep] {
				continue
			}
			// The endpoint left this target: entries through any of the
			// target's old frontends may still carry it.
			for _, f := range old.frontends {
				add(StaleFlow{Frontend: f, Endpoint: ep})
			}
		}
	}
	for k, cur := range after {
		if len(cur.endpoints) == 0 {
			continue
		}
		if old, ok := before[k]; ok && len(old.endpoints) > 0 {
			continue
		}
		for _, f := range cur.frontends {
			add(StaleFlow{Frontend: f})
		}
	}
	slices.SortFunc(out, func(a, b StaleFlow) int {
		return cmp.Or(a.Frontend.Compare(b.Frontend), a.Endpoint.Compare(b.Endpoint))
	})
	return out
}

// ChangedServices lists the "namespace/name" of every Service whose
// programmed state differs between two models (added, removed or changed),
// sorted: the applier's unit of partial sync.
func ChangedServices(applied, next *Model) []string {
	index := func(m *Model) map[string]*Service {
		out := map[string]*Service{}
		if m != nil {
			for i := range m.Services {
				out[m.Services[i].ID()] = &m.Services[i]
			}
		}
		return out
	}
	a, b := index(applied), index(next)
	var out []string
	for id, s := range a {
		if t, ok := b[id]; !ok || !s.Equal(t) {
			out = append(out, id)
		}
	}
	for id := range b {
		if _, ok := a[id]; !ok {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}
