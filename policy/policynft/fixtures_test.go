package policynft

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meridian-net/meridian/policy"
)

// Builders copied in small from policy's own tests.

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

// fixture: namespaces x, y (team=blue), z (team=red); pods a, b, c in each,
// x/a is 10.0.0.1, y/b 10.0.1.2 and so on. a and c run on n1, b on n2. The
// port named "http" is 80 on a, 8080 on b and absent on c.
func fixture() policy.Snapshot {
	s := policy.Snapshot{Node: "n1", Namespaces: []*corev1.Namespace{
		namespace("x"), namespace("y", "team", "blue"), namespace("z", "team", "red"),
	}}
	for i, ns := range []string{"x", "y", "z"} {
		for j, name := range []string{"a", "b", "c"} {
			node := "n1"
			if name == "b" {
				node = "n2"
			}
			ports := []corev1.ContainerPort{cport("serve-81-udp", 81, corev1.ProtocolUDP)}
			switch name {
			case "a":
				ports = append(ports, cport("http", 80, ""))
			case "b":
				ports = append(ports, cport("http", 8080, corev1.ProtocolTCP))
			}
			s.Pods = append(s.Pods, pod(ns, name, node, fmt.Sprintf("10.0.%d.%d", i, j+1), map[string]string{"pod": name}, ports...))
		}
	}
	return s
}

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

var (
	ingressOnly = types(networkingv1.PolicyTypeIngress)
	egressOnly  = types(networkingv1.PolicyTypeEgress)
	both        = types(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress)
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func corePodIP(ip string) corev1.PodIP { return corev1.PodIP{IP: ip} }
