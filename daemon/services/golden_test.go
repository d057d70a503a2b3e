package services

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// render is the golden form: the model, its flat nftables views and the
// problems, so a reviewer sees in one file what a change does to each.
func render(m *Model, ps []Problem) string {
	var b strings.Builder
	b.WriteString(m.String())
	b.WriteString("-- frontend map\n")
	for _, r := range m.FrontendMap() {
		fmt.Fprintf(&b, "%s . %s . %d : %s", r.Addr, r.Protocol, r.Port, r.Target)
		if r.PodTarget != "" {
			fmt.Fprintf(&b, " (pods,node: %s)", r.PodTarget)
		}
		fmt.Fprintf(&b, " masquerade=%s\n", r.Masquerade)
	}
	b.WriteString("-- targets\n")
	for _, r := range m.TargetRows() {
		fmt.Fprintf(&b, "%s %s count=%d", r.Key, r.Verdict, r.Count)
		if r.Reason != "" {
			fmt.Fprintf(&b, " reason=%s", r.Reason)
		}
		if r.Affinity != nil {
			fmt.Fprintf(&b, " affinity=%ds", r.Affinity.TimeoutSeconds)
		}
		b.WriteString("\n")
	}
	b.WriteString("-- endpoint map\n")
	for _, r := range m.EndpointRows() {
		fmt.Fprintf(&b, "%s . %d : %s\n", r.Target, r.Bucket, netip.AddrPortFrom(r.Addr, r.Port))
	}
	b.WriteString("-- problems\n")
	for _, p := range ps {
		b.WriteString(p.String() + "\n")
	}
	return b.String()
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run go test -update to create it): %v", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the current output (go test -update rewrites it)\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// TestGoldenCases renders every table case, so the full model of each rule
// is reviewed, not only what its check function asserts.
func TestGoldenCases(t *testing.T) {
	for _, c := range desiredCases {
		t.Run(c.name, func(t *testing.T) {
			m, ps := Desired(c.snapshot())
			checkGolden(t, c.name, render(m, ps))
		})
	}
}

// TestGoldenCluster is the seed's walkthrough cluster as one node sees it:
// CoreDNS, `kubectl expose deployment web` with three replicas, a NodePort,
// a LoadBalancer with externalTrafficPolicy Local, a headless StatefulSet
// Service and an ExternalName alias.
func TestGoldenCluster(t *testing.T) {
	snap := Snapshot{
		Node: testNode(),
		Config: Config{
			NATOutgoing:       true,
			NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("fd00::/64")},
		},
		Services: []*corev1.Service{
			svc("kube-system", "kube-dns", "10.96.0.10", ports(
				sport("dns", corev1.ProtocolUDP, 53, 0), sport("dns-tcp", corev1.ProtocolTCP, 53, 0), sport("metrics", corev1.ProtocolTCP, 9153, 0))),
			svc("default", "web", "10.96.0.20", affinity(ptr[int32](600))),
			svc("default", "shop", "10.96.0.30", clusterIPs("10.96.0.30", "fd00:96::30"), nodePortType(30080)),
			svc("default", "ingress", "10.96.0.40", loadBalancer(30443, corev1.LoadBalancerIngress{IP: "203.0.113.40"}), etpLocal(32040), externalIPs("198.51.100.40")),
			svc("default", "db", corev1.ClusterIPNone),
			func() *corev1.Service {
				s := svc("default", "mail", "")
				s.Spec.Type, s.Spec.ExternalName, s.Spec.ClusterIPs = corev1.ServiceTypeExternalName, "mail.example.com", nil
				return s
			}(),
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			slice("kube-system", "kube-dns", "kube-dns-7xk2p", discoveryv1.AddressTypeIPv4,
				[]discoveryv1.EndpointPort{eport("dns", corev1.ProtocolUDP, 53), eport("dns-tcp", corev1.ProtocolTCP, 53), eport("metrics", corev1.ProtocolTCP, 9153)},
				ep{addr: "10.244.0.3", node: "node-c"}, ep{addr: "10.244.1.3", node: thisNode}),
			v4slice("default", "web", "web-8sd9f", 80,
				ep{addr: "10.244.1.11", node: thisNode}, ep{addr: "10.244.2.11", node: "node-b"}, ep{addr: "10.244.0.11", node: "node-c"},
				ep{addr: "10.244.2.12", node: "node-b", notReady: true, terminating: true}),
			v4slice("default", "shop", "shop-v4", 8080, ep{addr: "10.244.2.20", node: "node-b"}),
			slice("default", "shop", "shop-v6", discoveryv1.AddressTypeIPv6, httpPort(8080), ep{addr: "fd10::2:20", node: "node-b"}),
			v4slice("default", "ingress", "ingress-1", 8443, ep{addr: "10.244.1.40", node: thisNode}, ep{addr: "10.244.2.40", node: "node-b"}),
			v4slice("default", "db", "db-0", 5432, ep{addr: "10.244.2.50", node: "node-b"}),
		},
	}
	m, ps := Desired(snap)
	checkInvariants(t, snap, m)
	checkGolden(t, "cluster", render(m, ps))
}
