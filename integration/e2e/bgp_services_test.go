package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	"github.com/meridian-net/meridian/integration/lab"
)

// TestBGPServices checks Service advertisement against FRR as a ToR: the
// ClusterIP range from every node, an externalIP inside the configured
// block as a /32 from every node (externalTrafficPolicy Cluster), one
// outside it not at all, and a Local LoadBalancer IP only once a node runs
// an endpoint, from that node alone, withdrawn when it goes.
func TestBGPServices(t *testing.T) {
	l := needLab(t)
	if _, err := os.Stat(frrBgpd); err != nil {
		t.Skipf("%s not installed: %v", frrBgpd, err)
	}
	c := client(t, l)
	nodes := l.Nodes()
	waitMesh(t, c, nodes)
	dyn := bgpAPI(t, l)
	ctx := context.Background()

	torIP := netip.MustParseAddr("198.18.0.211")
	tor := newRouterNetns(t, "tor-svc", torIP)
	tor.startFRR(t, torASN, nodes, nil)

	const (
		externalIP = "198.51.100.10"
		outsideIP  = "192.0.2.10"
		lbIP       = "203.0.113.7"
	)
	createObject(t, dyn, &v1alpha1.BGPConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec: v1alpha1.BGPConfigurationSpec{
			AcceptedPrefixes:       []v1alpha1.CIDR{v1alpha1.CIDR(lab.ClusterCIDR.String())},
			ServiceClusterIPs:      []v1alpha1.ServiceCIDRBlock{{CIDR: v1alpha1.CIDR(lab.ServiceCIDR.String())}},
			ServiceExternalIPs:     []v1alpha1.ServiceCIDRBlock{{CIDR: "198.51.100.0/24"}},
			ServiceLoadBalancerIPs: []v1alpha1.ServiceCIDRBlock{{CIDR: "203.0.113.0/24"}},
		},
	})
	createObject(t, dyn, bgpPeer("tor-svc", torIP, torASN))

	port := []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(tcpPort)}}
	ext := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "e2e-bgp-ext"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"e2e": "routing"}, Ports: port,
			ExternalIPs: []string{externalIP, outsideIP}},
	}
	lb := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "e2e-bgp-lb"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"e2e": "routing"}, Ports: port,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal},
	}
	for _, s := range []*corev1.Service{ext, lb} {
		if _, err := c.CoreV1().Services("default").Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		name := s.Name
		t.Cleanup(func() { _ = c.CoreV1().Services("default").Delete(ctx, name, metav1.DeleteOptions{}) })
	}
	// No cloud controller in the lab: play its part.
	eventually(t, 30*time.Second, "LoadBalancer status set", func() error {
		s, err := c.CoreV1().Services("default").Get(ctx, lb.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP}}
		_, err = c.CoreV1().Services("default").UpdateStatus(ctx, s, metav1.UpdateOptions{})
		return err
	})

	var allNodes []string
	for _, n := range nodes {
		allNodes = append(allNodes, n.IP.String())
	}
	slices.Sort(allNodes)
	nextHops := func(routes map[string][]string, p string) []string {
		hops := slices.Clone(routes[p])
		slices.Sort(hops)
		return slices.Compact(hops)
	}
	eventually(t, 90*time.Second, "FRR learns the ClusterIP range and the externalIP from every node", func() error {
		routes, err := tor.frrRoutes()
		if err != nil {
			return err
		}
		for _, p := range []string{lab.ServiceCIDR.String(), externalIP + "/32"} {
			if got := nextHops(routes, p); !slices.Equal(got, allNodes) {
				return fmt.Errorf("%s via %v, want %v (table %v)", p, got, allNodes, routes)
			}
		}
		if hops := routes[lbIP+"/32"]; len(hops) > 0 {
			return fmt.Errorf("Local LB IP %s advertised via %v without any endpoint", lbIP, hops)
		}
		return nil
	})
	routes, err := tor.frrRoutes()
	if err != nil {
		t.Fatal(err)
	}
	if hops := routes[outsideIP+"/32"]; len(hops) > 0 {
		t.Errorf("externalIP %s outside the configured block advertised via %v", outsideIP, hops)
	}

	// An endpoint on the second node: only that node originates the Local
	// Service's LoadBalancer IP, and nodes send external peers only what
	// they originate, so FRR must reach it through node-2 alone; another
	// next hop would be a node that drops the traffic.
	pod := runPod(t, c, "e2e-bgp-svc", nodes[1].Name)
	eventually(t, 60*time.Second, "LB IP from the endpoint's node only", func() error {
		routes, err := tor.frrRoutes()
		if err != nil {
			return err
		}
		if got, want := nextHops(routes, lbIP+"/32"), []string{nodes[1].IP.String()}; !slices.Equal(got, want) {
			return fmt.Errorf("%s/32 via %v, want via %v only", lbIP, got, want)
		}
		return nil
	})
	// A re-exported path would follow within moments of node-2's; make
	// sure none comes.
	time.Sleep(3 * time.Second)
	if routes, err := tor.frrRoutes(); err != nil {
		t.Fatal(err)
	} else if got, want := nextHops(routes, lbIP+"/32"), []string{nodes[1].IP.String()}; !slices.Equal(got, want) {
		t.Errorf("%s/32 via %v after settling, want via %v only", lbIP, got, want)
	}
	deletePod(t, c, pod.Name)
	eventually(t, 60*time.Second, "LB IP withdrawn with the endpoint", func() error {
		routes, err := tor.frrRoutes()
		if err != nil {
			return err
		}
		if hops := routes[lbIP+"/32"]; len(hops) > 0 {
			return fmt.Errorf("%s/32 still via %v", lbIP, hops)
		}
		return nil
	})
}
