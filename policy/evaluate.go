package policy

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
)

// Packet is the first packet of a connection as policy sees it: after
// service DNAT, so Dst is a real endpoint.
type Packet struct {
	Src, Dst netip.Addr
	Protocol corev1.Protocol // TCP, UDP, SCTP, or anything else (e.g. "ICMP") that only port-less rules match
	DstPort  uint16
}

// Verdict is a model's decision on a packet.
type Verdict struct {
	Allowed bool
	// Egress is set when the source is a local pod, Ingress when the
	// destination is; a packet touching no local pod is not this node's to
	// judge and is allowed with both nil.
	Egress, Ingress *DirectionVerdict
}

// DirectionVerdict is the decision of one direction for one local pod.
type DirectionVerdict struct {
	Pod     string // namespace/name
	Allowed bool
	Reason  string // one of the Verdict* constants
	// Rules are the allow rules that matched (every one, in model order),
	// when Reason is VerdictAllowedByRule.
	Rules []RuleRef
	// Policies are the isolating policies when Reason is VerdictDefaultDeny:
	// the ones a drop is attributed to.
	Policies []string
}

// RuleRef names one rule of one policy.
type RuleRef struct {
	Policy string
	Index  int
}

// Stable reasons of a DirectionVerdict.
const (
	VerdictNotIsolated   = "notIsolated"
	VerdictAllowedByRule = "allowedByRule"
	VerdictDefaultDeny   = "defaultDeny"
	VerdictLoopback      = "loopback"
)

// Evaluate decides one packet the way the rendered ruleset will: the
// egress chain of the source pod if it is local, then the ingress chain of
// the destination pod if it is local.
//
// A pod reaching itself is always allowed, as upstream's netpol e2e expects
// (AllowLoopback): the packet never leaves the pod's network namespace, so
// no node could judge it.
func (m *Model) Evaluate(p Packet) Verdict {
	v := Verdict{Allowed: true}
	src, dst := m.podByIP(p.Src), m.podByIP(p.Dst)
	if src != nil && src == dst {
		v.Egress = &DirectionVerdict{Pod: src.Key(), Allowed: true, Reason: VerdictLoopback}
		v.Ingress = &DirectionVerdict{Pod: src.Key(), Allowed: true, Reason: VerdictLoopback}
		return v
	}
	if pod := src; pod != nil {
		v.Egress = m.evalDirection(pod, &pod.Egress, p, p.Dst)
		v.Allowed = v.Allowed && v.Egress.Allowed
	}
	if pod := dst; pod != nil {
		v.Ingress = m.evalDirection(pod, &pod.Ingress, p, p.Src)
		v.Allowed = v.Allowed && v.Ingress.Allowed
	}
	return v
}

func (m *Model) podByIP(a netip.Addr) *PodPolicy {
	a = a.Unmap()
	for i := range m.Pods {
		for _, ip := range m.Pods[i].IPs {
			if ip == a {
				return &m.Pods[i]
			}
		}
	}
	return nil
}

func (m *Model) evalDirection(pod *PodPolicy, d *Direction, p Packet, peer netip.Addr) *DirectionVerdict {
	dv := &DirectionVerdict{Pod: pod.Key()}
	if !d.Isolated {
		dv.Allowed, dv.Reason = true, VerdictNotIsolated
		return dv
	}
	for _, r := range d.Rules {
		if m.peerMatches(r, peer.Unmap()) && m.portsMatch(r.Ports, p) {
			dv.Rules = append(dv.Rules, RuleRef{Policy: r.Policy, Index: r.Index})
		}
	}
	if len(dv.Rules) > 0 {
		dv.Allowed, dv.Reason = true, VerdictAllowedByRule
		return dv
	}
	dv.Reason, dv.Policies = VerdictDefaultDeny, d.Policies
	return dv
}

func (m *Model) peerMatches(r Rule, a netip.Addr) bool {
	switch r.Peer {
	case PeerAny:
		return true
	case PeerSelector:
		for _, s := range m.SelectorSets {
			if s.Name == r.Set {
				for _, mem := range s.Members {
					if mem == a {
						return true
					}
				}
				return false
			}
		}
	case PeerBlock:
		for _, b := range m.BlockSets {
			if b.Name == r.Set {
				for _, rg := range b.Ranges {
					if rg.From.Compare(a) <= 0 && a.Compare(rg.To) <= 0 {
						return true
					}
				}
				return false
			}
		}
	}
	return false
}

func (m *Model) portsMatch(ports []PortMatch, p Packet) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pm := range ports {
		if pm.Protocol != p.Protocol {
			continue
		}
		if pm.PortSet == "" {
			if pm.From <= p.DstPort && p.DstPort <= pm.To {
				return true
			}
			continue
		}
		for _, s := range m.PortSets {
			if s.Name != pm.PortSet {
				continue
			}
			for _, e := range s.Members {
				if e.Addr == p.Dst.Unmap() && e.Port == p.DstPort {
					return true
				}
			}
		}
	}
	return false
}
