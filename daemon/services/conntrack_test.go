package services

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

func dnsSnapshot(eps ...ep) Snapshot {
	snap := Snapshot{Node: testNode(), Config: Config{NATOutgoing: true, NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}}}
	dns := svc("kube-system", "kube-dns", "10.96.0.10", ports(sport("dns", corev1.ProtocolUDP, 53, 30053), sport("dns-tcp", corev1.ProtocolTCP, 53, 30054)))
	dns.Spec.Type = corev1.ServiceTypeNodePort
	snap.Services = []*corev1.Service{dns, svc("default", "web", "10.96.0.20")}
	snap.EndpointSlices = []*discoveryv1.EndpointSlice{
		slice("kube-system", "kube-dns", "kube-dns-1", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{eport("dns", corev1.ProtocolUDP, 53), eport("dns-tcp", corev1.ProtocolTCP, 53)}, eps...),
		v4slice("default", "web", "web-1", 8080, ep{addr: "10.244.1.9", node: thisNode}),
	}
	return snap
}

func aps(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestStaleUDPFlows(t *testing.T) {
	two, _ := Desired(dnsSnapshot(ep{addr: "10.244.1.3", node: thisNode}, ep{addr: "10.244.2.3", node: "node-b"}))
	one, _ := Desired(dnsSnapshot(ep{addr: "10.244.1.3", node: thisNode}))
	none, _ := Desired(dnsSnapshot())

	t.Run("removedEndpoint", func(t *testing.T) {
		// Only UDP: the TCP port lost the same endpoint, but TCP flows end
		// on their own (a reset from the gone pod's node, or a timeout).
		wantEqual(t, "stale", StaleUDPFlows(two, one), []StaleFlow{
			{Frontend: aps("10.96.0.10:53"), Endpoint: aps("10.244.2.3:53")},
			{Frontend: aps("192.168.1.10:30053"), Endpoint: aps("10.244.2.3:53")},
		})
	})
	t.Run("firstEndpointClearsRejectEntries", func(t *testing.T) {
		wantEqual(t, "stale", StaleUDPFlows(none, one), []StaleFlow{
			{Frontend: aps("10.96.0.10:53")},
			{Frontend: aps("192.168.1.10:30053")},
		})
	})
	t.Run("addedEndpointToWorkingService", func(t *testing.T) {
		wantEqual(t, "stale", len(StaleUDPFlows(one, two)), 0)
	})
	t.Run("unchanged", func(t *testing.T) {
		wantEqual(t, "stale", len(StaleUDPFlows(two, two)), 0)
	})
	t.Run("startup", func(t *testing.T) {
		// After a restart the applied model is unknown (nil): every UDP
		// frontend with endpoints gets its reject-era entries cleared.
		wantEqual(t, "stale", StaleUDPFlows(nil, one), []StaleFlow{
			{Frontend: aps("10.96.0.10:53")},
			{Frontend: aps("192.168.1.10:30053")},
		})
	})
}

func TestChangedServices(t *testing.T) {
	two, _ := Desired(dnsSnapshot(ep{addr: "10.244.1.3", node: thisNode}, ep{addr: "10.244.2.3", node: "node-b"}))
	one, _ := Desired(dnsSnapshot(ep{addr: "10.244.1.3", node: thisNode}))
	wantEqual(t, "endpoint change", ChangedServices(two, one), []string{"kube-system/kube-dns"})
	wantEqual(t, "no change", len(ChangedServices(one, one)), 0)
	wantEqual(t, "from nothing", ChangedServices(nil, one), []string{"default/web", "kube-system/kube-dns"})
	wantEqual(t, "to nothing", ChangedServices(one, &Model{}), []string{"default/web", "kube-system/kube-dns"})
}

func TestNodePortSkipsLoopback(t *testing.T) {
	node := testNode()
	node.Addresses = append(node.Addresses, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"))
	m, ps := Desired(Snapshot{Node: node, Config: DefaultConfig()})
	wantEqual(t, "addresses", m.NodePortAddresses, []netip.Addr{netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00::10")})
	wantReason(t, ps, ReasonNodePortAddressFiltered, 2)
}

func TestProblemsSaidOnce(t *testing.T) {
	// One bad address in a slice serving three ports is one problem.
	s := svc("default", "web", "10.96.0.20", ports(sport("a", corev1.ProtocolTCP, 1, 0), sport("b", corev1.ProtocolTCP, 2, 0), sport("c", corev1.ProtocolTCP, 3, 0)))
	sl := slice("default", "web", "web-1", discoveryv1.AddressTypeIPv4,
		[]discoveryv1.EndpointPort{eport("a", corev1.ProtocolTCP, 1), eport("b", corev1.ProtocolTCP, 2), eport("c", corev1.ProtocolTCP, 3)},
		ep{addr: "10.244.1.300", node: thisNode}, ep{addr: "10.244.1.3", node: thisNode})
	_, ps := Desired(Snapshot{Node: testNode(), Config: DefaultConfig(), Services: []*corev1.Service{s}, EndpointSlices: []*discoveryv1.EndpointSlice{sl}})
	wantReason(t, ps, ReasonInvalidIP, 1)
}
