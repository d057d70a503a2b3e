package cluster

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meridian-net/meridian/bgp"
)

// Reasons a Service address is not advertised, for debug logs and tests.
// Stable strings.
const (
	// SkipOutsideBlocks: the address is in none of the configured
	// serviceExternalIPs / serviceLoadBalancerIPs blocks. Calico does the
	// same: only ranges the operator listed reach the fabric.
	SkipOutsideBlocks = "outsideServiceBlocks"
	// SkipNoLocalEndpoints: externalTrafficPolicy Local and no ready
	// endpoint of the Service on this node (MetalLB's "noLocalEndpoints").
	SkipNoLocalEndpoints = "noLocalEndpoints"
	// SkipInvalidIP: the Service carries something that is not an IP.
	SkipInvalidIP = "invalidIP"
	// SkipNotIPv4: the speaker only carries IPv4 unicast.
	SkipNotIPv4 = "notIPv4"
)

// ServiceSkip is one Service address this node does not advertise.
type ServiceSkip struct {
	Service string // namespace/name
	IP      string
	Reason  string
}

// ServiceBlocks are the validated service ranges of a BGPConfiguration.
type ServiceBlocks struct {
	ClusterIPs      []netip.Prefix
	ExternalIPs     []netip.Prefix
	LoadBalancerIPs []netip.Prefix
}

// All lists every configured block.
func (b ServiceBlocks) All() []netip.Prefix {
	return slices.Concat(b.ClusterIPs, b.ExternalIPs, b.LoadBalancerIPs)
}

// NeedsServices says whether advertising depends on Services and their
// endpoints; the ClusterIP ranges alone do not.
func (b ServiceBlocks) NeedsServices() bool {
	return len(b.ExternalIPs) > 0 || len(b.LoadBalancerIPs) > 0
}

// serviceBlocksFrom validates one list of blocks. IPv6 is refused rather
// than ignored so the operator sees why it is not advertised.
func serviceBlocksFrom(field string, raw []string, allowDefault bool) ([]netip.Prefix, []string) {
	var out []netip.Prefix
	var errs []string
	for _, r := range raw {
		p, err := netip.ParsePrefix(r)
		switch {
		case err != nil:
			errs = append(errs, fmt.Sprintf("%s: %q is not a CIDR", field, r))
		case p != p.Masked():
			errs = append(errs, fmt.Sprintf("%s: %s has host bits set (did you mean %s?)", field, p, p.Masked()))
		case !p.Addr().Is4():
			errs = append(errs, fmt.Sprintf("%s: %s is not IPv4 (only IPv4 unicast is advertised)", field, p))
		case p.Bits() == 0 && !allowDefault:
			errs = append(errs, fmt.Sprintf("%s: %s would advertise a default route", field, p))
		default:
			out = append(out, p)
		}
	}
	return out, errs
}

// ServiceAdvertisements is what a node originates for Services, following
// Calico: every ClusterIP block as configured (the whole range, from every
// node), and each externalIP and LoadBalancer ingress IP inside a
// configured block as a /32 — from every node with externalTrafficPolicy
// Cluster, only from nodes with a ready local endpoint with Local, so the
// fabric never sends traffic that kube-proxy would drop. The result is
// sorted and free of duplicates; skips say why an address was left out.
func ServiceAdvertisements(b ServiceBlocks, self NodeInfo, services []*corev1.Service, endpointSlices []*discoveryv1.EndpointSlice) ([]bgp.Advertisement, []ServiceSkip) {
	if !self.InternalIP.IsValid() {
		return nil, nil
	}
	seen := map[netip.Prefix]bool{}
	var ads []bgp.Advertisement
	add := func(p netip.Prefix) {
		if !seen[p] {
			seen[p] = true
			ads = append(ads, bgp.Advertisement{Prefix: p, NextHop: self.InternalIP})
		}
	}
	for _, p := range b.ClusterIPs {
		add(p)
	}
	var skips []ServiceSkip
	if b.NeedsServices() {
		local := localReadyServices(self.Name, endpointSlices)
		for _, svc := range services {
			if svc.Spec.Type == corev1.ServiceTypeExternalName {
				continue
			}
			key := svc.Namespace + "/" + svc.Name
			localOnly := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
			consider := func(raw string, blocks []netip.Prefix) {
				skip := func(reason string) {
					skips = append(skips, ServiceSkip{Service: key, IP: raw, Reason: reason})
				}
				ip, err := netip.ParseAddr(raw)
				switch {
				case err != nil || ip.Zone() != "":
					skip(SkipInvalidIP)
				case !ip.Unmap().Is4():
					skip(SkipNotIPv4)
				case !containedIn(ip.Unmap(), blocks):
					skip(SkipOutsideBlocks)
				case localOnly && !local[key]:
					skip(SkipNoLocalEndpoints)
				default:
					add(netip.PrefixFrom(ip.Unmap(), 32))
				}
			}
			for _, ip := range svc.Spec.ExternalIPs {
				consider(ip, b.ExternalIPs)
			}
			if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
				for _, ing := range svc.Status.LoadBalancer.Ingress {
					if ing.IP != "" {
						consider(ing.IP, b.LoadBalancerIPs)
					}
				}
			}
		}
	}
	slices.SortFunc(ads, func(a, b bgp.Advertisement) int {
		return cmp.Or(a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
	})
	return ads, skips
}

// LocalReadyEndpoints counts the ready endpoints on node in a slice; the
// routing controller compares it across updates to skip syncs that cannot
// change what the node advertises.
func LocalReadyEndpoints(node string, s *discoveryv1.EndpointSlice) int {
	n := 0
	for _, ep := range s.Endpoints {
		// A nil Ready is to be read as ready (discovery/v1 API docs).
		if ep.NodeName != nil && *ep.NodeName == node && (ep.Conditions.Ready == nil || *ep.Conditions.Ready) {
			n++
		}
	}
	return n
}

// localReadyServices are the Services (namespace/name) with a ready
// endpoint on node.
func localReadyServices(node string, endpointSlices []*discoveryv1.EndpointSlice) map[string]bool {
	out := map[string]bool{}
	for _, s := range endpointSlices {
		name := s.Labels[discoveryv1.LabelServiceName]
		if name == "" || LocalReadyEndpoints(node, s) == 0 {
			continue
		}
		out[s.Namespace+"/"+name] = true
	}
	return out
}

func containedIn(ip netip.Addr, blocks []netip.Prefix) bool {
	for _, b := range blocks {
		if b.Contains(ip) {
			return true
		}
	}
	return false
}
