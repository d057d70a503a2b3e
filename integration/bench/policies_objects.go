package bench

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The API objects of the NetworkPolicy benchmark: PolicyNamespaces
// namespaces, pods spread over them and over PolicyNodes bench Nodes that no
// kubelet serves (their IPs are set through the status subresource), and
// policies of four shapes, so that the agents meet pod and namespace
// selectors, matchExpressions, ipBlocks with excepts, named ports and
// endPort ranges in both directions.
//
// Two pods are real: bench-server (ServerAddr, listening on serverPort in a
// namespace behind the agent) and bench-client (ClientAddr, in a namespace
// in front of it), both on the measured node, the first two policies
// allowing exactly client -> server. Probe pods (bench-probe-N) later take
// the other real addresses with the server's labels, so that a connect
// from ProbeSource (an address that is no pod) to them must stop working
// once an agent enforces their policy.
const (
	// PolicyNamespaces is how many namespaces the pods and policies are
	// spread over.
	PolicyNamespaces = 20
	// PolicyNodes is how many bench Nodes host the pods; the agent under
	// test runs as the first.
	PolicyNodes = 3
	// policyApps is how many app labels each namespace's pods cycle
	// through; each policy selects one app.
	policyApps  = 25
	serverPort  = endpointPort
	serverApp   = "bench-server"
	clientApp   = "bench-client"
	serverPod   = "bench-server"
	clientPod   = "bench-client"
	policyLabel = "policies"
)

// Addresses: generated pods get 10.244.200.1 and up (250 a /24), far
// from the lab nodes' pod CIDRs; the real pods use the Service benchmark's
// real endpoint and client ranges.
var (
	generatedPodBase = netip.MustParseAddr("10.244.200.0")
	// ServerAddr is bench-server's IP; ProbeAddr(n) the n-th probe pod's.
	ServerAddr = realEndpoint(0)
	// ClientAddr is bench-client's IP.
	ClientAddr = clientAddr.Addr()
	// ProbeSource is the address the enforcement probes connect from: in
	// the client namespace, but no pod's.
	ProbeSource = netip.MustParseAddr("10.244.252.3")
)

// maxProbes is how many probe pods can have an address of their own.
const maxProbes = EndpointsPerService - 1

// ProbeAddr is the IP of probe pod n (0 <= n < maxProbes).
func ProbeAddr(n int) netip.Addr { return realEndpoint(1 + n%maxProbes) }

// PolicyNamespace is the name of the i-th bench namespace.
func PolicyNamespace(i int) string { return fmt.Sprintf("meridian-bench-pol-%02d", i) }

// PolicyNodeName is the name of the i-th bench Node (0 is the measured one).
func PolicyNodeName(i int) string { return fmt.Sprintf("meridian-bench-pol-%d", i+1) }

// GeneratedPodAddr is the IP of generated pod i.
func GeneratedPodAddr(i int) netip.Addr {
	b := generatedPodBase.As4()
	return netip.AddrFrom4([4]byte{b[0], b[1], b[2] + byte(i/250), byte(1 + i%250)})
}

// MaxPolicyPods is the most generated pods GeneratedPodAddr can number.
const MaxPolicyPods = 50 * 250

func appLabel(k int) string { return fmt.Sprintf("app-%02d", k%policyApps) }

var tiers = []string{"web", "db", "cache", "api"}

// PolicyNamespaceObject is the i-th bench namespace; its team label is
// what namespaceSelectors pick.
func PolicyNamespaceObject(i int) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:   PolicyNamespace(i),
		Labels: map[string]string{benchLabel: policyLabel, "team": fmt.Sprintf("team-%d", i%4)},
	}}
}

// BenchPod is generated pod i, without status (the API server drops it
// on create): namespace i mod PolicyNamespaces, node i mod PolicyNodes.
func BenchPod(i int) *corev1.Pod {
	ns := i % PolicyNamespaces
	k := i / PolicyNamespaces
	return benchPodSpec(PolicyNamespace(ns), fmt.Sprintf("pod-%05d", i), PolicyNodeName(i%PolicyNodes), map[string]string{
		benchLabel: policyLabel,
		"app":      appLabel(k),
		"tier":     tiers[(k/policyApps)%len(tiers)],
	})
}

// RealPods are bench-server and bench-client, on the measured node.
func RealPods() []*corev1.Pod {
	ns := PolicyNamespace(0)
	return []*corev1.Pod{
		benchPodSpec(ns, serverPod, PolicyNodeName(0), map[string]string{benchLabel: policyLabel, "app": serverApp}),
		benchPodSpec(ns, clientPod, PolicyNodeName(0), map[string]string{benchLabel: policyLabel, "app": clientApp}),
	}
}

// ProbePod is the n-th enforcement probe: the server's labels, on the
// measured node.
func ProbePod(n int) *corev1.Pod {
	return benchPodSpec(PolicyNamespace(0), fmt.Sprintf("bench-probe-%d", n), PolicyNodeName(0), map[string]string{benchLabel: policyLabel, "app": serverApp})
}

func benchPodSpec(ns, name, node string, lbl map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: lbl},
		Spec: corev1.PodSpec{
			NodeName: node,
			// No kubelet serves the bench Nodes: tolerate the taints the
			// node lifecycle controller may put on them, forever, so no pod
			// is evicted in the middle of a run.
			Tolerations:                  []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			AutomountServiceAccountToken: new(false),
			Containers: []corev1.Container{{
				Name: "app", Image: "bench",
				Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: serverPort, Protocol: corev1.ProtocolTCP},
					{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
				},
			}},
		},
	}
}

// RunningStatus is the status a kubelet would post for a running pod
// with ip.
func RunningStatus(ip netip.Addr) corev1.PodStatus {
	now := metav1.Now()
	return corev1.PodStatus{
		Phase:      corev1.PodRunning,
		PodIP:      ip.String(),
		PodIPs:     []corev1.PodIP{{IP: ip.String()}},
		StartTime:  &now,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
	}
}

// BenchPolicies are the n policies. The first two allow exactly
// bench-client -> bench-server:serverPort (ingress on the server, egress
// on the client); the others, in namespace j mod PolicyNamespaces, select
// one app each and are of four shapes, by j / PolicyNamespaces mod 4:
//
//	0: ingress from another app of the namespace, TCP 8080
//	1: ingress from tier=api pods of the namespaces of one team, TCP 8080 and 8443-8450
//	2: ingress from a /24 ipBlock; egress to another app on the named port
//	   "http" and to 10.0.0.0/8 except 10.244.0.0/16 on UDP 53
//	3: ingress from tier In (web, cache) on the named port "metrics"
func BenchPolicies(n int) []*networkingv1.NetworkPolicy {
	out := make([]*networkingv1.NetworkPolicy, 0, n)
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	port := func(p corev1.Protocol, v intstr.IntOrString) networkingv1.NetworkPolicyPort {
		return networkingv1.NetworkPolicyPort{Protocol: &p, Port: &v}
	}
	sel := func(kv ...string) *metav1.LabelSelector {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return &metav1.LabelSelector{MatchLabels: m}
	}
	in, eg := networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress
	for j := range n {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("np-%05d", j), Labels: map[string]string{benchLabel: policyLabel},
		}}
		switch j {
		case 0:
			np.Namespace = PolicyNamespace(0)
			np.Spec = networkingv1.NetworkPolicySpec{
				PodSelector: *sel("app", serverApp),
				PolicyTypes: []networkingv1.PolicyType{in},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", clientApp)}},
					Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromInt32(serverPort))},
				}},
			}
			out = append(out, np)
			continue
		case 1:
			np.Namespace = PolicyNamespace(0)
			np.Spec = networkingv1.NetworkPolicySpec{
				PodSelector: *sel("app", clientApp),
				PolicyTypes: []networkingv1.PolicyType{eg},
				Egress: []networkingv1.NetworkPolicyEgressRule{{
					To:    []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", serverApp)}},
					Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromInt32(serverPort))},
				}},
			}
			out = append(out, np)
			continue
		}
		ns := j % PolicyNamespaces
		k := j / PolicyNamespaces
		np.Namespace = PolicyNamespace(ns)
		np.Spec.PodSelector = *sel("app", appLabel(k))
		switch k % 4 {
		case 0:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{in}
			np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", appLabel(k+1))}},
				Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromInt32(serverPort))},
			}}
		case 1:
			end := int32(8450)
			ranged := port(tcp, intstr.FromInt32(8443))
			ranged.EndPort = &end
			np.Spec.PolicyTypes = []networkingv1.PolicyType{in}
			np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: sel("team", fmt.Sprintf("team-%d", (ns+1)%4)),
					PodSelector:       sel("tier", "api"),
				}},
				Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromInt32(serverPort)), ranged},
			}}
		case 2:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{in, eg}
			np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("192.168.%d.0/24", j%256)}}},
			}}
			np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{
				{
					To:    []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", appLabel(k+2))}},
					Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromString("http"))},
				},
				{
					To:    []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.244.0.0/16"}}}},
					Ports: []networkingv1.NetworkPolicyPort{port(udp, intstr.FromInt32(53))},
				},
			}
		case 3:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{in}
			np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"web", "cache"}},
				}}}},
				Ports: []networkingv1.NetworkPolicyPort{port(tcp, intstr.FromString("metrics"))},
			}}
		}
		out = append(out, np)
	}
	return out
}

// Isolation is which addresses of a node's pods are isolated, per
// direction, by a set of policies: what a complete table must hold.
type Isolation struct {
	Ingress, Egress map[netip.Addr]bool
}

// Either is the union of both directions (kube-network-policies queues
// the packets of every pod some policy selects, in a single set).
func (s Isolation) Either() map[netip.Addr]bool {
	out := make(map[netip.Addr]bool, len(s.Ingress)+len(s.Egress))
	for a := range s.Ingress {
		out[a] = true
	}
	for a := range s.Egress {
		out[a] = true
	}
	return out
}

// ExpectedIsolation evaluates the policies against the pods of node
// (with their IPs from ips, by namespace/name) directly from the API
// semantics: a pod is isolated in a direction when a policy of its
// namespace with that policy type selects it.
func ExpectedIsolation(pods []*corev1.Pod, ips map[string]netip.Addr, policies []*networkingv1.NetworkPolicy, node string) (Isolation, error) {
	type sel struct {
		s       labels.Selector
		in, out bool
	}
	byNS := map[string][]sel{}
	for _, np := range policies {
		s, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			return Isolation{}, fmt.Errorf("policy %s/%s: %w", np.Namespace, np.Name, err)
		}
		e := sel{s: s}
		for _, t := range np.Spec.PolicyTypes {
			e.in = e.in || t == networkingv1.PolicyTypeIngress
			e.out = e.out || t == networkingv1.PolicyTypeEgress
		}
		byNS[np.Namespace] = append(byNS[np.Namespace], e)
	}
	iso := Isolation{Ingress: map[netip.Addr]bool{}, Egress: map[netip.Addr]bool{}}
	for _, p := range pods {
		if p.Spec.NodeName != node {
			continue
		}
		ip, ok := ips[p.Namespace+"/"+p.Name]
		if !ok {
			continue
		}
		for _, e := range byNS[p.Namespace] {
			if !e.s.Matches(labels.Set(p.Labels)) {
				continue
			}
			if e.in {
				iso.Ingress[ip] = true
			}
			if e.out {
				iso.Egress[ip] = true
			}
		}
	}
	return iso, nil
}

// PolicyPodAddrs maps namespace/name to IP for n generated pods and the
// two real ones.
func PolicyPodAddrs(n int) map[string]netip.Addr {
	out := make(map[string]netip.Addr, n+2)
	for i := range n {
		p := BenchPod(i)
		out[p.Namespace+"/"+p.Name] = GeneratedPodAddr(i)
	}
	real := RealPods()
	out[real[0].Namespace+"/"+real[0].Name] = ServerAddr
	out[real[1].Namespace+"/"+real[1].Name] = ClientAddr
	return out
}
