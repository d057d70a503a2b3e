package services

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// bytesource hands out fuzz input a byte at a time, zeros once exhausted.
type bytesource struct{ b []byte }

func (s *bytesource) next() byte {
	if len(s.b) == 0 {
		return 0
	}
	c := s.b[0]
	s.b = s.b[1:]
	return c
}

func (s *bytesource) pick(n int) int { return int(s.next()) % n }
func (s *bytesource) bit() bool      { return s.next()&1 == 1 }

// optBool is nil, false or true: EndpointSlice conditions are tri-state.
func (s *bytesource) optBool() *bool {
	switch s.pick(3) {
	case 0:
		return nil
	case 1:
		return ptr(false)
	}
	return ptr(true)
}

// Small pools so that random inputs collide: shared external IPs, the same
// endpoint in several slices, port names that match and some that do not.
var (
	fzNamespaces = []string{"default", "other"}
	fzNames      = []string{"a", "b", "c"}
	fzClusterIPs = []string{"10.96.0.1", "10.96.0.2", "10.96.0.3", "fd00:96::1", "fd00:96::2", corev1.ClusterIPNone, "", "bogus"}
	fzExtIPs     = []string{"198.51.100.1", "198.51.100.2", "2001:db8::1", "10.96.0.1", "nope"}
	fzTypes      = []corev1.ServiceType{corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer, corev1.ServiceTypeExternalName}
	fzPortNames  = []string{"", "http", "dns"}
	fzProtocols  = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP, "", "ICMP"}
	fzPorts      = []int32{53, 80, 8080, 0, 70000}
	fzNodePorts  = []int32{0, 30000, 30001}
	fzEPAddrs    = []string{"10.244.1.1", "10.244.1.2", "10.244.2.1", "10.244.2.2", "fd10::1", "fd10::2", "junk", "::ffff:10.244.1.1"}
	fzNodes      = []string{thisNode, "node-b", ""}
	fzAddrTypes  = []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN}
)

func fuzzSnapshot(data []byte) Snapshot {
	s := &bytesource{b: data}
	snap := Snapshot{Node: testNode(), Config: DefaultConfig()}
	if s.bit() {
		snap.Config.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}
	}
	snap.Config.MasqueradeAll = s.next()%8 == 0
	if s.next()%8 == 0 {
		snap.Node.ClusterCIDRs = nil
	}
	for range s.pick(5) {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: fzNamespaces[s.pick(2)], Name: fzNames[s.pick(3)]}}
		svc.Spec.Type = fzTypes[s.pick(len(fzTypes))]
		for range 1 + s.pick(2) {
			svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, fzClusterIPs[s.pick(len(fzClusterIPs))])
		}
		svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
		for range s.pick(3) {
			svc.Spec.ExternalIPs = append(svc.Spec.ExternalIPs, fzExtIPs[s.pick(len(fzExtIPs))])
		}
		for range s.pick(3) {
			in := corev1.LoadBalancerIngress{IP: fzExtIPs[s.pick(len(fzExtIPs))]}
			if s.next()%4 == 0 {
				in.IPMode = ptr(corev1.LoadBalancerIPModeProxy)
			}
			svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, in)
		}
		for range 1 + s.pick(3) {
			svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
				Name: fzPortNames[s.pick(len(fzPortNames))], Protocol: fzProtocols[s.pick(len(fzProtocols))],
				Port: fzPorts[s.pick(3)], NodePort: fzNodePorts[s.pick(len(fzNodePorts))],
			})
		}
		if s.bit() {
			svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			svc.Spec.HealthCheckNodePort = 32000
		}
		if s.bit() {
			svc.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyLocal)
		}
		if s.bit() {
			svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		}
		snap.Services = append(snap.Services, svc)
	}
	for i := range s.pick(6) {
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: fzNamespaces[s.pick(2)], Name: "slice-" + string(rune('a'+i))},
			AddressType: fzAddrTypes[s.pick(len(fzAddrTypes))],
		}
		if name := s.pick(4); name < 3 {
			sl.Labels = map[string]string{discoveryv1.LabelServiceName: fzNames[name]}
		}
		for range s.pick(3) {
			p := discoveryv1.EndpointPort{}
			if s.bit() {
				p.Name = ptr(fzPortNames[s.pick(len(fzPortNames))])
			}
			if s.bit() {
				p.Protocol = ptr(fzProtocols[s.pick(3)])
			}
			if s.next()%8 != 0 {
				p.Port = ptr(fzPorts[s.pick(len(fzPorts))])
			}
			sl.Ports = append(sl.Ports, p)
		}
		for range s.pick(5) {
			e := discoveryv1.Endpoint{
				Conditions: discoveryv1.EndpointConditions{Ready: s.optBool(), Serving: s.optBool(), Terminating: s.optBool()},
			}
			for range s.pick(3) {
				e.Addresses = append(e.Addresses, fzEPAddrs[s.pick(len(fzEPAddrs))])
			}
			if n := s.pick(4); n < 3 {
				e.NodeName = ptr(fzNodes[n])
			}
			sl.Endpoints = append(sl.Endpoints, e)
		}
		snap.EndpointSlices = append(snap.EndpointSlices, sl)
	}
	return snap
}

func FuzzDesired(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x01\x01\x03\x00\x01\x00\x01\x02\x00\x01\x01\x01\x00\x00\x01\x01\x01\x01\x02\x00\x01\x00\x00\x01\x01\x01\x02\x02\x01"))
	f.Add([]byte("the quick brown fox jumps over the lazy dog 0123456789 Services and EndpointSlices"))
	f.Add(func() []byte {
		b := make([]byte, 512)
		for i := range b {
			b[i] = byte(i * 37)
		}
		return b
	}())
	f.Fuzz(func(t *testing.T, data []byte) {
		snap := fuzzSnapshot(data)
		m, ps := Desired(snap)
		checkInvariants(t, snap, m)
		checkLocalPolicies(t, snap, m)
		checkClusterIPsProgrammed(t, snap, m, ps)

		if st := StaleUDPFlows(m, m); len(st) != 0 {
			t.Errorf("stale flows against itself: %v", st)
		}
		if ch := ChangedServices(m, m); len(ch) != 0 {
			t.Errorf("changed against itself: %v", ch)
		}
		if ch := ChangedServices(nil, m); len(ch) != len(m.Services) {
			t.Errorf("from nothing %d changed, want %d", len(ch), len(m.Services))
		}

		m2, ps2 := Desired(fuzzSnapshot(data))
		if m.String() != m2.String() || !reflect.DeepEqual(ps, ps2) {
			t.Fatalf("not deterministic")
		}
		// A Compiler that compiled the same objects before answers from
		// memory, and must answer the same.
		cc := NewCompiler()
		cc.Desired(snap)
		if m4, ps4 := cc.Desired(snap); m.String() != m4.String() || !reflect.DeepEqual(ps, ps4) {
			t.Fatalf("Compiler from memory differs:\n%s\nwant:\n%s\nproblems %v, want %v", m4, m, ps4, ps)
		}
		rev := snap
		rev.Services, rev.EndpointSlices = slices.Clone(snap.Services), slices.Clone(snap.EndpointSlices)
		slices.Reverse(rev.Services)
		slices.Reverse(rev.EndpointSlices)
		// Duplicate Service names in one snapshot cannot happen in the API;
		// with them the first wins, so only compare when names are unique.
		if uniqueServices(snap.Services) && uniqueSliceNames(snap.EndpointSlices) {
			if m3, _ := Desired(rev); m3.String() != m.String() {
				t.Fatalf("depends on input order:\n%s\nvs\n%s", m, m3)
			}
		}
	})
}

func uniqueServices(svcs []*corev1.Service) bool {
	seen := map[string]bool{}
	for _, s := range svcs {
		k := s.Namespace + "/" + s.Name
		if seen[k] {
			return false
		}
		seen[k] = true
	}
	return true
}

func uniqueSliceNames(sls []*discoveryv1.EndpointSlice) bool {
	seen := map[string]bool{}
	for _, s := range sls {
		k := s.Namespace + "/" + s.Name
		if seen[k] {
			return false
		}
		seen[k] = true
	}
	return true
}

// checkLocalPolicies: the frontends a Local policy governs reach only
// targets without remote endpoints.
func checkLocalPolicies(t *testing.T, snap Snapshot, m *Model) {
	t.Helper()
	policy := map[string]*corev1.Service{}
	for _, s := range snap.Services {
		if _, dup := policy[s.Namespace+"/"+s.Name]; !dup {
			policy[s.Namespace+"/"+s.Name] = s
		}
	}
	targets := map[TargetKey]Target{}
	for _, s := range m.Services {
		for _, p := range s.Ports {
			for _, tg := range p.Targets {
				targets[tg.Key] = tg
			}
		}
	}
	for _, f := range m.FrontendMap() {
		svc := policy[f.Service]
		local := (f.Kind == ClusterIP && svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal) ||
			(f.Kind.External() && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal)
		if !local {
			continue
		}
		for _, e := range targets[f.Target].Endpoints {
			if !e.Local {
				t.Errorf("%s frontend %s of Local policy reaches remote endpoint %s", f.Kind, f.Addr, e.AddrPort())
			}
		}
		if f.Kind.External() && f.Masquerade != MasqueradeNodeSource && !snap.Config.MasqueradeAll {
			t.Errorf("externalTrafficPolicy Local frontend %s masquerades %s", f.Addr, f.Masquerade)
		}
	}
}

// checkClusterIPsProgrammed: every usable ClusterIP . port of a Service
// that is not headless or ExternalName is in the frontend map, unless a
// problem says why not.
func checkClusterIPsProgrammed(t *testing.T, snap Snapshot, m *Model, ps []Problem) {
	t.Helper()
	have := map[frontendKey]bool{}
	for _, f := range m.FrontendMap() {
		have[frontendKey{f.Addr, f.Protocol, f.Port}] = true
	}
	conflicted := map[string]bool{}
	for _, p := range ps {
		if p.Reason == ReasonFrontendConflict {
			conflicted[p.Service] = true
		}
	}
	count := map[string]int{}
	for _, s := range snap.Services {
		count[s.Namespace+"/"+s.Name]++
	}
	for _, s := range snap.Services {
		id := s.Namespace + "/" + s.Name
		// A name twice in one snapshot cannot come from the API server; one
		// copy wins, so which ClusterIPs are expected is not known here.
		if s.Spec.Type == corev1.ServiceTypeExternalName || conflicted[id] || count[id] > 1 || s.Spec.ClusterIPs[0] == corev1.ClusterIPNone {
			continue
		}
		for _, ipStr := range s.Spec.ClusterIPs {
			a, err := netip.ParseAddr(ipStr)
			if err != nil {
				continue
			}
			named := map[string]bool{}
			for _, sp := range s.Spec.Ports {
				proto, ok := protocolOf(sp.Protocol)
				if !ok || named[sp.Name+"/"+proto.String()] {
					continue // unsupported, or a duplicate the first port shadows
				}
				named[sp.Name+"/"+proto.String()] = true
				if !have[frontendKey{a, proto, uint16(sp.Port)}] {
					t.Errorf("service %s clusterIP %s:%d/%s missing, problems %v", id, a, sp.Port, proto, ps)
				}
			}
		}
	}
}

// TestFuzzGeneratorReachesFeatures guards the fuzz test against checking
// invariants only over trivial models: over fixed pseudo-random inputs the
// generator must produce every kind of decision the invariants talk about.
func TestFuzzGeneratorReachesFeatures(t *testing.T) {
	seen := map[string]bool{}
	x := uint32(1)
	for range 5000 {
		data := make([]byte, 200)
		for i := range data {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			data[i] = byte(x)
		}
		m, ps := Desired(fuzzSnapshot(data))
		for _, r := range m.TargetRows() {
			seen["verdict "+r.Verdict.String()] = true
			if r.Count > 1 {
				seen["several endpoints"] = true
			}
		}
		for _, f := range m.FrontendMap() {
			seen["frontend "+f.Kind.String()] = true
			if f.PodTarget != "" {
				seen["pod short-circuit"] = true
			}
		}
		for _, p := range ps {
			seen["problem "+string(p.Reason)] = true
		}
		for _, s := range m.Services {
			for _, p := range s.Ports {
				for _, tg := range p.Targets {
					if tg.Scope == ScopeLocal && tg.Verdict == VerdictDNAT {
						seen["local dnat"] = true
					}
				}
			}
		}
	}
	for _, want := range []string{
		"verdict dnat", "verdict reject", "verdict drop", "several endpoints", "local dnat", "pod short-circuit",
		"frontend clusterIP", "frontend externalIP", "frontend loadBalancer", "frontend nodePort",
		"problem terminatingFallback", "problem frontendConflict", "problem headless", "problem externalName",
		"problem nodePortAddressFiltered", "problem ipFamilyMismatch", "problem invalidIP",
	} {
		if !seen[want] {
			t.Errorf("generator never produced %q", want)
		}
	}
}
