package services

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

type desiredCase struct {
	name   string
	svcs   []*corev1.Service
	slices []*discoveryv1.EndpointSlice
	cfg    *Config // nil: DefaultConfig()
	node   *Node   // nil: testNode()
	check  func(t *testing.T, m *Model, ps []Problem)
}

func (c desiredCase) snapshot() Snapshot {
	s := Snapshot{Services: c.svcs, EndpointSlices: c.slices, Config: DefaultConfig(), Node: testNode()}
	if c.cfg != nil {
		s.Config = *c.cfg
	}
	if c.node != nil {
		s.Node = *c.node
	}
	return s
}

func wantEqual[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got  %#v\n want %#v", what, got, want)
	}
}

func wantReason(t *testing.T, ps []Problem, r Reason, n int) {
	t.Helper()
	if got := reasons(ps)[r]; got != n {
		t.Errorf("reason %s reported %d times, want %d; problems: %v", r, got, n, ps)
	}
}

const web = "default/web:http/TCP/IPv4"

var desiredCases = []desiredCase{
	{
		name:   "clusterIPReadyEndpoints",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.2.7", node: "node-b"}, ep{addr: "10.244.1.5", node: thisNode}, ep{addr: "10.244.3.9", node: "node-c"})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			p := findPort(t, m, web)
			wantEqual(t, "frontends", frontendStrings(p.Frontends), []string{"clusterIP 10.96.0.20:80/TCP -> " + web + "/cluster masq=offCluster"})
			tg := findTarget(t, m, web+"/cluster")
			wantEqual(t, "endpoints", addrPorts(tg.Endpoints), []string{"10.244.1.5:8080", "10.244.2.7:8080", "10.244.3.9:8080"})
			wantEqual(t, "local flags", []bool{tg.Endpoints[0].Local, tg.Endpoints[1].Local}, []bool{true, false})
			wantEqual(t, "verdict", tg.Verdict, VerdictDNAT)
			wantEqual(t, "problems", len(ps), 0)
		},
	},
	{
		name: "multiplePortsAndProtocols",
		svcs: []*corev1.Service{svc("kube-system", "kube-dns", "10.96.0.10", ports(
			sport("dns", corev1.ProtocolUDP, 53, 0), sport("dns-tcp", corev1.ProtocolTCP, 53, 0), sport("sig", corev1.ProtocolSCTP, 9000, 0)))},
		slices: []*discoveryv1.EndpointSlice{slice("kube-system", "kube-dns", "kube-dns-x", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{eport("dns", corev1.ProtocolUDP, 53), eport("dns-tcp", corev1.ProtocolTCP, 53), eport("sig", corev1.ProtocolSCTP, 9001)},
			ep{addr: "10.244.1.2", node: thisNode}, ep{addr: "10.244.2.2", node: "node-b"})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			s := findService(t, m, "kube-system/kube-dns")
			var keys []ServicePortKey
			for _, p := range s.Ports {
				keys = append(keys, p.Key)
			}
			wantEqual(t, "keys", keys, []ServicePortKey{"kube-system/kube-dns:dns/UDP/IPv4", "kube-system/kube-dns:dns-tcp/TCP/IPv4", "kube-system/kube-dns:sig/SCTP/IPv4"})
			wantEqual(t, "udp proto", findPort(t, m, "kube-system/kube-dns:dns/UDP/IPv4").Protocol, UDP)
			wantEqual(t, "sctp endpoints", addrPorts(findTarget(t, m, "kube-system/kube-dns:sig/SCTP/IPv4/cluster").Endpoints), []string{"10.244.1.2:9001", "10.244.2.2:9001"})
			wantEqual(t, "frontend rows", len(m.FrontendMap()), 3)
		},
	},
	{
		name: "portMatchedByNameAndProtocol",
		// Same port name on UDP and TCP: each Service port takes the slice
		// port of its own protocol.
		svcs: []*corev1.Service{svc("default", "dns", "10.96.0.53", ports(sport("dns", corev1.ProtocolUDP, 53, 0), sport("dns", corev1.ProtocolTCP, 53, 0)))},
		slices: []*discoveryv1.EndpointSlice{slice("default", "dns", "dns-1", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{eport("dns", corev1.ProtocolTCP, 1053), eport("dns", corev1.ProtocolUDP, 2053)}, ep{addr: "10.244.1.2", node: thisNode})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "udp", addrPorts(findTarget(t, m, "default/dns:dns/UDP/IPv4/cluster").Endpoints), []string{"10.244.1.2:2053"})
			wantEqual(t, "tcp", addrPorts(findTarget(t, m, "default/dns:dns/TCP/IPv4/cluster").Endpoints), []string{"10.244.1.2:1053"})
		},
	},
	{
		name: "namedTargetPortResolvedPerSlice",
		// Two Deployments behind one Service name their container port
		// "http" on different numbers; the controller makes one slice each.
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{
			v4slice("default", "web", "web-v1", 8080, ep{addr: "10.244.1.5", node: thisNode}),
			v4slice("default", "web", "web-v2", 9090, ep{addr: "10.244.2.6", node: "node-b"}),
		},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "endpoints", addrPorts(findTarget(t, m, web+"/cluster").Endpoints), []string{"10.244.1.5:8080", "10.244.2.6:9090"})
		},
	},
	{
		name:   "targetPortNobodyServesRejects",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20", ports(sport("metrics", corev1.ProtocolTCP, 9100, 0)))},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.1.5", node: thisNode})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			tg := findTarget(t, m, "default/web:metrics/TCP/IPv4/cluster")
			wantEqual(t, "verdict", tg.Verdict, VerdictReject)
			wantEqual(t, "reason", tg.Reason, ReasonNoEndpoints)
			wantReason(t, ps, ReasonNoEndpoints, 1)
		},
	},
	{
		name: "noEndpointsRejects",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20")},
		check: func(t *testing.T, m *Model, ps []Problem) {
			tg := findTarget(t, m, web+"/cluster")
			wantEqual(t, "verdict", tg.Verdict, VerdictReject)
			wantEqual(t, "endpoints", len(tg.Endpoints), 0)
			wantEqual(t, "endpoint rows", len(m.EndpointRows()), 0)
			wantEqual(t, "target rows", m.TargetRows(), []TargetRow{{Service: "default/web", Key: web + "/cluster", Family: IPv4, Protocol: TCP, Verdict: VerdictReject, Reason: ReasonNoEndpoints}})
			wantReason(t, ps, ReasonNoEndpoints, 1)
		},
	},
	{
		name:   "notReadyEndpointsExcluded",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.1.5", node: thisNode, notReady: true, notServing: true}, ep{addr: "10.244.1.6", node: thisNode})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "endpoints", addrPorts(findTarget(t, m, web+"/cluster").Endpoints), []string{"10.244.1.6:8080"})
		},
	},
	{
		name:   "onlyNotReadyRejects",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.1.5", node: thisNode, notReady: true, notServing: true})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "verdict", findTarget(t, m, web+"/cluster").Verdict, VerdictReject)
		},
	},
	{
		name: "terminatingIgnoredWhileReadyLeft",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080,
			ep{addr: "10.244.1.5", node: thisNode, notReady: true, terminating: true}, ep{addr: "10.244.2.5", node: "node-b"})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			tg := findTarget(t, m, web+"/cluster")
			wantEqual(t, "endpoints", addrPorts(tg.Endpoints), []string{"10.244.2.5:8080"})
			wantEqual(t, "reason", tg.Reason, Reason(""))
		},
	},
	{
		name: "terminatingFallback",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080,
			ep{addr: "10.244.1.5", node: thisNode, notReady: true, terminating: true},
			ep{addr: "10.244.1.6", node: thisNode, notReady: true, terminating: true, notServing: true})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			tg := findTarget(t, m, web+"/cluster")
			wantEqual(t, "endpoints", addrPorts(tg.Endpoints), []string{"10.244.1.5:8080"})
			wantEqual(t, "reason", tg.Reason, ReasonTerminatingFallback)
			wantEqual(t, "verdict", tg.Verdict, VerdictDNAT)
			wantReason(t, ps, ReasonTerminatingFallback, 1)
		},
	},
	{
		name: "terminatingFallbackPerPolicy",
		// With externalTrafficPolicy Local the local target falls back to
		// the local terminating endpoint while the cluster target still has
		// a ready remote one.
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", nodePortType(30080), etpLocal(0))},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080,
			ep{addr: "10.244.1.5", node: thisNode, notReady: true, terminating: true}, ep{addr: "10.244.2.5", node: "node-b"})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			local := findTarget(t, m, web+"/local")
			wantEqual(t, "local", addrPorts(local.Endpoints), []string{"10.244.1.5:8080"})
			wantEqual(t, "local reason", local.Reason, ReasonTerminatingFallback)
			cluster := findTarget(t, m, web+"/cluster")
			wantEqual(t, "cluster", addrPorts(cluster.Endpoints), []string{"10.244.2.5:8080"})
			wantEqual(t, "cluster reason", cluster.Reason, Reason(""))
		},
	},
	{
		name: "endpointsDeduplicatedAcrossSlices",
		// While the controller moves an endpoint between slices it shows up
		// twice; the ready copy wins whichever slice sorts first.
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{
			v4slice("default", "web", "web-b", 8080, ep{addr: "10.244.1.5", node: thisNode}, ep{addr: "10.244.2.5", node: "node-b"}),
			v4slice("default", "web", "web-a", 8080, ep{addr: "10.244.1.5", node: thisNode, notReady: true, terminating: true}),
		},
		check: func(t *testing.T, m *Model, ps []Problem) {
			tg := findTarget(t, m, web+"/cluster")
			wantEqual(t, "endpoints", addrPorts(tg.Endpoints), []string{"10.244.1.5:8080", "10.244.2.5:8080"})
			wantEqual(t, "ready copy kept", tg.Endpoints[0].Ready, true)
		},
	},
	{
		name: "otherAddressFamilySlicesIgnored",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{
			v4slice("default", "web", "web-v4", 8080, ep{addr: "10.244.1.5", node: thisNode}),
			slice("default", "web", "web-v6", discoveryv1.AddressTypeIPv6, httpPort(8080), ep{addr: "fd10::5", node: thisNode}),
			slice("default", "web", "web-fqdn", discoveryv1.AddressTypeFQDN, httpPort(8080), ep{addr: "web.example.com", node: thisNode}),
		},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "endpoints", addrPorts(findTarget(t, m, web+"/cluster").Endpoints), []string{"10.244.1.5:8080"})
			wantEqual(t, "ports", len(findService(t, m, "default/web").Ports), 1)
			wantReason(t, ps, ReasonUnsupportedAddressType, 1)
		},
	},
	{
		name: "servingDefaultsToTrueAsKubeProxy",
		// Serving unset reads as true (kube-proxy's EndpointSliceCache), so
		// a terminating endpoint without it is a fallback candidate.
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{func() *discoveryv1.EndpointSlice {
			sl := v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.1.5", node: thisNode, notReady: true, terminating: true})
			sl.Endpoints[0].Conditions.Serving = nil
			return sl
		}()},
		check: func(t *testing.T, m *Model, ps []Problem) {
			tg := findTarget(t, m, web+"/cluster")
			wantEqual(t, "endpoints", addrPorts(tg.Endpoints), []string{"10.244.1.5:8080"})
			wantEqual(t, "reason", tg.Reason, ReasonTerminatingFallback)
		},
	},
	{
		name: "duplicateEndpointPrefersLocalCopy",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", itpLocal)},
		slices: []*discoveryv1.EndpointSlice{
			v4slice("default", "web", "web-a", 8080, ep{addr: "10.244.1.5", node: ""}),
			v4slice("default", "web", "web-b", 8080, ep{addr: "10.244.1.5", node: thisNode}),
		},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "local endpoints", addrPorts(findTarget(t, m, web+"/local").Endpoints), []string{"10.244.1.5:8080"})
		},
	},
	{
		name: "endpointsWithoutAddressesIgnored",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080,
			ep{addr: "10.244.1.5", node: thisNode, noAddress: true}, ep{addr: "10.244.1.6", node: thisNode})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "endpoints", addrPorts(findTarget(t, m, web+"/cluster").Endpoints), []string{"10.244.1.6:8080"})
		},
	},
	{
		name: "selectorlessServiceWithManualSlices",
		svcs: []*corev1.Service{svc("default", "legacy-db", "10.96.5.5", noSelector, ports(sport("", corev1.ProtocolTCP, 5432, 0)))},
		slices: []*discoveryv1.EndpointSlice{{
			ObjectMeta:  metavObj("default", "legacy-db-1", map[string]string{discoveryv1.LabelServiceName: "legacy-db", discoveryv1.LabelManagedBy: "staff"}),
			AddressType: discoveryv1.AddressTypeIPv4,
			// Hand-written slices often leave name, protocol and conditions
			// unset: name "" and TCP and ready are the defaults.
			Ports:     []discoveryv1.EndpointPort{{Port: ptr[int32](5432)}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.40"}}},
		}},
		check: func(t *testing.T, m *Model, ps []Problem) {
			tg := findTarget(t, m, "default/legacy-db:/TCP/IPv4/cluster")
			wantEqual(t, "endpoints", addrPorts(tg.Endpoints), []string{"192.0.2.40:5432"})
			wantEqual(t, "remote", tg.Endpoints[0].Local, false)
		},
	},
	{
		name:   "slicesOfOtherNamespaceIgnored",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{v4slice("other", "web", "web-abc", 8080, ep{addr: "10.244.1.5", node: thisNode})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "verdict", findTarget(t, m, web+"/cluster").Verdict, VerdictReject)
		},
	},
	{
		name:   "headless",
		svcs:   []*corev1.Service{svc("default", "db", corev1.ClusterIPNone)},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "db", "db-abc", 5432, ep{addr: "10.244.1.5", node: thisNode})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "services", len(m.Services), 0)
			wantReason(t, ps, ReasonHeadless, 1)
		},
	},
	{
		name: "externalName",
		svcs: []*corev1.Service{func() *corev1.Service {
			s := svc("default", "ext", "")
			s.Spec.Type, s.Spec.ExternalName, s.Spec.ClusterIPs = corev1.ServiceTypeExternalName, "db.example.com", nil
			return s
		}()},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "services", len(m.Services), 0)
			wantEqual(t, "frontends", len(m.FrontendMap()), 0)
			wantReason(t, ps, ReasonExternalName, 1)
		},
	},
	{
		name:   "nodePortOnNodeAddresses",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20", nodePortType(30080))},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.2.5", node: "node-b"})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			p := findPort(t, m, web)
			wantEqual(t, "nodePort", p.NodePort, uint16(30080))
			wantEqual(t, "frontends", frontendStrings(p.Frontends), []string{
				"clusterIP 10.96.0.20:80/TCP -> " + web + "/cluster masq=offCluster",
				"nodePort 10.0.0.10:30080/TCP -> " + web + "/cluster masq=always",
				"nodePort 192.168.1.10:30080/TCP -> " + web + "/cluster masq=always",
			})
			wantEqual(t, "targets", len(p.Targets), 1)
		},
	},
	{
		name:   "nodePortAddressFiltered",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20", nodePortType(30080))},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.2.5", node: "node-b"})},
		cfg:    &Config{NATOutgoing: true, NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "node port addresses", m.NodePortAddresses, []netip.Addr{netip.MustParseAddr("192.168.1.10")})
			wantEqual(t, "frontends", frontendStrings(findPort(t, m, web).Frontends)[1:], []string{"nodePort 192.168.1.10:30080/TCP -> " + web + "/cluster masq=always"})
			wantReason(t, ps, ReasonNodePortAddressFiltered, 2) // 10.0.0.10 and fd00::10
		},
	},
	{
		name: "loadBalancerIngress",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", loadBalancer(30080,
			corev1.LoadBalancerIngress{IP: "203.0.113.7"},
			corev1.LoadBalancerIngress{Hostname: "lb.example.com"},
			corev1.LoadBalancerIngress{IP: "203.0.113.8", IPMode: ptr(corev1.LoadBalancerIPModeProxy)},
			corev1.LoadBalancerIngress{IP: "2001:db8::7"},
		))},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.2.5", node: "node-b"})},
		cfg:    &Config{NATOutgoing: true, NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "frontends", frontendStrings(findPort(t, m, web).Frontends), []string{
				"clusterIP 10.96.0.20:80/TCP -> " + web + "/cluster masq=offCluster",
				"loadBalancer 203.0.113.7:80/TCP -> " + web + "/cluster masq=always",
				"nodePort 192.168.1.10:30080/TCP -> " + web + "/cluster masq=always",
			})
			wantReason(t, ps, ReasonLoadBalancerIPModeProxy, 1)
			wantReason(t, ps, ReasonIPFamilyMismatch, 1)
		},
	},
	{
		name:   "externalIPs",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20", externalIPs("198.51.100.4", "not-an-ip"))},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.2.5", node: "node-b"})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "frontends", frontendStrings(findPort(t, m, web).Frontends), []string{
				"clusterIP 10.96.0.20:80/TCP -> " + web + "/cluster masq=offCluster",
				"externalIP 198.51.100.4:80/TCP -> " + web + "/cluster masq=always",
			})
			wantReason(t, ps, ReasonInvalidIP, 1)
		},
	},
	{
		name: "internalTrafficPolicyLocal",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", itpLocal)},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080,
			ep{addr: "10.244.1.5", node: thisNode}, ep{addr: "10.244.2.5", node: "node-b"})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			p := findPort(t, m, web)
			wantEqual(t, "frontends", frontendStrings(p.Frontends), []string{"clusterIP 10.96.0.20:80/TCP -> " + web + "/local masq=offCluster"})
			wantEqual(t, "targets", len(p.Targets), 1)
			wantEqual(t, "local endpoints", addrPorts(findTarget(t, m, web+"/local").Endpoints), []string{"10.244.1.5:8080"})
		},
	},
	{
		name:   "internalTrafficPolicyLocalNoLocalEndpointsDrops",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20", itpLocal)},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.2.5", node: "node-b"})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			tg := findTarget(t, m, web+"/local")
			wantEqual(t, "verdict", tg.Verdict, VerdictDrop)
			wantEqual(t, "reason", tg.Reason, ReasonNoLocalEndpoints)
			wantReason(t, ps, ReasonNoLocalEndpoints, 1)
		},
	},
	{
		name: "externalTrafficPolicyLocal",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", loadBalancer(30080, corev1.LoadBalancerIngress{IP: "203.0.113.7"}), etpLocal(32000))},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080,
			ep{addr: "10.244.1.5", node: thisNode}, ep{addr: "10.244.1.6", node: thisNode, notReady: true, terminating: true}, ep{addr: "10.244.2.5", node: "node-b"})},
		cfg: &Config{NATOutgoing: true, NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}},
		check: func(t *testing.T, m *Model, ps []Problem) {
			p := findPort(t, m, web)
			wantEqual(t, "frontends", frontendStrings(p.Frontends), []string{
				"clusterIP 10.96.0.20:80/TCP -> " + web + "/cluster masq=offCluster",
				"loadBalancer 203.0.113.7:80/TCP -> " + web + "/local pods-> " + web + "/cluster masq=nodeSource",
				"nodePort 192.168.1.10:30080/TCP -> " + web + "/local pods-> " + web + "/cluster masq=nodeSource",
			})
			wantEqual(t, "local", addrPorts(findTarget(t, m, web+"/local").Endpoints), []string{"10.244.1.5:8080"})
			wantEqual(t, "cluster", addrPorts(findTarget(t, m, web+"/cluster").Endpoints), []string{"10.244.1.5:8080", "10.244.2.5:8080"})
			// The terminating local endpoint does not count: the node drains.
			wantEqual(t, "health check", findService(t, m, "default/web").HealthCheck, &HealthCheck{NodePort: 32000, LocalEndpoints: 1})
		},
	},
	{
		name:   "externalTrafficPolicyLocalNoLocalEndpointsDrops",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20", loadBalancer(30080), etpLocal(32000))},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.2.5", node: "node-b"})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "local verdict", findTarget(t, m, web+"/local").Verdict, VerdictDrop)
			wantEqual(t, "cluster verdict", findTarget(t, m, web+"/cluster").Verdict, VerdictDNAT)
			wantEqual(t, "health check", findService(t, m, "default/web").HealthCheck, &HealthCheck{NodePort: 32000, LocalEndpoints: 0})
		},
	},
	{
		name: "externalTrafficPolicyLocalWithoutAnyEndpointRejects",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", loadBalancer(30080), etpLocal(32000))},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "local verdict", findTarget(t, m, web+"/local").Verdict, VerdictReject)
			wantEqual(t, "cluster verdict", findTarget(t, m, web+"/cluster").Verdict, VerdictReject)
			wantReason(t, ps, ReasonNoEndpoints, 1)
		},
	},
	{
		name:   "masqueradeAll",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20", nodePortType(30080), etpLocal(0))},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.1.5", node: thisNode})},
		cfg:    &Config{MasqueradeAll: true, NATOutgoing: true},
		check: func(t *testing.T, m *Model, ps []Problem) {
			for _, f := range m.FrontendMap() {
				if f.Masquerade != MasqueradeAlways {
					t.Errorf("%s %s masquerade %s, want always", f.Kind, f.Addr, f.Masquerade)
				}
			}
			wantEqual(t, "model flag", m.MasqueradeAll, true)
		},
	},
	{
		name:   "clusterIPNoMasqueradeWithoutClusterCIDRs",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.1.5", node: thisNode})},
		node:   &Node{Name: thisNode},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "masquerade", findPort(t, m, web).Frontends[0].Masquerade, MasqueradeNever)
			wantEqual(t, "natOutgoing", len(m.NATOutgoing), 0)
		},
	},
	{
		name: "natOutgoingDefault",
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "natOutgoing", m.NATOutgoing, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd10::/56")})
		},
	},
	{
		name: "natOutgoingDisabled",
		cfg:  &Config{},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "natOutgoing", len(m.NATOutgoing), 0)
			wantEqual(t, "clusterCIDRs still known", len(m.ClusterCIDRs), 2)
		},
	},
	{
		name:   "sessionAffinityClientIPDefaultTimeout",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20", affinity(nil))},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.1.5", node: thisNode})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "port affinity", findPort(t, m, web).Affinity, &Affinity{TimeoutSeconds: 10800})
			wantEqual(t, "target affinity", m.TargetRows()[0].Affinity, &Affinity{TimeoutSeconds: 10800})
		},
	},
	{
		name:   "sessionAffinityClientIPTimeout",
		svcs:   []*corev1.Service{svc("default", "web", "10.96.0.20", affinity(ptr[int32](60)))},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.1.5", node: thisNode})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "affinity", findTarget(t, m, web+"/cluster").Affinity, &Affinity{TimeoutSeconds: 60})
		},
	},
	{
		name: "dualStack",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", clusterIPs("10.96.0.20", "fd00:96::20"), nodePortType(30080))},
		slices: []*discoveryv1.EndpointSlice{
			v4slice("default", "web", "web-v4", 8080, ep{addr: "10.244.1.5", node: thisNode}),
			slice("default", "web", "web-v6", discoveryv1.AddressTypeIPv6, httpPort(8080), ep{addr: "fd10::5", node: thisNode}),
		},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "v4", addrPorts(findTarget(t, m, web+"/cluster").Endpoints), []string{"10.244.1.5:8080"})
			wantEqual(t, "v6", addrPorts(findTarget(t, m, "default/web:http/TCP/IPv6/cluster").Endpoints), []string{"[fd10::5]:8080"})
			wantEqual(t, "v6 frontends", frontendStrings(findPort(t, m, "default/web:http/TCP/IPv6").Frontends), []string{
				"clusterIP [fd00:96::20]:80/TCP -> default/web:http/TCP/IPv6/cluster masq=offCluster",
				"nodePort [fd00::10]:30080/TCP -> default/web:http/TCP/IPv6/cluster masq=always",
			})
		},
	},
	{
		name: "frontendConflict",
		svcs: []*corev1.Service{
			svc("default", "b", "10.96.0.21", externalIPs("198.51.100.4")),
			svc("default", "a", "10.96.0.20", externalIPs("198.51.100.4")),
		},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "a keeps it", len(findPort(t, m, "default/a:http/TCP/IPv4").Frontends), 2)
			wantEqual(t, "b loses it", len(findPort(t, m, "default/b:http/TCP/IPv4").Frontends), 1)
			wantReason(t, ps, ReasonFrontendConflict, 1)
			wantEqual(t, "conflict owner", ps[len(ps)-1].Service, "default/b")
		},
	},
	{
		name: "unsupportedProtocol",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", ports(sport("x", corev1.Protocol("ICMP"), 1, 0)))},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "services", len(m.Services), 0)
			wantReason(t, ps, ReasonUnsupportedProtocol, 1)
		},
	},
	{
		name: "duplicatePortKeepsFirst",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", ports(sport("http", corev1.ProtocolTCP, 80, 0), sport("http", corev1.ProtocolTCP, 81, 0)))},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "port", findPort(t, m, web).Port, uint16(80))
			wantEqual(t, "ports", len(findService(t, m, "default/web").Ports), 1)
			wantReason(t, ps, ReasonDuplicatePort, 1)
		},
	},
	{
		name: "noClusterIPYet",
		svcs: []*corev1.Service{svc("default", "web", "")},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "services", len(m.Services), 0)
			wantReason(t, ps, ReasonNoClusterIP, 1)
		},
	},
	{
		name: "flatViewsBuckets",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-abc", 8080,
			ep{addr: "10.244.2.7", node: "node-b"}, ep{addr: "10.244.1.5", node: thisNode})},
		check: func(t *testing.T, m *Model, ps []Problem) {
			wantEqual(t, "frontend map", m.FrontendMap(), []FrontendRow{{Service: "default/web", Kind: ClusterIP, Addr: netip.MustParseAddr("10.96.0.20"), Protocol: TCP, Port: 80, Target: web + "/cluster", Masquerade: MasqueradeOffCluster}})
			wantEqual(t, "endpoint rows", m.EndpointRows(), []EndpointRow{
				{Service: "default/web", Target: web + "/cluster", Family: IPv4, Bucket: 0, Addr: netip.MustParseAddr("10.244.1.5"), Port: 8080},
				{Service: "default/web", Target: web + "/cluster", Family: IPv4, Bucket: 1, Addr: netip.MustParseAddr("10.244.2.7"), Port: 8080},
			})
			wantEqual(t, "count", m.TargetRows()[0].Count, 2)
		},
	},
}

func TestDesired(t *testing.T) {
	for _, c := range desiredCases {
		t.Run(c.name, func(t *testing.T) {
			snap := c.snapshot()
			m, ps := Desired(snap)
			c.check(t, m, ps)
			checkInvariants(t, snap, m)
			// Same input, same output: the applier diffs consecutive models.
			m2, ps2 := Desired(snap)
			if m.String() != m2.String() || !reflect.DeepEqual(ps, ps2) {
				t.Errorf("second run differs")
			}
		})
	}
}

// TestDesiredInputOrderIrrelevant shuffles the inputs: informer listings
// come in no particular order.
func TestDesiredInputOrderIrrelevant(t *testing.T) {
	var snap Snapshot
	for _, c := range desiredCases {
		snap.Services = append(snap.Services, c.svcs...)
		snap.EndpointSlices = append(snap.EndpointSlices, c.slices...)
	}
	snap.Node, snap.Config = testNode(), DefaultConfig()
	m, ps := Desired(snap)
	rev := snap
	rev.Services = slices.Clone(snap.Services)
	rev.EndpointSlices = slices.Clone(snap.EndpointSlices)
	slices.Reverse(rev.Services)
	slices.Reverse(rev.EndpointSlices)
	m2, ps2 := Desired(rev)
	if m.String() != m2.String() {
		t.Errorf("model depends on input order:\n%s\nvs\n%s", m, m2)
	}
	if !reflect.DeepEqual(ps, ps2) {
		t.Errorf("problems depend on input order:\n%v\nvs\n%v", ps, ps2)
	}
	checkInvariants(t, snap, m)
}

// TestEndpointChangeTouchesOnlyItsService is the contract the applier's
// per-Service diff relies on.
func TestEndpointChangeTouchesOnlyItsService(t *testing.T) {
	snap := Snapshot{Node: testNode(), Config: DefaultConfig(),
		Services: []*corev1.Service{svc("default", "web", "10.96.0.20"), svc("default", "api", "10.96.0.21")},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			v4slice("default", "web", "web-abc", 8080, ep{addr: "10.244.1.5", node: thisNode}),
			v4slice("default", "api", "api-abc", 8080, ep{addr: "10.244.1.9", node: thisNode}, ep{addr: "10.244.2.9", node: "node-b"}),
		}}
	before, _ := Desired(snap)
	snap.EndpointSlices[1] = v4slice("default", "api", "api-abc", 8080, ep{addr: "10.244.1.9", node: thisNode})
	after, _ := Desired(snap)

	changed := map[string]bool{}
	rowsByService := func(m *Model) map[string][]EndpointRow {
		out := map[string][]EndpointRow{}
		for _, r := range m.EndpointRows() {
			out[r.Service] = append(out[r.Service], r)
		}
		return out
	}
	b, a := rowsByService(before), rowsByService(after)
	for _, id := range []string{"default/web", "default/api"} {
		if !reflect.DeepEqual(b[id], a[id]) {
			changed[id] = true
		}
	}
	wantEqual(t, "changed services", changed, map[string]bool{"default/api": true})
	wantEqual(t, "frontends unchanged", after.FrontendMap(), before.FrontendMap())
}

// checkInvariants holds for every model; the fuzz test calls it too.
func checkInvariants(t *testing.T, snap Snapshot, m *Model) {
	t.Helper()
	targets := map[TargetKey]Target{}
	keys := map[TargetKey]bool{}
	for _, r := range m.TargetRows() {
		if keys[r.Key] {
			t.Errorf("duplicate target %s", r.Key)
		}
		keys[r.Key] = true
	}
	for _, s := range m.Services {
		for _, p := range s.Ports {
			for _, tg := range p.Targets {
				targets[tg.Key] = tg
				if tg.Verdict != VerdictDNAT && len(tg.Endpoints) > 0 {
					t.Errorf("target %s verdict %s with endpoints", tg.Key, tg.Verdict)
				}
				if tg.Verdict == VerdictDNAT && len(tg.Endpoints) == 0 {
					t.Errorf("target %s dnat without endpoints", tg.Key)
				}
				anyReady := false
				for _, e := range tg.Endpoints {
					anyReady = anyReady || e.Ready
					if familyOf(e.Addr) != p.Family {
						t.Errorf("target %s: endpoint %s in wrong family", tg.Key, e.Addr)
					}
					if tg.Scope == ScopeLocal && !e.Local {
						t.Errorf("local target %s has remote endpoint %s on %q", tg.Key, e.AddrPort(), e.NodeName)
					}
					if e.Local != (e.NodeName == snap.Node.Name && e.NodeName != "") {
						t.Errorf("endpoint %s local=%v on node %q", e.AddrPort(), e.Local, e.NodeName)
					}
				}
				for _, e := range tg.Endpoints {
					if tg.Reason == ReasonTerminatingFallback {
						if e.Ready || !e.Serving || !e.Terminating {
							t.Errorf("fallback target %s has non-fallback endpoint %+v", tg.Key, e)
						}
					} else if !e.Ready {
						t.Errorf("target %s has unready endpoint %+v without fallback", tg.Key, e)
					}
				}
				if !slices.IsSortedFunc(tg.Endpoints, func(a, b Endpoint) int { return a.AddrPort().Compare(b.AddrPort()) }) {
					t.Errorf("target %s endpoints unsorted", tg.Key)
				}
				if len(slices.CompactFunc(slices.Clone(tg.Endpoints), func(a, b Endpoint) bool { return a.AddrPort() == b.AddrPort() })) != len(tg.Endpoints) {
					t.Errorf("target %s has duplicate endpoints", tg.Key)
				}
			}
		}
	}
	seen := map[frontendKey]bool{}
	rows := m.FrontendMap()
	for _, f := range rows {
		k := frontendKey{f.Addr, f.Protocol, f.Port}
		if seen[k] {
			t.Errorf("duplicate frontend %s %s", netip.AddrPortFrom(f.Addr, f.Port), f.Protocol)
		}
		seen[k] = true
		tg, ok := targets[f.Target]
		if !ok {
			t.Errorf("frontend %s has no target %s", f.Addr, f.Target)
		}
		if f.PodTarget != "" {
			if _, ok := targets[f.PodTarget]; !ok {
				t.Errorf("frontend %s has no pod target %s", f.Addr, f.PodTarget)
			}
		}
		if f.Kind == NodePort && !slices.Contains(m.NodePortAddresses, f.Addr) {
			t.Errorf("nodePort on filtered address %s", f.Addr)
		}
		if ok && f.Kind.External() && f.PodTarget != "" && tg.Scope != ScopeLocal {
			t.Errorf("external frontend %s with pod short-circuit targets %s", f.Addr, tg.Scope)
		}
	}
	// Every target is reachable from some frontend, so the renderer never
	// programs unreachable endpoint elements.
	used := map[TargetKey]bool{}
	for _, f := range rows {
		used[f.Target], used[f.PodTarget] = true, true
	}
	for k := range targets {
		if !used[k] {
			t.Errorf("target %s is unused", k)
		}
	}
	counts := map[TargetKey]int{}
	for _, r := range m.EndpointRows() {
		if r.Bucket != counts[r.Target] {
			t.Errorf("target %s bucket %d out of sequence", r.Target, r.Bucket)
		}
		counts[r.Target]++
	}
	for _, r := range m.TargetRows() {
		if counts[r.Key] != r.Count {
			t.Errorf("target %s count %d, rows %d", r.Key, r.Count, counts[r.Key])
		}
	}
}
