package services

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Builders for realistic Services and EndpointSlices, shaped like what the
// API server and the EndpointSlice controller produce.

const thisNode = "node-a"

func testNode() Node {
	return Node{
		Name:         thisNode,
		Addresses:    []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("fd00::10")},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd10::/56")},
	}
}

type svcOpt func(*corev1.Service)

func svc(ns, name, clusterIP string, opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			Selector:   map[string]string{"app": name},
			Ports:      []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func ports(ps ...corev1.ServicePort) svcOpt {
	return func(s *corev1.Service) { s.Spec.Ports = ps }
}

func sport(name string, proto corev1.Protocol, port, nodePort int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: port, NodePort: nodePort, TargetPort: intstr.FromString(name)}
}

func nodePortType(nodePort int32) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		s.Spec.Ports[0].NodePort = nodePort
	}
}

func loadBalancer(nodePort int32, ingress ...corev1.LoadBalancerIngress) svcOpt {
	return func(s *corev1.Service) {
		nodePortType(nodePort)(s)
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Status.LoadBalancer.Ingress = ingress
	}
}

func etpLocal(hcPort int32) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = hcPort
	}
}

func itpLocal(s *corev1.Service) {
	p := corev1.ServiceInternalTrafficPolicyLocal
	s.Spec.InternalTrafficPolicy = &p
}

func externalIPs(ips ...string) svcOpt {
	return func(s *corev1.Service) { s.Spec.ExternalIPs = ips }
}

func clusterIPs(ips ...string) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips
		s.Spec.IPFamilies = nil
		for _, ip := range ips {
			if netip.MustParseAddr(ip).Is4() {
				s.Spec.IPFamilies = append(s.Spec.IPFamilies, corev1.IPv4Protocol)
			} else {
				s.Spec.IPFamilies = append(s.Spec.IPFamilies, corev1.IPv6Protocol)
			}
		}
	}
}

func affinity(timeout *int32) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		if timeout != nil {
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: timeout}}
		}
	}
}

func noSelector(s *corev1.Service) { s.Spec.Selector = nil }

func ptr[T any](v T) *T { return &v }

// ep describes one endpoint: its address, node and conditions.
type ep struct {
	addr        string
	node        string
	notReady    bool
	terminating bool
	notServing  bool
	noAddress   bool
}

func slice(ns, svcName, sliceName string, family discoveryv1.AddressType, sp []discoveryv1.EndpointPort, eps ...ep) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: sliceName,
			Labels: map[string]string{discoveryv1.LabelServiceName: svcName, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"},
		},
		AddressType: family,
		Ports:       sp,
	}
	for _, e := range eps {
		de := discoveryv1.Endpoint{
			Conditions: discoveryv1.EndpointConditions{
				Ready:       ptr(!e.notReady),
				Serving:     ptr(!e.notServing),
				Terminating: ptr(e.terminating),
			},
			NodeName:  ptr(e.node),
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: svcName + "-" + e.addr},
		}
		if !e.noAddress {
			de.Addresses = []string{e.addr}
		}
		sl.Endpoints = append(sl.Endpoints, de)
	}
	return sl
}

func eport(name string, proto corev1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr(name), Protocol: ptr(proto), Port: ptr(port)}
}

func httpPort(port int32) []discoveryv1.EndpointPort {
	return []discoveryv1.EndpointPort{eport("http", corev1.ProtocolTCP, port)}
}

func v4slice(ns, svcName, sliceName string, port int32, eps ...ep) *discoveryv1.EndpointSlice {
	return slice(ns, svcName, sliceName, discoveryv1.AddressTypeIPv4, httpPort(port), eps...)
}

// Lookups that fail the test when the thing is absent.

func findPort(t *testing.T, m *Model, key ServicePortKey) *ServicePort {
	t.Helper()
	for i := range m.Services {
		for j := range m.Services[i].Ports {
			if m.Services[i].Ports[j].Key == key {
				return &m.Services[i].Ports[j]
			}
		}
	}
	t.Fatalf("no service port %q in model:\n%s", key, m)
	return nil
}

func findTarget(t *testing.T, m *Model, key TargetKey) *Target {
	t.Helper()
	for i := range m.Services {
		for j := range m.Services[i].Ports {
			for k := range m.Services[i].Ports[j].Targets {
				if tg := &m.Services[i].Ports[j].Targets[k]; tg.Key == key {
					return tg
				}
			}
		}
	}
	t.Fatalf("no target %q in model:\n%s", key, m)
	return nil
}

func findService(t *testing.T, m *Model, id string) *Service {
	t.Helper()
	for i := range m.Services {
		if m.Services[i].ID() == id {
			return &m.Services[i]
		}
	}
	t.Fatalf("no service %q in model:\n%s", id, m)
	return nil
}

func addrPorts(eps []Endpoint) []string {
	out := []string{}
	for _, e := range eps {
		out = append(out, e.AddrPort().String())
	}
	return out
}

func frontendStrings(fs []Frontend) []string {
	out := []string{}
	for _, f := range fs {
		s := f.Kind.String() + " " + netip.AddrPortFrom(f.Addr, f.Port).String() + "/" + f.Protocol.String() + " -> " + string(f.Target)
		if f.PodTarget != "" {
			s += " pods-> " + string(f.PodTarget)
		}
		out = append(out, s+" masq="+f.Masquerade.String())
	}
	return out
}

func reasons(ps []Problem) map[Reason]int {
	out := map[Reason]int{}
	for _, p := range ps {
		out[p.Reason]++
	}
	return out
}

func metavObj(ns, name string, labels map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}
}
