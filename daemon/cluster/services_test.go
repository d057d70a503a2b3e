package cluster

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meridian-net/meridian/api/crd/v1alpha1"
)

func svc(name string, etp corev1.ServiceExternalTrafficPolicy, externalIPs []string, lbIPs ...string) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
	s.Spec.Type = corev1.ServiceTypeClusterIP
	s.Spec.ExternalIPs = externalIPs
	if len(lbIPs) > 0 {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		for _, ip := range lbIPs {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
		}
	}
	if etp != "" {
		s.Spec.ExternalTrafficPolicy = etp
	}
	return s
}

// slice is an EndpointSlice of service with one endpoint per node=ready
// pair, e.g. "n1=true", "n2=nil".
func slice(service string, eps ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{
		Namespace: "ns", Name: service + "-abc",
		Labels: map[string]string{discoveryv1.LabelServiceName: service},
	}}
	for i, e := range eps {
		node, ready, _ := strings.Cut(e, "=")
		ep := discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.244.9.%d", i+1)}, NodeName: ptr(node)}
		if ready != "nil" {
			ep.Conditions.Ready = ptr(ready == "true")
		}
		s.Endpoints = append(s.Endpoints, ep)
	}
	return s
}

func TestServiceAdvertisements(t *testing.T) {
	self := NodeInfo{Name: "n1", InternalIP: netip.MustParseAddr("198.18.0.11")}
	blocks := ServiceBlocks{
		ClusterIPs:      []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")},
		ExternalIPs:     []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		LoadBalancerIPs: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
	}
	local, cluster := corev1.ServiceExternalTrafficPolicyLocal, corev1.ServiceExternalTrafficPolicyCluster
	tests := []struct {
		name     string
		blocks   ServiceBlocks
		self     NodeInfo
		services []*corev1.Service
		slices   []*discoveryv1.EndpointSlice
		want     string // prefixes, comma separated
		skips    string // ip:reason, comma separated
	}{
		{name: "nothing configured", services: []*corev1.Service{svc("a", cluster, []string{"198.51.100.1"})}},
		{name: "cluster IP range only, no services needed", blocks: ServiceBlocks{ClusterIPs: blocks.ClusterIPs}, want: "10.96.0.0/12"},
		{
			name: "Cluster policy: every node", blocks: blocks,
			services: []*corev1.Service{svc("a", cluster, []string{"198.51.100.1"}, "203.0.113.7")},
			want:     "10.96.0.0/12,198.51.100.1/32,203.0.113.7/32",
		},
		{
			name: "Local policy without a local endpoint", blocks: blocks,
			services: []*corev1.Service{svc("a", local, []string{"198.51.100.1"}, "203.0.113.7")},
			slices:   []*discoveryv1.EndpointSlice{slice("a", "n2=true", "n1=false")},
			want:     "10.96.0.0/12",
			skips:    "198.51.100.1:noLocalEndpoints,203.0.113.7:noLocalEndpoints",
		},
		{
			name: "Local policy with a ready local endpoint", blocks: blocks,
			services: []*corev1.Service{svc("a", local, nil, "203.0.113.7")},
			slices:   []*discoveryv1.EndpointSlice{slice("a", "n2=true"), slice("a", "n1=true")},
			want:     "10.96.0.0/12,203.0.113.7/32",
		},
		{
			name: "nil ready counts as ready", blocks: blocks,
			services: []*corev1.Service{svc("a", local, nil, "203.0.113.7")},
			slices:   []*discoveryv1.EndpointSlice{slice("a", "n1=nil")},
			want:     "10.96.0.0/12,203.0.113.7/32",
		},
		{
			name: "another Service's endpoint does not count", blocks: blocks,
			services: []*corev1.Service{svc("a", local, nil, "203.0.113.7")},
			slices:   []*discoveryv1.EndpointSlice{slice("b", "n1=true")},
			want:     "10.96.0.0/12",
			skips:    "203.0.113.7:noLocalEndpoints",
		},
		{
			name: "addresses outside the blocks and in the wrong block", blocks: blocks,
			// An LB IP inside the externalIPs block is still outside the
			// LoadBalancer blocks.
			services: []*corev1.Service{svc("a", cluster, []string{"192.0.2.1", "203.0.113.9"}, "198.51.100.3")},
			want:     "10.96.0.0/12",
			skips:    "192.0.2.1:outsideServiceBlocks,203.0.113.9:outsideServiceBlocks,198.51.100.3:outsideServiceBlocks",
		},
		{
			name: "invalid addresses ignored", blocks: blocks,
			services: []*corev1.Service{svc("a", cluster, []string{"not-an-ip", "198.51.100.300", "", "198.51.100.4"}, "fe80::1%eth0")},
			want:     "10.96.0.0/12,198.51.100.4/32",
			skips:    "not-an-ip:invalidIP,198.51.100.300:invalidIP,:invalidIP,fe80::1%eth0:invalidIP",
		},
		{
			name: "dual-stack: IPv6 left out, IPv4 advertised", blocks: blocks,
			services: []*corev1.Service{svc("a", cluster, []string{"2001:db8::1", "198.51.100.5"}, "2001:db8::2", "203.0.113.5")},
			want:     "10.96.0.0/12,198.51.100.5/32,203.0.113.5/32",
			skips:    "2001:db8::1:notIPv4,2001:db8::2:notIPv4",
		},
		{
			name: "IPv4-mapped IPv6 is the IPv4 address", blocks: blocks,
			services: []*corev1.Service{svc("a", cluster, []string{"::ffff:198.51.100.6"})},
			want:     "10.96.0.0/12,198.51.100.6/32",
		},
		{
			name: "same IP on two Services, one Local without endpoint: advertised once", blocks: blocks,
			services: []*corev1.Service{
				svc("a", local, []string{"198.51.100.1"}),
				svc("b", cluster, []string{"198.51.100.1"}),
				svc("c", cluster, []string{"198.51.100.1"}),
			},
			want:  "10.96.0.0/12,198.51.100.1/32",
			skips: "198.51.100.1:noLocalEndpoints",
		},
		{
			name: "LB ingress of a non-LoadBalancer Service and ExternalName ignored", blocks: blocks,
			services: func() []*corev1.Service {
				a := svc("a", cluster, nil, "203.0.113.7")
				a.Spec.Type = corev1.ServiceTypeNodePort
				b := svc("b", cluster, []string{"198.51.100.1"})
				b.Spec.Type = corev1.ServiceTypeExternalName
				return []*corev1.Service{a, b}
			}(),
			want: "10.96.0.0/12",
		},
		{
			name: "sorted by address then length", blocks: ServiceBlocks{
				ClusterIPs:  []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
				ExternalIPs: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("10.0.0.0/8")},
			},
			services: []*corev1.Service{svc("a", cluster, []string{"198.51.100.0", "10.1.2.3"})},
			want:     "10.1.2.3/32,198.51.100.0/24,198.51.100.0/32",
		},
		{
			name: "node without an address advertises nothing", blocks: blocks, self: NodeInfo{Name: "n1"},
			services: []*corev1.Service{svc("a", cluster, []string{"198.51.100.1"})},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			me := self
			if tt.self.Name != "" {
				me = tt.self
			}
			ads, skips := ServiceAdvertisements(tt.blocks, me, tt.services, tt.slices)
			var got []string
			for _, a := range ads {
				if a.NextHop != me.InternalIP {
					t.Errorf("%s next hop %s, want %s", a.Prefix, a.NextHop, me.InternalIP)
				}
				got = append(got, a.Prefix.String())
			}
			if g := strings.Join(got, ","); g != tt.want {
				t.Errorf("advertised %q, want %q", g, tt.want)
			}
			var gotSkips []string
			for _, s := range skips {
				if s.Service == "" {
					t.Errorf("skip %+v without a Service", s)
				}
				gotSkips = append(gotSkips, s.IP+":"+s.Reason)
			}
			if g := strings.Join(gotSkips, ","); g != tt.skips {
				t.Errorf("skipped %q, want %q", g, tt.skips)
			}
		})
	}
}

func TestSettingsFromServiceBlocks(t *testing.T) {
	cfg := func(clusterIPs, externalIPs, lbIPs []v1alpha1.CIDR) *v1alpha1.BGPConfiguration {
		blocks := func(cs []v1alpha1.CIDR) []v1alpha1.ServiceCIDRBlock {
			var out []v1alpha1.ServiceCIDRBlock
			for _, c := range cs {
				out = append(out, v1alpha1.ServiceCIDRBlock{CIDR: c})
			}
			return out
		}
		return &v1alpha1.BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: v1alpha1.BGPConfigurationSpec{
			ServiceClusterIPs: blocks(clusterIPs), ServiceExternalIPs: blocks(externalIPs), ServiceLoadBalancerIPs: blocks(lbIPs),
		}}
	}
	s, err := SettingsFrom(cfg([]v1alpha1.CIDR{"10.96.0.0/12"}, []v1alpha1.CIDR{"198.51.100.0/24"}, []v1alpha1.CIDR{"0.0.0.0/0"}), testNodes(), 64512)
	if err != nil {
		t.Fatal(err)
	}
	want := ServiceBlocks{
		ClusterIPs:      []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")},
		ExternalIPs:     []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		LoadBalancerIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")},
	}
	if !slices.Equal(s.Services.All(), want.All()) || !s.Services.NeedsServices() {
		t.Errorf("Services = %+v, want %+v", s.Services, want)
	}
	if s, _ := SettingsFrom(cfg([]v1alpha1.CIDR{"10.96.0.0/12"}, nil, nil), testNodes(), 64512); s.Services.NeedsServices() {
		t.Errorf("ClusterIP ranges alone need Services: %+v", s.Services)
	}

	for name, tt := range map[string]struct {
		c    *v1alpha1.BGPConfiguration
		want string
	}{
		"not a CIDR":        {cfg([]v1alpha1.CIDR{"10.96.0.0"}, nil, nil), `serviceClusterIPs: "10.96.0.0" is not a CIDR`},
		"host bits":         {cfg(nil, []v1alpha1.CIDR{"198.51.100.1/24"}, nil), "serviceExternalIPs: 198.51.100.1/24 has host bits set"},
		"IPv6":              {cfg(nil, nil, []v1alpha1.CIDR{"2001:db8::/64"}), "serviceLoadBalancerIPs: 2001:db8::/64 is not IPv4"},
		"ClusterIP default": {cfg([]v1alpha1.CIDR{"0.0.0.0/0"}, nil, nil), "serviceClusterIPs: 0.0.0.0/0 would advertise a default route"},
	} {
		s, err := SettingsFrom(tt.c, testNodes(), 64512)
		oe, ok := IsObjectError(err)
		if !ok || oe.Reason != ReasonInvalid || !strings.Contains(oe.Message, tt.want) {
			t.Errorf("%s: error %v, want Invalid with %q", name, err, tt.want)
		}
		if len(s.Services.All()) != 0 {
			t.Errorf("%s: refused settings still carry blocks %+v", name, s.Services)
		}
	}
}
