package policy

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Snapshot is everything the compiler reads: the full API state relevant to
// policy and the node whose half of the enforcement is being compiled
// (ingress of its pods, egress of its pods).
type Snapshot struct {
	Policies   []*networkingv1.NetworkPolicy
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
	Node       string
}

// Model is the backend-neutral desired state of one node's policy
// enforcement. Every slice is sorted, so two models compiled from equal
// snapshots are deeply equal and String renders them byte for byte alike.
type Model struct {
	Node string
	// SelectorSets holds one set per distinct peer selector in the whole
	// cluster's policies, whichever node the policy's targets run on, because
	// egress rules of local pods name peers anywhere.
	SelectorSets []SelectorSet
	// BlockSets holds one interval set per distinct ipBlock (cidr + excepts).
	BlockSets []BlockSet
	// PortSets holds one (pod IP . port) set per named port used by an egress
	// rule of a local pod: see PortMatch.
	PortSets []PortSet
	// Pods are the local, policy-subject pods (on Node, not host network,
	// with at least one IP), sorted by namespace/name.
	Pods []PodPolicy
}

// SelectorSet is the IPs of the pods a peer selector matches.
type SelectorSet struct {
	Name string // "sel-" + 16 hex digits of the canonical selector's hash
	// Selector is the canonical form, e.g. `ns=prod pod=app=web` for a
	// podSelector alone or `nssel=team=a pod=` for namespaceSelector with an
	// empty podSelector; equal selectors in different policies are equal here.
	Selector string
	Members  []netip.Addr // sorted, unique; both families mixed
}

// BlockSet is an ipBlock as the sorted, non-overlapping address ranges of
// its CIDR minus its excepts, ready for an nftables interval set.
type BlockSet struct {
	Name   string // "cidr-" + 16 hex digits of the canonical block's hash
	CIDR   netip.Prefix
	Except []netip.Prefix // sorted
	Ranges []Range
}

// Range is an inclusive address range of one family.
type Range struct {
	From, To netip.Addr
}

// PortSet is, for one named port and protocol, every pod IP with the port
// number that name has on that pod. An egress rule with a named port matches
// `ip daddr . th dport @np-…` so one rule serves destinations that number the
// port differently, and pod churn only changes elements.
type PortSet struct {
	Name     string // "np-" + 16 hex digits of protocol/name's hash
	Protocol corev1.Protocol
	Port     string // the port name
	Members  []AddrPort
}

// AddrPort is one element of a PortSet.
type AddrPort struct {
	Addr netip.Addr
	Port uint16
}

// PodPolicy is the enforcement of one local pod.
type PodPolicy struct {
	Namespace, Name string
	IPs             []netip.Addr // sorted
	Ingress, Egress Direction
}

// Key is namespace/name.
func (p *PodPolicy) Key() string { return p.Namespace + "/" + p.Name }

// Direction is one direction of a pod's enforcement. A pod not Isolated in
// a direction is not restricted in it (Rules is then empty). An isolated pod
// accepts only what one of Rules allows: default deny, allows unioned.
type Direction struct {
	Isolated bool
	// Policies are the policies that select the pod for this direction,
	// sorted; they are the ones a default-deny drop is counted against.
	Policies []string
	Rules    []Rule
}

// PeerKind says what a rule's peer matches.
type PeerKind int

const (
	// PeerAny matches every address (a rule with no from/to).
	PeerAny PeerKind = iota
	// PeerSelector matches the members of SelectorSets[Set].
	PeerSelector
	// PeerBlock matches the ranges of BlockSets[Set].
	PeerBlock
)

func (k PeerKind) String() string {
	switch k {
	case PeerAny:
		return "any"
	case PeerSelector:
		return "selector"
	case PeerBlock:
		return "block"
	}
	return fmt.Sprintf("PeerKind(%d)", int(k))
}

// Rule allows traffic from (ingress) or to (egress) Peer on Ports.
type Rule struct {
	// Policy is the namespace/name of the policy the rule came from and Index
	// the rule's index in that policy's ingress or egress list, so a counter
	// or a trace can name "which policy decided".
	Policy string
	Index  int
	Peer   PeerKind
	Set    string // the set's name for PeerSelector and PeerBlock
	// Ports is empty for all ports and protocols; otherwise the packet must
	// match one entry. A rule whose ports all failed to resolve (a named port
	// the target pod lacks) is left out rather than kept with empty Ports.
	Ports []PortMatch
}

// PortMatch matches a protocol and either a port range (From..To inclusive;
// 0..65535 when the policy gave a protocol only) or, for an egress named
// port, membership of (destination IP . destination port) in PortSet.
type PortMatch struct {
	Protocol corev1.Protocol
	From, To uint16
	PortSet  string
}

// Problem is a policy that could not be compiled. The pods it selects are
// isolated in its directions with no allow rules from it (fail closed).
type Problem struct {
	Policy string // namespace/name
	Reason string // stable code, one of the Reason* constants
	Detail string
}

func (p Problem) String() string {
	return fmt.Sprintf("%s: %s: %s", p.Policy, p.Reason, p.Detail)
}

// Reasons a policy cannot be compiled.
const (
	ReasonInvalidPodSelector = "invalidPodSelector"
	ReasonInvalidPeer        = "invalidPeer"
	ReasonInvalidSelector    = "invalidSelector"
	ReasonInvalidIPBlock     = "invalidIPBlock"
	ReasonInvalidPort        = "invalidPort"
	ReasonInvalidPolicyType  = "invalidPolicyType"
)

// String renders the model as sorted text, one object per line, meant for
// golden files and for diffing two models.
func (m *Model) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "node %s\n", m.Node)
	for _, s := range m.SelectorSets {
		fmt.Fprintf(&b, "set %s %q {%s}\n", s.Name, s.Selector, joinAddrs(s.Members))
	}
	for _, s := range m.BlockSets {
		var ex []string
		for _, e := range s.Except {
			ex = append(ex, e.String())
		}
		var rs []string
		for _, r := range s.Ranges {
			rs = append(rs, r.From.String()+"-"+r.To.String())
		}
		fmt.Fprintf(&b, "block %s %s except [%s] {%s}\n", s.Name, s.CIDR, strings.Join(ex, " "), strings.Join(rs, ", "))
	}
	for _, s := range m.PortSets {
		var es []string
		for _, e := range s.Members {
			es = append(es, netip.AddrPortFrom(e.Addr, e.Port).String())
		}
		fmt.Fprintf(&b, "portset %s %s/%s {%s}\n", s.Name, s.Protocol, s.Port, strings.Join(es, ", "))
	}
	for i := range m.Pods {
		p := &m.Pods[i]
		fmt.Fprintf(&b, "pod %s {%s}\n", p.Key(), joinAddrs(p.IPs))
		writeDirection(&b, "ingress", &p.Ingress)
		writeDirection(&b, "egress", &p.Egress)
	}
	return b.String()
}

func writeDirection(b *strings.Builder, name string, d *Direction) {
	if !d.Isolated {
		return
	}
	fmt.Fprintf(b, "  %s isolated by [%s]\n", name, strings.Join(d.Policies, " "))
	for _, r := range d.Rules {
		peer := r.Peer.String()
		if r.Set != "" {
			peer = r.Set
		}
		fmt.Fprintf(b, "    allow %s#%d peer %s ports %s\n", r.Policy, r.Index, peer, formatPorts(r.Ports))
	}
}

func formatPorts(ps []PortMatch) string {
	if len(ps) == 0 {
		return "all"
	}
	var out []string
	for _, p := range ps {
		switch {
		case p.PortSet != "":
			out = append(out, fmt.Sprintf("%s@%s", p.Protocol, p.PortSet))
		case p.From == p.To:
			out = append(out, fmt.Sprintf("%s/%d", p.Protocol, p.From))
		default:
			out = append(out, fmt.Sprintf("%s/%d-%d", p.Protocol, p.From, p.To))
		}
	}
	return strings.Join(out, ",")
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
