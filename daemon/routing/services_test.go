package routing

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	"github.com/meridian-net/meridian/bgp"
)

func (h *harness) advertised() string {
	s := h.speaker()
	if s == nil {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, a := range s.ads {
		out = append(out, a.Prefix.String()+"@"+a.NextHop.String())
	}
	return strings.Join(out, ",")
}

func (h *harness) waitAdvertised(t *testing.T, what, want string) {
	t.Helper()
	waitFor(t, what, func() error {
		if got := h.advertised(); got != want {
			return fmt.Errorf("advertised %q, want %q", got, want)
		}
		return nil
	})
}

// An externalTrafficPolicy Local Service's LoadBalancer IP is advertised
// only while this node has a ready endpoint of it; the ClusterIP range is
// advertised throughout.
func TestControllerAdvertisesServices(t *testing.T) {
	cfg := &v1alpha1.BGPConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: "default", Generation: 1},
		Spec: v1alpha1.BGPConfigurationSpec{
			ServiceClusterIPs:      []v1alpha1.ServiceCIDRBlock{{CIDR: "10.96.0.0/12"}},
			ServiceLoadBalancerIPs: []v1alpha1.ServiceCIDRBlock{{CIDR: "203.0.113.0/24"}},
		},
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		bgpPeersGVR:          "BGPPeerList",
		bgpConfigurationsGVR: "BGPConfigurationList",
	}, unstructuredOf(t, cfg))
	h := startWith(t, &fakeApplier{}, dyn,
		mkNode("n1", "198.18.0.11", "10.244.1.0/24", nil),
		mkNode("n2", "198.18.0.12", "10.244.2.0/24", nil))
	ctx := context.Background()

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeLoadBalancer,
			ClusterIP:             "10.96.0.50",
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Ports:                 []corev1.ServicePort{{Port: 80}},
		},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "203.0.113.7"}}}},
	}
	if _, err := h.client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ready := true
	epSlice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.2.5"}, NodeName: ptrTo("n2"),
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	}
	if _, err := h.client.DiscoveryV1().EndpointSlices("default").Create(ctx, epSlice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	base := "10.244.1.0/24@198.18.0.11,10.96.0.0/12@198.18.0.11"
	h.waitAdvertised(t, "ClusterIP range, no LB IP without a local endpoint", base)
	time.Sleep(300 * time.Millisecond) // a few resyncs with the Service listed
	if got := h.advertised(); got != base {
		t.Fatalf("with only n2's endpoint: advertised %q, want %q", got, base)
	}
	if !strings.Contains(h.logs.String(), "watching Services and EndpointSlices") {
		t.Errorf("Service informers not started")
	}

	// A ready endpoint appears on n1.
	epSlice.Endpoints = append(epSlice.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.244.1.9"}, NodeName: ptrTo("n1"),
		Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	if _, err := h.client.DiscoveryV1().EndpointSlices("default").Update(ctx, epSlice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitAdvertised(t, "LB IP with a local ready endpoint", base+",203.0.113.7/32@198.18.0.11")

	// It stops being ready: withdrawn.
	notReady := false
	epSlice.Endpoints[1].Conditions.Ready = &notReady
	if _, err := h.client.DiscoveryV1().EndpointSlices("default").Update(ctx, epSlice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitAdvertised(t, "LB IP withdrawn when the local endpoint is not ready", base)

	// Cluster policy: every node advertises it, endpoints or not.
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	if _, err := h.client.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitAdvertised(t, "LB IP with Cluster policy", base+",203.0.113.7/32@198.18.0.11")

	// The BGPConfiguration drops the blocks: only the pod CIDR is left.
	u, err := dyn.Resource(bgpConfigurationsGVR).Get(ctx, "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec := u.Object["spec"].(map[string]any)
	delete(spec, "serviceClusterIPs")
	delete(spec, "serviceLoadBalancerIPs")
	u.SetGeneration(2)
	if _, err := dyn.Resource(bgpConfigurationsGVR).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitAdvertised(t, "no Service addresses without blocks", "10.244.1.0/24@198.18.0.11")
}

func ptrTo[T any](v T) *T { return &v }

// The other nodes' Service advertisements reach this node over the mesh:
// refused by the import policy like anything outside the allowed set, but
// not worth a warning each.
func TestControllerQuietAboutPeersServicePaths(t *testing.T) {
	cfg := &v1alpha1.BGPConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: "default", Generation: 1},
		Spec:       v1alpha1.BGPConfigurationSpec{ServiceClusterIPs: []v1alpha1.ServiceCIDRBlock{{CIDR: "10.96.0.0/12"}}},
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		bgpPeersGVR:          "BGPPeerList",
		bgpConfigurationsGVR: "BGPConfigurationList",
	}, unstructuredOf(t, cfg))
	app := &fakeApplier{}
	h := startWith(t, app, dyn,
		mkNode("n1", "198.18.0.11", "10.244.1.0/24", nil),
		mkNode("n2", "198.18.0.12", "10.244.2.0/24", nil))
	h.waitAdvertised(t, "ClusterIP range", "10.244.1.0/24@198.18.0.11,10.96.0.0/12@198.18.0.11")
	n2 := netip.MustParseAddr("198.18.0.12")
	h.speaker().set(func(s *fakeSpeaker) {
		s.converged = true
		s.paths = []bgp.Path{
			{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: n2, PeerAddress: n2, Best: true},
			{Prefix: netip.MustParsePrefix("10.96.0.0/12"), NextHop: n2, PeerAddress: n2, Best: true},
			{Prefix: netip.MustParsePrefix("192.0.2.0/24"), NextHop: n2, PeerAddress: n2, Best: true},
		}
	})
	waitFor(t, "the unrelated path's rejection logged", func() error {
		if !strings.Contains(h.logs.String(), "prefix=192.0.2.0/24") {
			return fmt.Errorf("no rejection logged yet")
		}
		return nil
	})
	if strings.Contains(h.logs.String(), "prefix=10.96.0.0/12") {
		t.Errorf("a peer's ClusterIP range was logged as a rejection:\n%s", h.logs.String())
	}
	a, _ := app.last()
	for _, r := range a.routes {
		if r.Dst == netip.MustParsePrefix("10.96.0.0/12") {
			t.Errorf("peer's Service range installed: %s", r)
		}
	}
}
