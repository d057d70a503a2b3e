package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// gen draws small choices from the fuzz input; an exhausted input reads as
// zeros, so every input is a valid snapshot.
type gen struct {
	b []byte
}

func (g *gen) n(k int) int {
	if len(g.b) == 0 {
		return 0
	}
	v := int(g.b[0])
	g.b = g.b[1:]
	return v % k
}

func (g *gen) pick(vs ...string) string { return vs[g.n(len(vs))] }

func (g *gen) labels(keys, vals []string) map[string]string {
	l := map[string]string{}
	for range g.n(3) {
		l[keys[g.n(len(keys))]] = vals[g.n(len(vals))]
	}
	return l
}

var (
	podKeys = []string{"app", "tier"}
	nsKeys  = []string{"team", "env"}
	vals    = []string{"a", "b", "c"}
)

// selector is a random label selector over keys, sometimes invalid (an In
// without values) to exercise fail-closed compilation.
func (g *gen) selector(keys []string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	for range g.n(2) {
		if s.MatchLabels == nil {
			s.MatchLabels = map[string]string{}
		}
		s.MatchLabels[keys[g.n(len(keys))]] = vals[g.n(len(vals))]
	}
	for range g.n(3) {
		r := metav1.LabelSelectorRequirement{Key: keys[g.n(len(keys))]}
		// Each valid operator 6 times in 25, an invalid one once.
		switch k := g.n(25); {
		case k == 24:
			r.Operator = metav1.LabelSelectorOpIn // invalid: no values
		case k%4 == 0:
			r.Operator, r.Values = metav1.LabelSelectorOpIn, []string{g.pick(vals...), g.pick(vals...)}
		case k%4 == 1:
			r.Operator, r.Values = metav1.LabelSelectorOpNotIn, []string{g.pick(vals...)}
		case k%4 == 2:
			r.Operator = metav1.LabelSelectorOpExists
		default:
			r.Operator = metav1.LabelSelectorOpDoesNotExist
		}
		s.MatchExpressions = append(s.MatchExpressions, r)
	}
	return s
}

var fuzzBlocks = []networkingv1.IPBlock{
	{CIDR: "10.0.0.0/8"},
	{CIDR: "10.1.0.0/16", Except: []string{"10.1.0.2/32"}},
	{CIDR: "10.1.0.0/24", Except: []string{"10.1.0.0/30", "10.1.0.1/32"}},
	{CIDR: "192.168.0.0/24"},
	{CIDR: "0.0.0.0/0", Except: []string{"10.2.0.0/16", "192.0.2.0/24"}},
	{CIDR: "10.2.0.1/31"},
	{CIDR: "2001:db8::/32"},
	{CIDR: "10.0.0.0/33"},                                  // invalid
	{CIDR: "10.1.0.0/16", Except: []string{"10.2.0.0/24"}}, // invalid except
}

func (g *gen) peers() []networkingv1.NetworkPolicyPeer {
	var ps []networkingv1.NetworkPolicyPeer
	for range g.n(3) {
		var p networkingv1.NetworkPolicyPeer
		// Each valid kind 6 times in 26, an invalid peer twice.
		switch k := g.n(26); {
		case k == 24:
			// empty peer: invalid
		case k == 25:
			b := fuzzBlocks[len(fuzzBlocks)-1-g.n(2)] // invalid
			p.IPBlock = &b
		case k%4 == 0:
			p.PodSelector = g.selector(podKeys)
		case k%4 == 1:
			p.NamespaceSelector = g.selector(nsKeys)
		case k%4 == 2:
			p.PodSelector, p.NamespaceSelector = g.selector(podKeys), g.selector(nsKeys)
		default:
			b := fuzzBlocks[g.n(len(fuzzBlocks)-2)]
			p.IPBlock = &b
		}
		ps = append(ps, p)
	}
	return ps
}

func (g *gen) ports() []networkingv1.NetworkPolicyPort {
	var ps []networkingv1.NetworkPolicyPort
	for range g.n(3) {
		var p networkingv1.NetworkPolicyPort
		if k := g.n(4); k > 0 {
			proto := []corev1.Protocol{TCP, UDP, SCTP}[k-1]
			p.Protocol = &proto
		}
		// No port, a number, a range, a name 5 times in 21 each; an invalid
		// port once.
		switch k := g.n(21); {
		case k == 20:
			v := intstr.FromInt32(0) // invalid
			p.Port = &v
		case k%4 == 0:
		case k%4 == 1:
			v := intstr.FromInt32([]int32{53, 80, 8080}[g.n(3)])
			p.Port = &v
		case k%4 == 2:
			v := intstr.FromInt32(80)
			end := []int32{80, 8080, 8080, 8080, 79}[g.n(5)] // 79 is invalid
			p.Port, p.EndPort = &v, &end
		default:
			v := intstr.FromString(g.pick("http", "dns", "metrics"))
			p.Port = &v
		}
		ps = append(ps, p)
	}
	return ps
}

func (g *gen) containerPorts() []corev1.ContainerPort {
	var cps []corev1.ContainerPort
	used := map[string]bool{}
	for range g.n(4) {
		name := g.pick("http", "dns", "metrics")
		if used[name] {
			continue // names are unique in a pod
		}
		used[name] = true
		cps = append(cps, corev1.ContainerPort{
			Name:          name,
			ContainerPort: []int32{53, 80, 8080}[g.n(3)],
			Protocol:      []corev1.Protocol{"", TCP, UDP, SCTP}[g.n(4)],
		})
	}
	return cps
}

// snapshot builds 3 namespaces of 1-3 pods on two nodes, some of them host
// network, finished or without an IP, and 1-4 policies.
func (g *gen) snapshot() Snapshot {
	var s Snapshot
	for i := range 3 {
		ns := fmt.Sprintf("ns%d", i)
		l := g.labels(nsKeys, vals)
		l["kubernetes.io/metadata.name"] = ns
		s.Namespaces = append(s.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: l}})
		for j := range 1 + g.n(3) {
			p := pod(ns, fmt.Sprintf("p%d", j), nodes[g.n(2)], fmt.Sprintf("10.%d.0.%d", i, j+1), g.labels(podKeys, vals), g.containerPorts()...)
			switch g.n(10) {
			case 0:
				p.Spec.HostNetwork = true
				p.Status.PodIP = fmt.Sprintf("192.168.0.%d", 1+g.n(2)) // node IPs, shared
				p.Status.PodIPs = []corev1.PodIP{{IP: p.Status.PodIP}}
			case 1:
				p.Status.Phase = corev1.PodSucceeded
			case 2:
				p.Status.PodIP, p.Status.PodIPs = "", nil
			}
			s.Pods = append(s.Pods, p)
		}
	}
	for k := range 1 + g.n(4) {
		pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns%d", g.n(3)), Name: fmt.Sprintf("np%d", k)}}
		pol.Spec.PodSelector = *g.selector(podKeys)
		switch g.n(5) {
		case 1:
			pol.Spec.PolicyTypes = []networkingv1.PolicyType{ingressT}
		case 2:
			pol.Spec.PolicyTypes = []networkingv1.PolicyType{egressT}
		case 3:
			pol.Spec.PolicyTypes = []networkingv1.PolicyType{ingressT, egressT}
		}
		for range g.n(3) {
			pol.Spec.Ingress = append(pol.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: g.peers(), Ports: g.ports()})
		}
		for range g.n(3) {
			pol.Spec.Egress = append(pol.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: g.peers(), Ports: g.ports()})
		}
		s.Policies = append(s.Policies, pol)
	}
	return s
}

type probeKind struct {
	proto corev1.Protocol
	port  uint16
}

var probeKinds = []probeKind{{TCP, 80}, {TCP, 8080}, {TCP, 53}, {UDP, 53}, {UDP, 80}, {SCTP, 80}, {TCP, 79}, {"ICMP", 0}}

// FuzzCompile checks, for random snapshots and every packet between their
// addresses, that the per-node compiled models together decide exactly what
// the reference evaluator decides from the API objects.
func FuzzCompile(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a"))
	f.Add([]byte("network policy fuzz seed with enough bytes to build a few policies and rules and peers"))
	f.Fuzz(func(t *testing.T, data []byte) {
		g := &gen{b: data}
		s := g.snapshot()

		models := map[string]*Model{}
		// One Compiler across the nodes' compiles: from the second on it
		// answers from its parsed selectors, and must answer as Compile.
		cc := NewCompiler()
		for _, n := range nodes {
			sn := s
			sn.Node = n
			var ps []Problem
			models[n], ps = Compile(sn)
			for range 2 {
				if m2, ps2 := cc.Compile(sn); !reflect.DeepEqual(m2, models[n]) || !reflect.DeepEqual(ps2, ps) {
					t.Fatalf("Compiler differs from Compile on %s", n)
				}
			}
		}
		addrs := []netip.Addr{
			netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("10.2.0.9"), netip.MustParseAddr("192.168.0.1"),
		}
		for _, p := range s.Pods {
			if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
				addrs = append(addrs, a)
			}
		}
		for _, src := range addrs {
			for _, dst := range addrs {
				for _, k := range probeKinds {
					pkt := Packet{Src: src, Dst: dst, Protocol: k.proto, DstPort: k.port}
					got := true
					for _, n := range nodes {
						got = got && models[n].Evaluate(pkt).Allowed
					}
					if want := Reference(s, pkt); got != want {
						t.Fatalf("%s -> %s %s/%d: compiled %v, reference %v\n%s\n%s\npolicies:\n%s",
							src, dst, k.proto, k.port, got, want, models["n1"], models["n2"], dumpPolicies(s))
					}
				}
			}
		}
	})
}

func dumpPolicies(s Snapshot) string {
	out := ""
	for _, ns := range s.Namespaces {
		out += fmt.Sprintf("ns %s %v\n", ns.Name, ns.Labels)
	}
	for _, p := range s.Pods {
		out += fmt.Sprintf("pod %s/%s node=%s ip=%s host=%v phase=%s labels=%v ports=%v\n", p.Namespace, p.Name, p.Spec.NodeName, p.Status.PodIP, p.Spec.HostNetwork, p.Status.Phase, p.Labels, p.Spec.Containers[0].Ports)
	}
	for _, p := range s.Policies {
		out += fmt.Sprintf("policy %s/%s %+v\n", p.Namespace, p.Name, p.Spec.String())
	}
	return out
}

// TestFuzzGeneratorReachesEveryOutcome guards FuzzCompile against going
// vacuous: over fixed random inputs the generator must produce allowed and
// denied packets, packets allowed by a named egress port, and problems.
func TestFuzzGeneratorReachesEveryOutcome(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var allowed, denied, problems, portSetRules int
	for range 300 {
		data := make([]byte, 200)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		s := (&gen{b: data}).snapshot()
		s.Node = "n1"
		m, probs := Compile(s)
		problems += len(probs)
		for _, p := range m.Pods {
			for _, r := range p.Egress.Rules {
				for _, pm := range r.Ports {
					if pm.PortSet != "" {
						portSetRules++
					}
				}
			}
		}
		for _, src := range s.Pods {
			for _, dst := range s.Pods {
				pkt := Packet{Src: addrOrZero(src.Status.PodIP), Dst: addrOrZero(dst.Status.PodIP), Protocol: TCP, DstPort: 80}
				if Reference(s, pkt) {
					allowed++
				} else {
					denied++
				}
			}
		}
	}
	t.Logf("allowed %d, denied %d, problems %d, egress named-port rules %d", allowed, denied, problems, portSetRules)
	if allowed < 1000 || denied < 1000 || problems == 0 || portSetRules == 0 {
		t.Errorf("generator too narrow: allowed %d, denied %d, problems %d, egress named-port rules %d", allowed, denied, problems, portSetRules)
	}
}

func addrOrZero(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}
