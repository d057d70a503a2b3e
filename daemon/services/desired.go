package services

import (
	"cmp"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Reason is a stable code explaining a decision; logs, metrics, events and
// the API carry it verbatim, so values never change meaning.
type Reason string

const (
	// ReasonNoEndpoints: a Service port has no ready or serving endpoint;
	// its frontends reject.
	ReasonNoEndpoints Reason = "noEndpoints"
	// ReasonNoLocalEndpoints: a Local traffic policy finds no usable endpoint
	// on this node while others exist; the target drops.
	ReasonNoLocalEndpoints Reason = "noLocalEndpoints"
	// ReasonTerminatingFallback: no ready endpoint is left in a target, so it
	// uses serving-but-terminating ones.
	ReasonTerminatingFallback Reason = "terminatingFallback"
	// ReasonHeadless: ClusterIP None; DNS serves it, no frontend.
	ReasonHeadless Reason = "headless"
	// ReasonExternalName: a DNS alias; no frontend.
	ReasonExternalName Reason = "externalName"
	// ReasonNodePortAddressFiltered: a node address outside
	// Config.NodePortAddresses gets no NodePorts.
	ReasonNodePortAddressFiltered Reason = "nodePortAddressFiltered"
	// ReasonNoClusterIP: a non-headless Service without a ClusterIP yet.
	ReasonNoClusterIP Reason = "noClusterIP"
	// ReasonInvalidIP: an address in the Service or a slice does not parse.
	ReasonInvalidIP Reason = "invalidIP"
	// ReasonIPFamilyMismatch: an externalIP or load balancer IP in a family
	// the Service has no ClusterIP in (kube-proxy ignores those too).
	ReasonIPFamilyMismatch Reason = "ipFamilyMismatch"
	// ReasonLoadBalancerIPModeProxy: ingress ipMode Proxy means the load
	// balancer proxies to the node; the IP must not be captured locally.
	ReasonLoadBalancerIPModeProxy Reason = "loadBalancerIPModeProxy"
	// ReasonUnsupportedProtocol: a Service port protocol other than
	// TCP, UDP or SCTP.
	ReasonUnsupportedProtocol Reason = "unsupportedProtocol"
	// ReasonFrontendConflict: two Services claim the same address . protocol
	// . port; the first by namespace/name keeps it.
	ReasonFrontendConflict Reason = "frontendConflict"
	// ReasonDuplicatePort: a second Service port with the same name and
	// protocol (API validation forbids it; the first one is kept).
	ReasonDuplicatePort Reason = "duplicatePort"
	// ReasonUnsupportedAddressType: an FQDN EndpointSlice.
	ReasonUnsupportedAddressType Reason = "unsupportedAddressType"
)

// Problem is one decision worth reporting: something not programmed, or
// programmed other than the plain way.
type Problem struct {
	// Service is "namespace/name"; empty for node-level decisions.
	Service string
	// Port is the ServicePortKey or address the decision is about, if any.
	Port   string
	Reason Reason
	Detail string
}

func (p Problem) String() string {
	s := string(p.Reason)
	if p.Service != "" {
		s += " " + p.Service
	}
	if p.Port != "" {
		s += " " + p.Port
	}
	if p.Detail != "" {
		s += ": " + p.Detail
	}
	return s
}

// Desired computes the Service load-balancing state for one node. It is
// pure: the result depends only on s, and the inputs are not modified.
func Desired(s Snapshot) (*Model, []Problem) {
	return NewCompiler().Desired(s)
}

// Compiler is Desired with memory: a Service whose object, EndpointSlices
// (compared by pointer), node and config are the ones of the previous call
// reuses its compiled ports and problems instead of compiling them again.
// It relies on what informer caches guarantee: an object is replaced, never
// modified in place. Services that lost a frontend conflict are always
// compiled again, since the outcome depends on the others. Its results
// equal Desired's. Not safe for concurrent use: one sync loop owns it.
type Compiler struct {
	node    Node
	config  Config
	entries map[string]*compiled
	gen     uint64
}

type compiled struct {
	gen      uint64
	svc      *corev1.Service
	slices   []*discoveryv1.EndpointSlice
	out      Service
	ok       bool
	problems []Problem
	claims   []frontendKey
}

// NewCompiler returns a Compiler with nothing remembered.
func NewCompiler() *Compiler { return &Compiler{entries: map[string]*compiled{}} }

// Desired computes the model for s, as the package function does.
func (cc *Compiler) Desired(s Snapshot) (*Model, []Problem) {
	if !reflect.DeepEqual(cc.node, s.Node) || !reflect.DeepEqual(cc.config, s.Config) {
		clear(cc.entries)
		cc.node, cc.config = cloneNode(s.Node), cloneConfig(s.Config)
	}
	cc.gen++
	c := compiler{snap: s, slicesBySvc: map[string][]*discoveryv1.EndpointSlice{}, memo: cc}
	m, ps := c.run()
	for id, e := range cc.entries {
		if e.gen != cc.gen {
			delete(cc.entries, id)
		}
	}
	return m, ps
}

func cloneNode(n Node) Node {
	n.Addresses = slices.Clone(n.Addresses)
	n.ClusterCIDRs = slices.Clone(n.ClusterCIDRs)
	return n
}

func cloneConfig(c Config) Config {
	c.NodePortAddresses = slices.Clone(c.NodePortAddresses)
	return c
}

type compiler struct {
	snap        Snapshot
	slicesBySvc map[string][]*discoveryv1.EndpointSlice
	problems    []Problem
	// claimed tracks frontend keys already taken, for conflicts; claims
	// lists them in order, so a Service's share can be remembered.
	claimed map[frontendKey]string
	claims  []frontendKey
	memo    *Compiler
}

// cachedService is service, reusing the memo's result when the Service and
// its slices are the objects it was compiled from and its frontends are
// still free.
func (c *compiler) cachedService(m *Model, svc *corev1.Service) (Service, bool) {
	id := svc.Namespace + "/" + svc.Name
	sls := c.slicesBySvc[id]
	if e := c.memo.entries[id]; e != nil && e.svc == svc && slices.Equal(e.slices, sls) &&
		!slices.ContainsFunc(e.claims, func(k frontendKey) bool { _, taken := c.claimed[k]; return taken }) {
		for _, k := range e.claims {
			c.claimed[k] = id
		}
		c.claims = append(c.claims, e.claims...)
		c.problems = append(c.problems, e.problems...)
		e.gen = c.memo.gen
		return e.out, e.ok
	}
	p0, k0 := len(c.problems), len(c.claims)
	out, ok := c.service(m, svc)
	problems := c.problems[p0:]
	if slices.ContainsFunc(problems, func(p Problem) bool { return p.Reason == ReasonFrontendConflict }) {
		delete(c.memo.entries, id)
		return out, ok
	}
	c.memo.entries[id] = &compiled{
		gen: c.memo.gen, svc: svc, slices: slices.Clone(sls), out: out, ok: ok,
		problems: slices.Clone(problems), claims: slices.Clone(c.claims[k0:]),
	}
	return out, ok
}

type frontendKey struct {
	addr  netip.Addr
	proto Protocol
	port  uint16
}

func (c *compiler) problem(svc, port string, r Reason, format string, args ...any) {
	c.problems = append(c.problems, Problem{Service: svc, Port: port, Reason: r, Detail: fmt.Sprintf(format, args...)})
}

func (c *compiler) run() (*Model, []Problem) {
	cfg, node := c.snap.Config, c.snap.Node
	m := &Model{MasqueradeAll: cfg.MasqueradeAll}
	m.ClusterCIDRs = sortedPrefixes(node.ClusterCIDRs)
	if cfg.NATOutgoing {
		m.NATOutgoing = m.ClusterCIDRs
	}
	for _, a := range sortedAddrs(node.Addresses) {
		switch {
		case a.IsLoopback() || a.IsUnspecified() || a.IsMulticast():
			// kube-proxy's nftables mode does not serve NodePorts on
			// 127.0.0.1 either: DNAT of loopback traffic to a pod needs
			// route_localnet, which opens the node's loopback services.
			c.problem("", a.String(), ReasonNodePortAddressFiltered, "not a unicast address of the node's links")
		case len(cfg.NodePortAddresses) == 0 || slices.ContainsFunc(cfg.NodePortAddresses, func(p netip.Prefix) bool { return p.Contains(a) }):
			m.NodePortAddresses = append(m.NodePortAddresses, a)
		default:
			c.problem("", a.String(), ReasonNodePortAddressFiltered, "outside nodePortAddresses")
		}
	}

	for _, sl := range c.snap.EndpointSlices {
		if sl == nil {
			continue
		}
		name := sl.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			continue
		}
		id := sl.Namespace + "/" + name
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			c.problem(id, sl.Name, ReasonUnsupportedAddressType, "address type %q", sl.AddressType)
			continue
		}
		c.slicesBySvc[id] = append(c.slicesBySvc[id], sl)
	}
	// Slice order decides which duplicate wins when conditions tie, so fix it.
	for _, ss := range c.slicesBySvc {
		slices.SortFunc(ss, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	}

	svcs := slices.DeleteFunc(slices.Clone(c.snap.Services), func(s *corev1.Service) bool { return s == nil })
	slices.SortStableFunc(svcs, func(a, b *corev1.Service) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	svcs = slices.CompactFunc(svcs, func(a, b *corev1.Service) bool { return a.Namespace == b.Namespace && a.Name == b.Name })
	c.claimed = map[frontendKey]string{}
	for _, svc := range svcs {
		if out, ok := c.cachedService(m, svc); ok {
			m.Services = append(m.Services, out)
		}
	}
	slices.SortFunc(c.problems, func(a, b Problem) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Port, b.Port),
			strings.Compare(string(a.Reason), string(b.Reason)), strings.Compare(a.Detail, b.Detail))
	})
	// A bad endpoint address is seen once per Service port; say it once.
	return m, slices.Compact(c.problems)
}

func (c *compiler) service(m *Model, svc *corev1.Service) (Service, bool) {
	id := svc.Namespace + "/" + svc.Name
	out := Service{Namespace: svc.Namespace, Name: svc.Name}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		c.problem(id, "", ReasonExternalName, "type ExternalName")
		return out, false
	}
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 && svc.Spec.ClusterIP != "" {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	if len(clusterIPs) > 0 && clusterIPs[0] == corev1.ClusterIPNone {
		c.problem(id, "", ReasonHeadless, "clusterIP None")
		return out, false
	}
	var vips []netip.Addr
	for _, s := range clusterIPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			c.problem(id, s, ReasonInvalidIP, "clusterIP: %v", err)
			continue
		}
		vips = append(vips, a.Unmap())
	}
	if len(vips) == 0 {
		c.problem(id, "", ReasonNoClusterIP, "no usable clusterIP")
		return out, false
	}
	families := map[Family]netip.Addr{}
	for _, a := range vips {
		if _, dup := families[familyOf(a)]; !dup {
			families[familyOf(a)] = a
		}
	}

	external := c.externalAddrs(id, svc, families)
	etpLocal := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	itpLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	var aff *Affinity
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		aff = &Affinity{TimeoutSeconds: corev1.DefaultClientIPServiceAffinitySeconds}
		if cfg := svc.Spec.SessionAffinityConfig; cfg != nil && cfg.ClientIP != nil && cfg.ClientIP.TimeoutSeconds != nil {
			aff.TimeoutSeconds = *cfg.ClientIP.TimeoutSeconds
		}
	}
	hasNodePorts := svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer

	localReady := map[netip.Addr]bool{}
	type portID struct {
		name  string
		proto Protocol
	}
	seenPorts := map[portID]bool{}
	for _, sp := range svc.Spec.Ports {
		proto, ok := protocolOf(sp.Protocol)
		if !ok {
			c.problem(id, sp.Name, ReasonUnsupportedProtocol, "protocol %q", sp.Protocol)
			continue
		}
		if seenPorts[portID{sp.Name, proto}] {
			c.problem(id, sp.Name, ReasonDuplicatePort, "second %s port named %q", proto, sp.Name)
			continue
		}
		seenPorts[portID{sp.Name, proto}] = true
		for _, fam := range []Family{IPv4, IPv6} {
			if _, ok := families[fam]; !ok {
				continue
			}
			p := ServicePort{
				Key:      ServicePortKey(fmt.Sprintf("%s:%s/%s/%s", id, sp.Name, proto, fam)),
				Name:     sp.Name,
				Protocol: proto,
				Family:   fam,
				Port:     uint16(sp.Port),
				Affinity: aff,
			}
			if hasNodePorts {
				p.NodePort = uint16(sp.NodePort)
			}
			eps := c.endpoints(id, sp.Name, sp.Protocol, fam)
			for _, e := range eps {
				if e.Local && e.Ready {
					localReady[e.Addr] = true
				}
			}
			c.port(m, id, &p, vips, external, eps, itpLocal, etpLocal)
			if len(p.Frontends) > 0 {
				out.Ports = append(out.Ports, p)
			}
		}
	}
	if etpLocal && svc.Spec.Type == corev1.ServiceTypeLoadBalancer && svc.Spec.HealthCheckNodePort != 0 {
		out.HealthCheck = &HealthCheck{NodePort: uint16(svc.Spec.HealthCheckNodePort), LocalEndpoints: len(localReady)}
	}
	return out, len(out.Ports) > 0 || out.HealthCheck != nil
}

type extAddr struct {
	kind FrontendKind
	addr netip.Addr
}

// externalAddrs collects externalIPs and load balancer ingress IPs in the
// Service's families.
func (c *compiler) externalAddrs(id string, svc *corev1.Service, families map[Family]netip.Addr) []extAddr {
	var out []extAddr
	add := func(kind FrontendKind, s string) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			c.problem(id, s, ReasonInvalidIP, "%s: %v", kind, err)
			return
		}
		a = a.Unmap()
		if _, ok := families[familyOf(a)]; !ok {
			c.problem(id, a.String(), ReasonIPFamilyMismatch, "%s in a family without clusterIP", kind)
			return
		}
		out = append(out, extAddr{kind, a})
	}
	for _, s := range svc.Spec.ExternalIPs {
		add(ExternalIP, s)
	}
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IP == "" {
				continue // hostname-only ingress: nothing to capture
			}
			if in.IPMode != nil && *in.IPMode == corev1.LoadBalancerIPModeProxy {
				c.problem(id, in.IP, ReasonLoadBalancerIPModeProxy, "load balancer proxies to nodes")
				continue
			}
			add(LoadBalancerIP, in.IP)
		}
	}
	return out
}

func protocolOf(p corev1.Protocol) (Protocol, bool) {
	switch p {
	case corev1.ProtocolTCP, "":
		return TCP, true
	case corev1.ProtocolUDP:
		return UDP, true
	case corev1.ProtocolSCTP:
		return SCTP, true
	}
	return 0, false
}

// endpoints merges every slice of the Service in family fam into one list
// for the Service port named portName, sorted by address and port.
func (c *compiler) endpoints(id, portName string, proto corev1.Protocol, fam Family) []Endpoint {
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	byAddr := map[netip.AddrPort]Endpoint{}
	for _, sl := range c.slicesBySvc[id] {
		if (fam == IPv4) != (sl.AddressType == discoveryv1.AddressTypeIPv4) {
			continue
		}
		var port *int32
		for _, p := range sl.Ports {
			name, pp := "", corev1.ProtocolTCP
			if p.Name != nil {
				name = *p.Name
			}
			if p.Protocol != nil {
				pp = *p.Protocol
			}
			if name == portName && pp == proto {
				port = p.Port
				break
			}
		}
		// A slice without the port, or with its number unset, serves none of
		// this Service port (a targetPort nobody exposes).
		if port == nil || *port <= 0 || *port > 65535 {
			continue
		}
		for _, ep := range sl.Endpoints {
			// kube-proxy uses the first address only; the API says all
			// addresses of an endpoint are fungible.
			if len(ep.Addresses) == 0 {
				continue
			}
			a, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil {
				c.problem(id, ep.Addresses[0], ReasonInvalidIP, "endpoint in slice %s: %v", sl.Name, err)
				continue
			}
			a = a.Unmap()
			if familyOf(a) != fam {
				continue
			}
			e := Endpoint{Addr: a, Port: uint16(*port)}
			if ep.NodeName != nil {
				e.NodeName = *ep.NodeName
				e.Local = e.NodeName == c.snap.Node.Name && e.NodeName != ""
			}
			cond := ep.Conditions
			// The API's defaults, read as kube-proxy's EndpointSliceCache
			// does: ready and serving unless said otherwise.
			e.Ready = cond.Ready == nil || *cond.Ready
			e.Serving = cond.Serving == nil || *cond.Serving
			e.Terminating = cond.Terminating != nil && *cond.Terminating
			k := e.AddrPort()
			// The same endpoint can appear in two slices while the controller
			// moves it; keep the better-conditioned copy, then a local one
			// (as kube-proxy), else the first by slice name.
			if old, dup := byAddr[k]; !dup || rank(e) > rank(old) || (rank(e) == rank(old) && e.Local && !old.Local) {
				byAddr[k] = e
			}
		}
	}
	out := make([]Endpoint, 0, len(byAddr))
	for _, e := range byAddr {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	return out
}

func rank(e Endpoint) int {
	switch {
	case e.Ready:
		return 2
	case e.Serving && e.Terminating:
		return 1
	}
	return 0
}

// pick applies kube-proxy's endpoint choice: ready endpoints; if none,
// serving-but-terminating ones (KEP-1669), within the scope's subset.
func pick(eps []Endpoint, local bool) (out []Endpoint, fallback bool) {
	for _, e := range eps {
		if e.Ready && (!local || e.Local) {
			out = append(out, e)
		}
	}
	if len(out) > 0 {
		return out, false
	}
	for _, e := range eps {
		if e.Serving && e.Terminating && (!local || e.Local) {
			out = append(out, e)
		}
	}
	return out, len(out) > 0
}

// port fills p's frontends and targets.
func (c *compiler) port(m *Model, id string, p *ServicePort, vips []netip.Addr, external []extAddr, eps []Endpoint, itpLocal, etpLocal bool) {
	clusterEps, clusterFB := pick(eps, false)
	localEps, localFB := pick(eps, true)
	// As kube-proxy: reject when the port has no usable endpoint anywhere,
	// drop when only a Local policy leaves it without one.
	usable := len(clusterEps) > 0 || len(localEps) > 0

	targets := map[Scope]*Target{}
	target := func(s Scope) TargetKey {
		if t, ok := targets[s]; ok {
			return t.Key
		}
		t := &Target{Key: TargetKey(string(p.Key) + "/" + s.String()), Scope: s, Affinity: p.Affinity}
		chosen, fb := clusterEps, clusterFB
		if s == ScopeLocal {
			chosen, fb = localEps, localFB
		}
		switch {
		case !usable:
			t.Verdict, t.Reason = VerdictReject, ReasonNoEndpoints
		case len(chosen) == 0:
			t.Verdict, t.Reason = VerdictDrop, ReasonNoLocalEndpoints
			c.problem(id, string(t.Key), ReasonNoLocalEndpoints, "dropping")
		default:
			t.Endpoints = chosen
			if fb {
				t.Reason = ReasonTerminatingFallback
				c.problem(id, string(t.Key), ReasonTerminatingFallback, "%d serving terminating endpoints", len(chosen))
			}
		}
		targets[s] = t
		return t.Key
	}

	masq := func(m Masquerade) Masquerade {
		if c.snap.Config.MasqueradeAll {
			return MasqueradeAlways
		}
		return m
	}
	// claim comes before a frontend's targets are made, so that a frontend
	// lost to a conflict leaves no target behind.
	claim := func(kind FrontendKind, a netip.Addr, port uint16) bool {
		k := frontendKey{a, p.Protocol, port}
		if owner, taken := c.claimed[k]; taken {
			c.problem(id, netip.AddrPortFrom(a, port).String(), ReasonFrontendConflict, "%s %s already used by %s", kind, p.Protocol, owner)
			return false
		}
		c.claimed[k] = id
		c.claims = append(c.claims, k)
		return true
	}

	for _, a := range vips {
		if familyOf(a) != p.Family {
			continue
		}
		scope, mq := ScopeCluster, MasqueradeNever
		if itpLocal {
			scope = ScopeLocal
		}
		if len(c.snap.Node.ClusterCIDRs) > 0 {
			mq = MasqueradeOffCluster
		}
		if !claim(ClusterIP, a, p.Port) {
			continue
		}
		p.Frontends = append(p.Frontends, Frontend{Kind: ClusterIP, Addr: a, Protocol: p.Protocol, Port: p.Port, Target: target(scope), Masquerade: masq(mq)})
	}
	ext := func(kind FrontendKind, a netip.Addr, port uint16) {
		if !claim(kind, a, port) {
			return
		}
		f := Frontend{Kind: kind, Addr: a, Protocol: p.Protocol, Port: port}
		if etpLocal {
			f.Target = target(ScopeLocal)
			f.PodTarget = target(ScopeCluster)
			f.Masquerade = masq(MasqueradeNodeSource)
		} else {
			f.Target = target(ScopeCluster)
			f.Masquerade = masq(MasqueradeAlways)
		}
		p.Frontends = append(p.Frontends, f)
	}
	for _, e := range external {
		if familyOf(e.addr) == p.Family {
			ext(e.kind, e.addr, p.Port)
		}
	}
	if p.NodePort != 0 {
		for _, a := range m.NodePortAddresses {
			if familyOf(a) == p.Family {
				ext(NodePort, a, p.NodePort)
			}
		}
	}
	slices.SortFunc(p.Frontends, func(a, b Frontend) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	if !usable && len(targets) > 0 {
		c.problem(id, string(p.Key), ReasonNoEndpoints, "rejecting")
	}
	for _, s := range []Scope{ScopeCluster, ScopeLocal} {
		if t, ok := targets[s]; ok {
			p.Targets = append(p.Targets, *t)
		}
	}
}

func sortedAddrs(in []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(in))
	for _, a := range in {
		if a.IsValid() {
			out = append(out, a.Unmap())
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out)
}

func sortedPrefixes(in []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if p.IsValid() {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	return slices.Compact(out)
}
