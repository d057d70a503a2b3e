package policy

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Compile computes node s.Node's desired policy enforcement. It never fails
// as a whole: a policy that cannot be compiled is reported as a Problem and
// isolates the pods it selects without allowing anything (fail closed), and
// every other policy compiles as if it were absent.
func Compile(s Snapshot) (*Model, []Problem) {
	return NewCompiler().Compile(s)
}

// Compiler is Compile with memory: it keeps each label selector it parsed,
// keyed by the selector's address, for as long as the policy holding it is
// in the snapshots. That relies on what informer caches guarantee: a
// policy is replaced, never modified in place. Pod churn then recomputes set
// members and pod rules but parses no selector. Results equal Compile's.
// Not safe for concurrent use: one sync loop owns it.
type Compiler struct {
	sels map[*metav1.LabelSelector]*parsedSelector
	gen  uint64
}

type parsedSelector struct {
	gen uint64
	sel labels.Selector
	str string
	err error
}

// NewCompiler returns a Compiler with nothing remembered.
func NewCompiler() *Compiler {
	return &Compiler{sels: map[*metav1.LabelSelector]*parsedSelector{}}
}

// parse is metav1.LabelSelectorAsSelector with the memo, plus the
// selector's canonical text.
func (cc *Compiler) parse(ls *metav1.LabelSelector) (labels.Selector, string, error) {
	if p := cc.sels[ls]; p != nil {
		p.gen = cc.gen
		return p.sel, p.str, p.err
	}
	p := &parsedSelector{gen: cc.gen}
	p.sel, p.err = metav1.LabelSelectorAsSelector(ls)
	if p.err == nil {
		p.str = p.sel.String()
	}
	cc.sels[ls] = p
	return p.sel, p.str, p.err
}

// Compile computes the model for s, as the package function does.
func (cc *Compiler) Compile(s Snapshot) (*Model, []Problem) {
	cc.gen++
	m, ps := cc.compile(s)
	for k, p := range cc.sels {
		if p.gen != cc.gen {
			delete(cc.sels, k)
		}
	}
	return m, ps
}

func (cc *Compiler) compile(s Snapshot) (*Model, []Problem) {
	c := &compiler{
		memo:     cc,
		snap:     s,
		nsLabels: make(map[string]labels.Set, len(s.Namespaces)),
		selSets:  map[string]*SelectorSet{},
		blocks:   map[string]*BlockSet{},
		portSets: map[string]*PortSet{},
	}
	for _, ns := range s.Namespaces {
		c.nsLabels[ns.Name] = labels.Set(ns.Labels)
	}
	for _, p := range s.Pods {
		if ips := podIPs(p); len(ips) > 0 && !p.Spec.HostNetwork && podLive(p) {
			c.peers = append(c.peers, peerPod{pod: p, ips: ips})
		}
	}
	pols := slices.Clone(s.Policies)
	slices.SortFunc(pols, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	var problems []Problem
	for _, pol := range pols {
		cp, prob := c.compilePolicy(pol)
		if prob != nil {
			problems = append(problems, *prob)
		}
		c.policies = append(c.policies, cp)
	}
	// A pod is only selected by policies of its own namespace.
	c.byNS = map[string][]int{}
	for i, cp := range c.policies {
		c.byNS[cp.namespace] = append(c.byNS[cp.namespace], i)
	}

	m := &Model{Node: s.Node}
	for _, pp := range c.peers {
		if pp.pod.Spec.NodeName != s.Node {
			continue
		}
		m.Pods = append(m.Pods, c.podPolicy(pp))
	}
	slices.SortFunc(m.Pods, func(a, b PodPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	// Only sets some local pod's rule refers to are part of the model: the
	// table should not carry every selector of every node's policies.
	used := map[string]bool{}
	for _, p := range m.Pods {
		for _, r := range slices.Concat(p.Ingress.Rules, p.Egress.Rules) {
			used[r.Set] = true
			for _, pm := range r.Ports {
				used[pm.PortSet] = true
			}
		}
	}
	for name, s := range c.selSets {
		if used[name] {
			m.SelectorSets = append(m.SelectorSets, *s)
		}
	}
	for name, s := range c.blocks {
		if used[name] {
			m.BlockSets = append(m.BlockSets, *s)
		}
	}
	for name, s := range c.portSets {
		if used[name] {
			m.PortSets = append(m.PortSets, *s)
		}
	}
	slices.SortFunc(m.SelectorSets, func(a, b SelectorSet) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(m.BlockSets, func(a, b BlockSet) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(m.PortSets, func(a, b PortSet) int { return cmp.Compare(a.Name, b.Name) })
	return m, problems
}

type compiler struct {
	memo     *Compiler
	snap     Snapshot
	byNS     map[string][]int // indexes into policies
	nsLabels map[string]labels.Set
	peers    []peerPod // pods that selectors can match: live, not host network, with IPs
	policies []compiledPolicy
	selSets  map[string]*SelectorSet
	blocks   map[string]*BlockSet
	portSets map[string]*PortSet
}

type peerPod struct {
	pod *corev1.Pod
	ips []netip.Addr
}

// compiledPolicy is a policy with its selectors parsed and its peers turned
// into sets; ports stay unresolved because named ingress ports depend on the
// target pod.
type compiledPolicy struct {
	key       string
	namespace string
	// selector is nil when the policy's own podSelector is invalid: then we
	// cannot tell which pods it means, so it isolates every pod of its
	// namespace (fail closed).
	selector          labels.Selector
	ingress, egress   bool
	failed            bool
	ingRules, egRules []compiledRule
}

type compiledRule struct {
	index int
	peers []Rule // Policy, Index, Peer, Set filled; Ports empty
	ports []networkingv1.NetworkPolicyPort
}

func (c *compiler) compilePolicy(pol *networkingv1.NetworkPolicy) (compiledPolicy, *Problem) {
	cp := compiledPolicy{key: pol.Namespace + "/" + pol.Name, namespace: pol.Namespace}
	problem := func(reason, format string, args ...any) (compiledPolicy, *Problem) {
		cp.failed = true
		cp.ingRules, cp.egRules = nil, nil
		return cp, &Problem{Policy: cp.key, Reason: reason, Detail: fmt.Sprintf(format, args...)}
	}

	// policyTypes defaulting as in the API: Ingress always, Egress when the
	// policy has egress rules. Decided before anything can fail so a broken
	// policy still isolates the directions it was meant for.
	if len(pol.Spec.PolicyTypes) == 0 {
		cp.ingress = true
		cp.egress = len(pol.Spec.Egress) > 0
	}
	var badType string
	for _, t := range pol.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			cp.ingress = true
		case networkingv1.PolicyTypeEgress:
			cp.egress = true
		default:
			badType = string(t)
		}
	}
	if badType != "" {
		// We cannot tell what an unknown type meant: isolate both directions.
		cp.ingress, cp.egress = true, true
	}
	sel, _, err := c.memo.parse(&pol.Spec.PodSelector)
	if err != nil {
		return problem(ReasonInvalidPodSelector, "spec.podSelector: %v", err)
	}
	cp.selector = sel
	if badType != "" {
		return problem(ReasonInvalidPolicyType, "unknown policy type %q", badType)
	}

	if cp.ingress {
		for i, r := range pol.Spec.Ingress {
			cr, prob := c.compileRule(cp.key, pol.Namespace, fmt.Sprintf("spec.ingress[%d]", i), i, r.From, r.Ports)
			if prob != nil {
				return problem(prob.Reason, "%s", prob.Detail)
			}
			cp.ingRules = append(cp.ingRules, cr)
		}
	}
	if cp.egress {
		for i, r := range pol.Spec.Egress {
			cr, prob := c.compileRule(cp.key, pol.Namespace, fmt.Sprintf("spec.egress[%d]", i), i, r.To, r.Ports)
			if prob != nil {
				return problem(prob.Reason, "%s", prob.Detail)
			}
			cp.egRules = append(cp.egRules, cr)
		}
	}
	return cp, nil
}

func (c *compiler) compileRule(key, namespace, path string, index int, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (compiledRule, *Problem) {
	cr := compiledRule{index: index, ports: ports}
	for j, pt := range ports {
		if err := validatePort(pt); err != nil {
			return cr, &Problem{Reason: ReasonInvalidPort, Detail: fmt.Sprintf("%s.ports[%d]: %v", path, j, err)}
		}
	}
	if len(peers) == 0 {
		cr.peers = []Rule{{Policy: key, Index: index, Peer: PeerAny}}
		return cr, nil
	}
	for j, peer := range peers {
		ppath := fmt.Sprintf("%s.peers[%d]", path, j)
		hasSel := peer.PodSelector != nil || peer.NamespaceSelector != nil
		switch {
		case peer.IPBlock != nil && hasSel:
			return cr, &Problem{Reason: ReasonInvalidPeer, Detail: ppath + ": ipBlock together with a selector"}
		case peer.IPBlock != nil:
			name, err := c.blockSet(peer.IPBlock)
			if err != nil {
				return cr, &Problem{Reason: ReasonInvalidIPBlock, Detail: fmt.Sprintf("%s.ipBlock: %v", ppath, err)}
			}
			cr.peers = append(cr.peers, Rule{Policy: key, Index: index, Peer: PeerBlock, Set: name})
		case hasSel:
			name, err := c.selectorSet(namespace, peer.NamespaceSelector, peer.PodSelector)
			if err != nil {
				return cr, &Problem{Reason: ReasonInvalidSelector, Detail: fmt.Sprintf("%s: %v", ppath, err)}
			}
			cr.peers = append(cr.peers, Rule{Policy: key, Index: index, Peer: PeerSelector, Set: name})
		default:
			return cr, &Problem{Reason: ReasonInvalidPeer, Detail: ppath + ": empty peer"}
		}
	}
	return cr, nil
}

func validatePort(pt networkingv1.NetworkPolicyPort) error {
	if _, err := protocolOf(pt); err != nil {
		return err
	}
	if pt.Port == nil {
		if pt.EndPort != nil {
			return fmt.Errorf("endPort without port")
		}
		return nil
	}
	if pt.Port.Type == intstr.String {
		if pt.Port.StrVal == "" {
			return fmt.Errorf("empty port name")
		}
		if pt.EndPort != nil {
			return fmt.Errorf("endPort with named port %q", pt.Port.StrVal)
		}
		return nil
	}
	if pt.Port.IntVal < 1 || pt.Port.IntVal > 65535 {
		return fmt.Errorf("port %d out of range", pt.Port.IntVal)
	}
	if pt.EndPort != nil && (*pt.EndPort < pt.Port.IntVal || *pt.EndPort > 65535) {
		return fmt.Errorf("endPort %d out of range for port %d", *pt.EndPort, pt.Port.IntVal)
	}
	return nil
}

func protocolOf(pt networkingv1.NetworkPolicyPort) (corev1.Protocol, error) {
	if pt.Protocol == nil {
		return corev1.ProtocolTCP, nil
	}
	switch *pt.Protocol {
	case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		return *pt.Protocol, nil
	}
	return "", fmt.Errorf("unsupported protocol %q", *pt.Protocol)
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

// selectorSet returns the name of the set of pods a peer selects, creating
// it on first use. The key is canonical: labels.Selector.String sorts
// requirements and values, and a nil podSelector next to a
// namespaceSelector means every pod, the same as an empty one.
func (c *compiler) selectorSet(policyNS string, nsSel, podSel *metav1.LabelSelector) (string, error) {
	podS, podStr := labels.Everything(), labels.Everything().String()
	if podSel != nil {
		s, str, err := c.memo.parse(podSel)
		if err != nil {
			return "", fmt.Errorf("podSelector: %w", err)
		}
		podS, podStr = s, str
	}
	var nsS labels.Selector
	var key string
	if nsSel == nil {
		key = "ns=" + policyNS + " pod=" + podStr
	} else {
		s, str, err := c.memo.parse(nsSel)
		if err != nil {
			return "", fmt.Errorf("namespaceSelector: %w", err)
		}
		nsS = s
		key = "nssel=" + str + " pod=" + podStr
	}
	name := "sel-" + shortHash(key)
	if _, ok := c.selSets[name]; ok {
		return name, nil
	}
	set := &SelectorSet{Name: name, Selector: key}
	for _, pp := range c.peers {
		if nsS == nil {
			if pp.pod.Namespace != policyNS {
				continue
			}
		} else if !nsS.Matches(c.nsLabels[pp.pod.Namespace]) {
			continue
		}
		if podS.Matches(labels.Set(pp.pod.Labels)) {
			set.Members = append(set.Members, pp.ips...)
		}
	}
	set.Members = sortAddrs(set.Members)
	c.selSets[name] = set
	return name, nil
}

func (c *compiler) blockSet(b *networkingv1.IPBlock) (string, error) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return "", fmt.Errorf("cidr: %w", err)
	}
	cidr = cidr.Masked()
	var excepts []netip.Prefix
	for _, e := range b.Except {
		ex, err := netip.ParsePrefix(e)
		if err != nil {
			return "", fmt.Errorf("except: %w", err)
		}
		ex = ex.Masked()
		// The API requires a strict subset of cidr.
		if ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()) {
			return "", fmt.Errorf("except %s is not a strict subset of %s", ex, cidr)
		}
		excepts = append(excepts, ex)
	}
	slices.SortFunc(excepts, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	excepts = slices.Compact(excepts)
	parts := []string{cidr.String()}
	for _, e := range excepts {
		parts = append(parts, e.String())
	}
	name := "cidr-" + shortHash(strings.Join(parts, " "))
	if _, ok := c.blocks[name]; !ok {
		c.blocks[name] = &BlockSet{Name: name, CIDR: cidr, Except: excepts, Ranges: subtractRanges(cidr, excepts)}
	}
	return name, nil
}

// portSet returns the (pod IP . port) set of a named port, for egress.
func (c *compiler) portSet(proto corev1.Protocol, portName string) string {
	name := "np-" + shortHash(string(proto)+"/"+portName)
	if _, ok := c.portSets[name]; ok {
		return name
	}
	set := &PortSet{Name: name, Protocol: proto, Port: portName}
	for _, pp := range c.peers {
		if n, ok := namedPort(pp.pod, proto, portName); ok {
			for _, ip := range pp.ips {
				set.Members = append(set.Members, AddrPort{Addr: ip, Port: n})
			}
		}
	}
	slices.SortFunc(set.Members, func(a, b AddrPort) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	set.Members = slices.Compact(set.Members)
	c.portSets[name] = set
	return name
}

// namedPort resolves a port name on a pod: the container port with that name
// and protocol (protocol defaults to TCP in both places).
func namedPort(pod *corev1.Pod, proto corev1.Protocol, name string) (uint16, bool) {
	for _, ctr := range pod.Spec.Containers {
		for _, cport := range ctr.Ports {
			p := cport.Protocol
			if p == "" {
				p = corev1.ProtocolTCP
			}
			if cport.Name == name && p == proto && cport.ContainerPort > 0 && cport.ContainerPort <= 65535 {
				return uint16(cport.ContainerPort), true
			}
		}
	}
	return 0, false
}

func (c *compiler) podPolicy(pp peerPod) PodPolicy {
	p := PodPolicy{Namespace: pp.pod.Namespace, Name: pp.pod.Name, IPs: pp.ips}
	podLabels := labels.Set(pp.pod.Labels)
	for _, i := range c.byNS[pp.pod.Namespace] {
		cp := &c.policies[i]
		if cp.selector != nil && !cp.selector.Matches(podLabels) {
			continue
		}
		if cp.ingress {
			p.Ingress.Isolated = true
			p.Ingress.Policies = append(p.Ingress.Policies, cp.key)
			for _, cr := range cp.ingRules {
				p.Ingress.Rules = append(p.Ingress.Rules, c.resolve(cr, pp.pod, true)...)
			}
		}
		if cp.egress {
			p.Egress.Isolated = true
			p.Egress.Policies = append(p.Egress.Policies, cp.key)
			for _, cr := range cp.egRules {
				p.Egress.Rules = append(p.Egress.Rules, c.resolve(cr, pp.pod, false)...)
			}
		}
	}
	return p
}

// resolve turns a compiled rule into the target pod's rules: one per peer,
// with ports resolved. Ingress named ports resolve against the target pod's
// own containerPorts; egress named ports against each destination pod, via
// a PortSet. A rule whose every port fails to resolve allows nothing and is
// dropped.
func (c *compiler) resolve(cr compiledRule, target *corev1.Pod, ingress bool) []Rule {
	var ports []PortMatch
	for _, pt := range cr.ports {
		proto, _ := protocolOf(pt) // validated
		switch {
		case pt.Port == nil:
			ports = append(ports, PortMatch{Protocol: proto, From: 0, To: 65535})
		case pt.Port.Type == intstr.String && ingress:
			if n, ok := namedPort(target, proto, pt.Port.StrVal); ok {
				ports = append(ports, PortMatch{Protocol: proto, From: n, To: n})
			}
		case pt.Port.Type == intstr.String:
			ports = append(ports, PortMatch{Protocol: proto, PortSet: c.portSet(proto, pt.Port.StrVal)})
		default:
			to := pt.Port.IntVal
			if pt.EndPort != nil {
				to = *pt.EndPort
			}
			ports = append(ports, PortMatch{Protocol: proto, From: uint16(pt.Port.IntVal), To: uint16(to)})
		}
	}
	if len(cr.ports) > 0 && len(ports) == 0 {
		return nil
	}
	out := make([]Rule, len(cr.peers))
	for i, r := range cr.peers {
		r.Ports = ports
		out[i] = r
	}
	return out
}

// podIPs are a pod's addresses from status.podIPs, falling back to
// status.podIP for objects that only carry the legacy field.
func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return sortAddrs(out)
}

// podLive excludes finished pods: their IPs go back to IPAM and may already
// belong to another pod.
func podLive(p *corev1.Pod) bool {
	return p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

func sortAddrs(as []netip.Addr) []netip.Addr {
	slices.SortFunc(as, netip.Addr.Compare)
	return slices.Compact(as)
}
