package servicenft

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/services"
)

// Small builders of Services and EndpointSlices, shaped like what the API
// server and the EndpointSlice controller produce (copied in spirit from
// daemon/services/builders_test.go, which is not importable).

const thisNode = "node-a"

func testNode() services.Node {
	return services.Node{
		Name:         thisNode,
		Addresses:    []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00::10")},
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

func ports(ps ...corev1.ServicePort) svcOpt { return func(s *corev1.Service) { s.Spec.Ports = ps } }

func sport(name string, proto corev1.Protocol, port int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: intstr.FromString(name)}
}

func nodePortType(nodePort int32) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		s.Spec.Ports[0].NodePort = nodePort
	}
}

func loadBalancer(nodePort int32, ips ...string) svcOpt {
	return func(s *corev1.Service) {
		nodePortType(nodePort)(s)
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		for _, ip := range ips {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
		}
	}
}

func etpLocal(s *corev1.Service) {
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
}

func itpLocal(s *corev1.Service) {
	p := corev1.ServiceInternalTrafficPolicyLocal
	s.Spec.InternalTrafficPolicy = &p
}

func externalIPs(ips ...string) svcOpt { return func(s *corev1.Service) { s.Spec.ExternalIPs = ips } }

func dualStack(v6 string) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, v6)
		s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	}
}

func affinity(timeout int32) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
	}
}

func ptr[T any](v T) *T { return &v }

// ep is one endpoint: address, node, readiness.
type ep struct {
	addr     string
	node     string
	notReady bool
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
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{e.addr},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(!e.notReady), Serving: ptr(!e.notReady), Terminating: ptr(false)},
			NodeName:   ptr(e.node),
		})
	}
	return sl
}

func eport(name string, proto corev1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr(name), Protocol: ptr(proto), Port: ptr(port)}
}

func v4slice(ns, svcName, sliceName string, port int32, eps ...ep) *discoveryv1.EndpointSlice {
	return slice(ns, svcName, sliceName, discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", corev1.ProtocolTCP, port)}, eps...)
}

// Lookups into a rendered table.

func findMap(t *testing.T, tbl nft.Table, name string) nft.Map {
	t.Helper()
	i := slices.IndexFunc(tbl.Maps, func(m nft.Map) bool { return m.Name == name })
	if i < 0 {
		t.Fatalf("no map %s in\n%s", name, tbl)
	}
	return tbl.Maps[i]
}

func findSet(t *testing.T, tbl nft.Table, name string) nft.Set {
	t.Helper()
	i := slices.IndexFunc(tbl.Sets, func(s nft.Set) bool { return s.Name == name })
	if i < 0 {
		t.Fatalf("no set %s in\n%s", name, tbl)
	}
	return tbl.Sets[i]
}

// elem returns the value of key in map name ("" and false when absent).
func elem(t *testing.T, tbl nft.Table, name, key string) (string, bool) {
	t.Helper()
	for _, e := range findMap(t, tbl, name).Elements {
		if e.Key == key {
			return e.Value, true
		}
	}
	return "", false
}

func setKeys(t *testing.T, tbl nft.Table, name string) []string {
	t.Helper()
	out := []string{}
	for _, e := range findSet(t, tbl, name).Elements {
		out = append(out, e.Key)
	}
	return out
}

// chainRules returns the rules of chain name as text; t fails when absent.
func chainRules(t *testing.T, tbl nft.Table, name string) []string {
	t.Helper()
	i := slices.IndexFunc(tbl.Chains, func(c nft.Chain) bool { return c.Name == name })
	if i < 0 {
		t.Fatalf("no chain %s in\n%s", name, tbl)
	}
	var out []string
	for _, r := range tbl.Chains[i].Rules {
		out = append(out, r.String())
	}
	return out
}

func hasChain(tbl nft.Table, name string) bool {
	return slices.ContainsFunc(tbl.Chains, func(c nft.Chain) bool { return c.Name == name })
}

func chainsWithPrefix(tbl nft.Table, prefix string) []string {
	var out []string
	for _, c := range tbl.Chains {
		if strings.HasPrefix(c.Name, prefix) {
			out = append(out, c.Name)
		}
	}
	return out
}

// id is the target id Render gives key within model m.
func id(m *services.Model, key string) uint32 {
	var keys []services.TargetKey
	for _, r := range m.TargetRows() {
		keys = append(keys, r.Key)
	}
	return TargetIDs(keys)[services.TargetKey(key)]
}
