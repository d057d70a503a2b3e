// Package apitest holds a small cluster for tests of the API and of
// meridianctl: the dataplane state is computed from Kubernetes objects by
// the real services.Desired and policy.Compile, so the API is tested on
// models shaped exactly as the node builds them.
package apitest

import (
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meridian-net/meridian/daemon/dataplane"
	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/services"
	"github.com/meridian-net/meridian/policy"
	"github.com/meridian-net/meridian/policy/policynft"
)

// Node is the node the fixture's state belongs to; its pod CIDR is
// 10.244.1.0/24 and node-b's 10.244.2.0/24.
const Node = "node-a"

// SyncedAt is when the fixture's sync happened.
var SyncedAt = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// Status is the dataplane status node-a reaches with this cluster:
//   - default/web (ClusterIP 10.96.0.20:80/TCP -> 8080) with endpoints
//     10.244.1.5 (web-1, node-a) and 10.244.2.7 (web-2, node-b);
//   - kube-system/kube-dns (10.96.0.10, 53/UDP and 53/TCP) with endpoint
//     10.244.2.9 (coredns, node-b);
//   - default/empty (10.96.0.30:80/TCP) with no endpoints;
//   - pods web-1 (app=web), client (app=client), locked (app=locked) on
//     node-a; web-2 and coredns on node-b;
//   - policy default/web-allow-client: web accepts TCP 8080 from client
//     only; default/deny-egress: locked may send nothing (no DNS either).
func Status() dataplane.Status {
	svcModel, svcProblems := services.Desired(services.Snapshot{
		Services: []*corev1.Service{
			service("default", "web", "10.96.0.20", port("http", corev1.ProtocolTCP, 80, 8080)),
			service("kube-system", "kube-dns", "10.96.0.10", port("dns", corev1.ProtocolUDP, 53, 53), port("dns-tcp", corev1.ProtocolTCP, 53, 53)),
			service("default", "empty", "10.96.0.30", port("http", corev1.ProtocolTCP, 80, 8080)),
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			slice("default", "web", []discoveryv1.EndpointPort{epPort("http", corev1.ProtocolTCP, 8080)},
				endpoint("10.244.1.5", "node-a"), endpoint("10.244.2.7", "node-b")),
			slice("kube-system", "kube-dns", []discoveryv1.EndpointPort{epPort("dns", corev1.ProtocolUDP, 53), epPort("dns-tcp", corev1.ProtocolTCP, 53)},
				endpoint("10.244.2.9", "node-b")),
		},
		Node: services.Node{
			Name:         Node,
			Addresses:    []netip.Addr{netip.MustParseAddr("198.18.0.11")},
			ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		},
		Config: services.DefaultConfig(),
	})
	polModel, polProblems := policy.Compile(policy.Snapshot{
		Policies: []*networkingv1.NetworkPolicy{
			{
				ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-allow-client"},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: ptr(corev1.ProtocolTCP), Port: ptr(intstr.FromInt32(8080))}},
					}},
				},
			},
			{
				ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny-egress"},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "locked"}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				},
			},
		},
		Pods: []*corev1.Pod{
			pod("default", "web-1", "web", "10.244.1.5", "node-a"),
			pod("default", "client", "client", "10.244.1.6", "node-a"),
			pod("default", "locked", "locked", "10.244.1.7", "node-a"),
			pod("default", "web-2", "web", "10.244.2.7", "node-b"),
			pod("kube-system", "coredns", "kube-dns", "10.244.2.9", "node-b"),
		},
		Namespaces: []*corev1.Namespace{namespace("default"), namespace("kube-system")},
		Node:       Node,
	})
	return dataplane.Status{
		Services: svcModel, ServiceProblems: svcProblems,
		Policy: polModel, PolicyProblems: polProblems,
		SyncedAt: SyncedAt,
	}
}

// Dataplane serves a fixed status, as *dataplane.Controller serves its last
// sync.
type Dataplane struct{ St dataplane.Status }

func (d Dataplane) Status() dataplane.Status { return d.St }

// Counters are rule counters as kernel.Conn.Counters reads them.
type Counters []nft.RuleCounter

func (c Counters) Counters() ([]nft.RuleCounter, error) { return c, nil }

// CountersFor renders m's policy chains as the node would and returns
// their counters, with the last rule (the drop) of each pod chain named in
// drops set to that many packets of 100 bytes and every allow rule to
// allowed packets.
func CountersFor(m *policy.Model, drops map[string]uint64, allowed uint64) Counters {
	byChain := map[string]uint64{}
	for i := range m.Pods {
		p := &m.Pods[i]
		for _, dir := range []string{policynft.Ingress, policynft.Egress} {
			if n, ok := drops[p.Key()+" "+dir]; ok {
				byChain[policynft.PodChain(p.Key(), dir)] = n
			}
		}
	}
	var out Counters
	for _, c := range policynft.Render(m).Sorted().Chains {
		for i, r := range c.Rules {
			if !r.Counter {
				continue
			}
			rc := nft.RuleCounter{Chain: c.Name, Index: i, Comment: r.Comment}
			if i == len(c.Rules)-1 {
				rc.Packets = byChain[c.Name]
			} else {
				rc.Packets = allowed
			}
			rc.Bytes = rc.Packets * 100
			out = append(out, rc)
		}
	}
	return out
}

func ptr[T any](v T) *T { return &v }

func service(ns, name, clusterIP string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
			Selector: map[string]string{"app": name}, Ports: ports,
		},
	}
}

func port(name string, proto corev1.Protocol, port, target int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: intstr.FromInt32(target)}
}

func epPort(name string, proto corev1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr(name), Protocol: ptr(proto), Port: ptr(port)}
}

func endpoint(addr, node string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{addr},
		NodeName:   ptr(node),
		Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
	}
}

func slice(ns, svc string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-abcde", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   slices.Clone(eps),
		Ports:       ports,
	}
}

func pod(ns, name, app, ip, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

func namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/metadata.name": name}}}
}
