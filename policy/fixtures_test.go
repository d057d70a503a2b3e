package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The fixture mirrors the upstream netpol e2e matrix: namespaces x, y, z
// with pods a, b, c each, spread over two nodes so that egress (source node)
// and ingress (destination node) are judged by different models.

var nodes = []string{"n1", "n2"}

func namespace(name string, extra ...string) *corev1.Namespace {
	l := map[string]string{"kubernetes.io/metadata.name": name, "ns": name}
	for i := 0; i+1 < len(extra); i += 2 {
		l[extra[i]] = extra[i+1]
	}
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
}

func pod(ns, name, node, ip string, lbls map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "c0", Ports: ports}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if ip != "" {
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	return p
}

func cport(name string, n int32, proto corev1.Protocol) corev1.ContainerPort {
	return corev1.ContainerPort{Name: name, ContainerPort: n, Protocol: proto}
}

// fixture is the matrix: x/a is 10.0.0.1, y/b is 10.0.1.2, and so on. Pods
// a and c run on n1, b on n2. Every pod serves TCP 80, UDP 81 and SCTP 82;
// the port named "http" is 80 on a, 8080 on b and absent on c.
func fixture() Snapshot {
	s := Snapshot{Namespaces: []*corev1.Namespace{
		namespace("x"), namespace("y", "team", "blue"), namespace("z", "team", "red"), namespace("kube-system"),
	}}
	for i, ns := range []string{"x", "y", "z"} {
		for j, name := range []string{"a", "b", "c"} {
			node := "n1"
			if name == "b" {
				node = "n2"
			}
			ports := []corev1.ContainerPort{
				cport("serve-80-tcp", 80, ""), cport("serve-81-udp", 81, corev1.ProtocolUDP), cport("serve-82-sctp", 82, corev1.ProtocolSCTP),
			}
			switch name {
			case "a":
				ports[0].Name = "http"
			case "b":
				ports = append(ports, cport("http", 8080, corev1.ProtocolTCP))
			}
			ip := fmt.Sprintf("10.0.%d.%d", i, j+1)
			s.Pods = append(s.Pods, pod(ns, name, node, ip, map[string]string{"pod": name}, ports...))
		}
	}
	s.Pods = append(s.Pods,
		pod("kube-system", "coredns", "n2", "10.0.9.53", map[string]string{"k8s-app": "kube-dns"},
			cport("dns", 53, corev1.ProtocolUDP), cport("dns-tcp", 53, corev1.ProtocolTCP)))
	return s
}

// addrOf resolves "ns/pod" in a snapshot, or parses a literal IP.
func addrOf(t *testing.T, s Snapshot, ref string) netip.Addr {
	t.Helper()
	if a, err := netip.ParseAddr(ref); err == nil {
		return a
	}
	for _, p := range s.Pods {
		if p.Namespace+"/"+p.Name == ref {
			return netip.MustParseAddr(p.Status.PodIP)
		}
	}
	t.Fatalf("no pod %s", ref)
	return netip.Addr{}
}

// probe parses "x/b -> x/a TCP/80" (or a literal IP on either side, or
// "ICMP" without a port).
func probe(t *testing.T, s Snapshot, spec string) Packet {
	t.Helper()
	f := strings.Fields(spec)
	if len(f) != 4 || f[1] != "->" {
		t.Fatalf("bad probe %q", spec)
	}
	p := Packet{Src: addrOf(t, s, f[0]), Dst: addrOf(t, s, f[2])}
	proto, port, ok := strings.Cut(f[3], "/")
	p.Protocol = corev1.Protocol(proto)
	if ok {
		n, err := strconv.Atoi(port)
		if err != nil {
			t.Fatalf("bad port in %q", spec)
		}
		p.DstPort = uint16(n)
	}
	return p
}

// judge is the cluster's verdict: every node's model judges its own half.
func judge(s Snapshot, p Packet, nodeNames []string) (bool, []Problem) {
	allowed := true
	var problems []Problem
	for _, n := range nodeNames {
		s.Node = n
		m, probs := Compile(s)
		problems = probs
		allowed = allowed && m.Evaluate(p).Allowed
	}
	return allowed, problems
}

// Policy builders.

func netpol(ns, name string, sel metav1.LabelSelector, mutate ...func(*networkingv1.NetworkPolicy)) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: sel},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func types(ts ...networkingv1.PolicyType) func(*networkingv1.NetworkPolicy) {
	return func(p *networkingv1.NetworkPolicy) { p.Spec.PolicyTypes = ts }
}

func ingress(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) func(*networkingv1.NetworkPolicy) {
	return func(p *networkingv1.NetworkPolicy) {
		p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports})
	}
}

func egress(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) func(*networkingv1.NetworkPolicy) {
	return func(p *networkingv1.NetworkPolicy) {
		p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports})
	}
}

func match(kv ...string) metav1.LabelSelector {
	l := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		l[kv[i]] = kv[i+1]
	}
	return metav1.LabelSelector{MatchLabels: l}
}

func matchP(kv ...string) *metav1.LabelSelector { s := match(kv...); return &s }

func expr(key string, op metav1.LabelSelectorOperator, vals ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: vals}}}
}

func peers(ps ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer { return ps }

func podPeer(sel *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: sel}
}

func nsPeer(sel *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: sel}
}

func bothPeer(ns, pod *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: ns, PodSelector: pod}
}

func blockPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func port(proto corev1.Protocol, p any, end ...int32) networkingv1.NetworkPolicyPort {
	np := networkingv1.NetworkPolicyPort{}
	if proto != "" {
		np.Protocol = &proto
	}
	switch v := p.(type) {
	case int:
		ios := intstr.FromInt32(int32(v))
		np.Port = &ios
	case string:
		ios := intstr.FromString(v)
		np.Port = &ios
	}
	if len(end) > 0 {
		np.EndPort = &end[0]
	}
	return np
}
