package servicenft

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/services"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

const web = "default/web:http/TCP/IPv4"

type renderCase struct {
	name   string
	svcs   []*corev1.Service
	slices []*discoveryv1.EndpointSlice
	cfg    *services.Config // nil: services.DefaultConfig()
	check  func(t *testing.T, m *services.Model, tbl nft.Table)
}

func (c renderCase) model(t *testing.T) *services.Model {
	t.Helper()
	s := services.Snapshot{Services: c.svcs, EndpointSlices: c.slices, Config: services.DefaultConfig(), Node: testNode()}
	if c.cfg != nil {
		s.Config = *c.cfg
	}
	m, _ := services.Desired(s)
	return m
}

func wantEq[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

func wantSlice(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got  %q\n want %q", what, got, want)
	}
}

func wantElem(t *testing.T, tbl nft.Table, mapName, key, want string) {
	t.Helper()
	got, ok := elem(t, tbl, mapName, key)
	if !ok {
		t.Errorf("map %s has no element %q; elements %v", mapName, key, findMap(t, tbl, mapName).Elements)
		return
	}
	wantEq(t, mapName+"["+key+"]", got, want)
}

func noElem(t *testing.T, tbl nft.Table, mapName, key string) {
	t.Helper()
	if v, ok := elem(t, tbl, mapName, key); ok {
		t.Errorf("map %s has %q : %q, want none", mapName, key, v)
	}
}

var renderCases = []renderCase{
	{
		name: "clusterIPTwoEndpoints",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20")},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-1", 8080,
			ep{addr: "10.244.2.7", node: "node-b"}, ep{addr: "10.244.1.5", node: thisNode})},
		check: func(t *testing.T, m *services.Model, tbl nft.Table) {
			id := id(m, web+"/cluster")
			svcChain := TargetChain(id)
			wantElem(t, tbl, MapFrontends, "10.96.0.20 . tcp . 80", "goto "+svcChain)
			// One rule, no goto: endpoints are elements of the shared map.
			wantSlice(t, "target chain", chainRules(t, tbl, svcChain), []string{
				fmt.Sprintf("meta l4proto tcp dnat ip to %d . numgen random mod 2 map @%s", id, EndpointsMap(id)),
			})
			wantElem(t, tbl, EndpointsMap(id), fmt.Sprintf("%d . 0", id), "10.244.1.5 . 8080")
			wantElem(t, tbl, EndpointsMap(id), fmt.Sprintf("%d . 1", id), "10.244.2.7 . 8080")
			wantEq(t, "endpoint elements", endpointElems(tbl), 2)
			wantSlice(t, "hairpin", setKeys(t, tbl, SetHairpin), []string{"10.244.1.5 . 10.244.1.5", "10.244.2.7 . 10.244.2.7"})
			wantSlice(t, "chains", chainsWithPrefix(tbl, "ep-"), nil)
			// ClusterIPs masquerade sources outside the cluster only.
			wantSlice(t, "masq offcluster", setKeys(t, tbl, SetMasqOffClust), []string{"10.96.0.20 . tcp . 80"})
			wantSlice(t, "masq always", setKeys(t, tbl, SetMasqAlways), []string{})
			wantSlice(t, "cluster cidrs (IPv4 only)", setKeys(t, tbl, SetClusterCIDRs), []string{"10.244.0.0/16"})
			wantSlice(t, "nat outgoing", setKeys(t, tbl, SetNATOutgoing), []string{"10.244.0.0/16"})
			wantEq(t, "no-endpoints elements", len(findMap(t, tbl, MapNoEndpoints).Elements), 0)
			wantSlice(t, "postrouting", chainRules(t, tbl, ChainNATPostrouting), []string{
				"meta mark & 0x00004000 == 0x00004000 masquerade fully-random",
				"ip saddr . ip daddr @services-hairpin masquerade fully-random",
				"ip saddr @services-nat-outgoing ip daddr != @services-nat-outgoing masquerade fully-random",
			})
			// No affinity: no sets or maps beyond the fixed ones.
			wantEq(t, "sets", len(tbl.Sets), 5)
			wantEq(t, "maps", len(tbl.Maps), 2+EndpointShards)
		},
	},
	{
		name: "noEndpointsRejects",
		svcs: []*corev1.Service{
			svc("default", "web", "10.96.0.20", nodePortType(30080)),
			svc("default", "dns", "10.96.0.10", ports(sport("dns", corev1.ProtocolUDP, 53))),
		},
		check: func(t *testing.T, m *services.Model, tbl nft.Table) {
			wantElem(t, tbl, MapNoEndpoints, "10.96.0.20 . tcp . 80", "goto services-reject")
			wantElem(t, tbl, MapNoEndpoints, "192.168.1.10 . tcp . 30080", "goto services-reject")
			wantElem(t, tbl, MapNoEndpoints, "10.96.0.10 . udp . 53", "goto services-reject")
			wantEq(t, "frontends", len(findMap(t, tbl, MapFrontends).Elements), 0)
			wantSlice(t, "svc chains", chainsWithPrefix(tbl, "svc-"), nil)
			wantSlice(t, "reject chain", chainRules(t, tbl, ChainReject), []string{"meta l4proto tcp reject with tcp reset", "reject"})
			for _, c := range []string{ChainFilterPrerouting, ChainFilterOutput} {
				wantSlice(t, c, chainRules(t, tbl, c), []string{"ct state new ip daddr . meta l4proto . th dport vmap @services-no-endpoints"})
			}
		},
	},
	{
		name: "nodePortCluster",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", nodePortType(30080))},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-1", 8080,
			ep{addr: "10.244.2.7", node: "node-b"})},
		check: func(t *testing.T, m *services.Model, tbl nft.Table) {
			c := "goto " + TargetChain(id(m, web+"/cluster"))
			wantElem(t, tbl, MapFrontends, "10.96.0.20 . tcp . 80", c)
			// NodePorts on the node's IPv4 address only; fd00::10 is left out.
			wantElem(t, tbl, MapFrontends, "192.168.1.10 . tcp . 30080", c)
			wantEq(t, "frontends", len(findMap(t, tbl, MapFrontends).Elements), 2)
			wantSlice(t, "masq always", setKeys(t, tbl, SetMasqAlways), []string{"192.168.1.10 . tcp . 30080"})
		},
	},
	{
		name: "externalTrafficPolicyLocal",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", loadBalancer(30080, "203.0.113.7"), externalIPs("198.51.100.3"), etpLocal)},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-1", 8080,
			ep{addr: "10.244.2.7", node: "node-b"}, ep{addr: "10.244.1.5", node: thisNode})},
		check: func(t *testing.T, m *services.Model, tbl nft.Table) {
			cluster, local := id(m, web+"/cluster"), id(m, web+"/local")
			wantElem(t, tbl, MapFrontends, "10.96.0.20 . tcp . 80", "goto "+TargetChain(cluster))
			for _, k := range []string{"203.0.113.7 . tcp . 80", "198.51.100.3 . tcp . 80", "192.168.1.10 . tcp . 30080"} {
				wantElem(t, tbl, MapFrontends, k, "goto "+ExtChain(local))
			}
			wantSlice(t, "ext chain", chainRules(t, tbl, ExtChain(local)), []string{
				"ip saddr @services-cluster-cidrs goto " + TargetChain(cluster),
				"fib saddr type local meta mark set meta mark | 0x00004000 goto " + TargetChain(cluster),
				"goto " + TargetChain(local),
			})
			wantSlice(t, "local target", chainRules(t, tbl, TargetChain(local)), []string{
				fmt.Sprintf("meta l4proto tcp dnat ip to %d . numgen random mod 1 map @%s", local, EndpointsMap(local)),
			})
			wantElem(t, tbl, EndpointsMap(local), fmt.Sprintf("%d . 0", local), "10.244.1.5 . 8080")
			wantElem(t, tbl, EndpointsMap(cluster), fmt.Sprintf("%d . 1", cluster), "10.244.2.7 . 8080")
			// The client address is kept: no masquerade for external frontends.
			wantSlice(t, "masq always", setKeys(t, tbl, SetMasqAlways), []string{})
		},
	},
	{
		name: "externalTrafficPolicyLocalNoLocalEndpointsDrops",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", loadBalancer(30080, "203.0.113.7"), etpLocal)},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-1", 8080,
			ep{addr: "10.244.2.7", node: "node-b"})},
		check: func(t *testing.T, m *services.Model, tbl nft.Table) {
			cluster, local := id(m, web+"/cluster"), id(m, web+"/local")
			wantElem(t, tbl, MapFrontends, "203.0.113.7 . tcp . 80", "goto "+ExtChain(local))
			// Pods and the node still reach the cluster target; the rest
			// falls through to the drop in filter.
			wantSlice(t, "ext chain", chainRules(t, tbl, ExtChain(local)), []string{
				"ip saddr @services-cluster-cidrs goto " + TargetChain(cluster),
				"fib saddr type local meta mark set meta mark | 0x00004000 goto " + TargetChain(cluster),
			})
			if hasChain(tbl, TargetChain(local)) {
				t.Errorf("chain for the empty local target rendered")
			}
			wantElem(t, tbl, MapNoEndpoints, "203.0.113.7 . tcp . 80", "drop")
			wantElem(t, tbl, MapNoEndpoints, "192.168.1.10 . tcp . 30080", "drop")
			noElem(t, tbl, MapNoEndpoints, "10.96.0.20 . tcp . 80")
		},
	},
	{
		name: "internalTrafficPolicyLocalNoLocalEndpointsDrops",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", itpLocal)},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-1", 8080,
			ep{addr: "10.244.2.7", node: "node-b"})},
		check: func(t *testing.T, m *services.Model, tbl nft.Table) {
			wantElem(t, tbl, MapNoEndpoints, "10.96.0.20 . tcp . 80", "drop")
			noElem(t, tbl, MapFrontends, "10.96.0.20 . tcp . 80")
		},
	},
	{
		name: "sessionAffinity",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", affinity(600)), svc("default", "plain", "10.96.0.21")},
		slices: []*discoveryv1.EndpointSlice{
			v4slice("default", "web", "web-1", 8080, ep{addr: "10.244.2.7", node: "node-b"}, ep{addr: "10.244.1.5", node: thisNode}),
			v4slice("default", "plain", "plain-1", 8080, ep{addr: "10.244.2.8", node: "node-b"}),
		},
		check: func(t *testing.T, m *services.Model, tbl nft.Table) {
			plain := TargetChain(id(m, "default/plain:http/TCP/IPv4/cluster"))
			id := id(m, web+"/cluster")
			ep := m.Services[slices.IndexFunc(m.Services, func(s services.Service) bool { return s.Name == "web" })].Ports[0].Targets[0].Endpoints
			client := fmt.Sprintf("%d . %d . ip saddr", id, affinityEpoch(ep))
			wantSlice(t, "target chain", chainRules(t, tbl, TargetChain(id)), []string{
				"meta l4proto tcp dnat ip to " + client + " map @services-affinity-600 record @services-affinity-600 { " + client + " }",
				fmt.Sprintf("meta l4proto tcp dnat ip to %d . numgen random mod 2 map @%s record @services-affinity-600 { %s }", id, EndpointsMap(id), client),
			})
			wantEq(t, "plain chain", len(chainRules(t, tbl, plain)), 1)
			a := findMap(t, tbl, AffinityMap(600))
			wantEq(t, "dynamic", a.Dynamic, true)
			wantEq(t, "timeout", a.Timeout.String(), "10m0s")
			wantEq(t, "affinity key", fmt.Sprint(a.KeyType), "[mark mark ipv4_addr]")
			// One affinity map per timeout, whatever the number of Services.
			wantEq(t, "maps", len(tbl.Maps), 2+EndpointShards+1)
		},
	},
	{
		name: "multiplePortsAndProtocols",
		svcs: []*corev1.Service{svc("kube-system", "dns", "10.96.0.10", ports(sport("dns", corev1.ProtocolUDP, 53), sport("dns-tcp", corev1.ProtocolTCP, 53), sport("sctp", corev1.ProtocolSCTP, 9)))},
		slices: []*discoveryv1.EndpointSlice{slice("kube-system", "dns", "dns-1", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{eport("dns", corev1.ProtocolUDP, 5353), eport("dns-tcp", corev1.ProtocolTCP, 5353), eport("sctp", corev1.ProtocolSCTP, 9999)},
			ep{addr: "10.244.1.9", node: thisNode})},
		check: func(t *testing.T, m *services.Model, tbl nft.Table) {
			u := id(m, "kube-system/dns:dns/UDP/IPv4/cluster")
			wantElem(t, tbl, MapFrontends, "10.96.0.10 . udp . 53", "goto "+TargetChain(u))
			wantElem(t, tbl, MapFrontends, "10.96.0.10 . tcp . 53", "goto "+TargetChain(id(m, "kube-system/dns:dns-tcp/TCP/IPv4/cluster")))
			wantElem(t, tbl, MapFrontends, "10.96.0.10 . sctp . 9", "goto "+TargetChain(id(m, "kube-system/dns:sctp/SCTP/IPv4/cluster")))
			wantSlice(t, "udp target", chainRules(t, tbl, TargetChain(u)), []string{
				fmt.Sprintf("meta l4proto udp dnat ip to %d . numgen random mod 1 map @%s", u, EndpointsMap(u)),
			})
			wantElem(t, tbl, EndpointsMap(u), fmt.Sprintf("%d . 0", u), "10.244.1.9 . 5353")
			wantSlice(t, "hairpin (one per address)", setKeys(t, tbl, SetHairpin), []string{"10.244.1.9 . 10.244.1.9"})
		},
	},
	{
		name: "dualStackRendersIPv4Only",
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", dualStack("fd00:96::20"))},
		slices: []*discoveryv1.EndpointSlice{
			v4slice("default", "web", "web-1", 8080, ep{addr: "10.244.1.5", node: thisNode}),
			slice("default", "web", "web-2", discoveryv1.AddressTypeIPv6, []discoveryv1.EndpointPort{eport("http", corev1.ProtocolTCP, 8080)}, ep{addr: "fd10::5", node: thisNode}),
		},
		check: func(t *testing.T, m *services.Model, tbl nft.Table) {
			wantEq(t, "frontends", len(findMap(t, tbl, MapFrontends).Elements), 1)
			wantEq(t, "endpoint elements", endpointElems(tbl), 1)
			if strings.Contains(tbl.String(), "fd") {
				t.Errorf("IPv6 in the table:\n%s", tbl)
			}
		},
	},
	{
		name: "masqueradeAll",
		cfg:  &services.Config{MasqueradeAll: true, NATOutgoing: true},
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20", nodePortType(30080), etpLocal)},
		slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-1", 8080,
			ep{addr: "10.244.1.5", node: thisNode})},
		check: func(t *testing.T, m *services.Model, tbl nft.Table) {
			wantSlice(t, "masq always", setKeys(t, tbl, SetMasqAlways), []string{"10.96.0.20 . tcp . 80", "192.168.1.10 . tcp . 30080"})
			wantSlice(t, "masq offcluster", setKeys(t, tbl, SetMasqOffClust), []string{})
			// Already marked by the set: the node short-circuit only jumps.
			wantEq(t, "node rule", chainRules(t, tbl, ExtChain(id(m, web+"/local")))[1], "fib saddr type local goto "+TargetChain(id(m, web+"/cluster")))
		},
	},
	{
		name: "natOutgoingDisabled",
		cfg:  &services.Config{},
		svcs: []*corev1.Service{svc("default", "web", "10.96.0.20")},
		check: func(t *testing.T, m *services.Model, tbl nft.Table) {
			wantSlice(t, "nat outgoing", setKeys(t, tbl, SetNATOutgoing), []string{})
			wantSlice(t, "cluster cidrs", setKeys(t, tbl, SetClusterCIDRs), []string{"10.244.0.0/16"})
		},
	},
	{
		name: "empty",
		check: func(t *testing.T, m *services.Model, tbl nft.Table) {
			// The fixed layout is there without Services, so the first
			// Service adds elements only.
			wantEq(t, "chains", len(tbl.Chains), 7)
			wantEq(t, "maps", len(tbl.Maps), 2+EndpointShards)
			wantEq(t, "sets", len(tbl.Sets), 5)
		},
	},
}

// endpointElems counts the elements of all endpoint maps.
func endpointElems(tbl nft.Table) int {
	n := 0
	for _, m := range tbl.Maps {
		if strings.HasPrefix(m.Name, "services-endpoints-") {
			n += len(m.Elements)
		}
	}
	return n
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (go test -update creates it): %v", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it)\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestRender(t *testing.T) {
	for _, c := range renderCases {
		t.Run(c.name, func(t *testing.T) {
			m := c.model(t)
			tbl := Render(m, DefaultConfig())
			c.check(t, m, tbl)
			checkGolden(t, c.name, tbl.String())
			if again := Render(m, DefaultConfig()); again.String() != tbl.String() {
				t.Errorf("Render is not deterministic")
			}
		})
	}
}

// TestNamesLeavePolicyAlone: every object is under the services prefixes,
// none under the policy renderer's "pol".
func TestNamesLeavePolicyAlone(t *testing.T) {
	for _, c := range renderCases {
		tbl := Render(c.model(t), DefaultConfig())
		var names []string
		for _, x := range tbl.Chains {
			names = append(names, x.Name)
		}
		for _, x := range tbl.Sets {
			names = append(names, x.Name)
		}
		for _, x := range tbl.Maps {
			names = append(names, x.Name)
		}
		for _, n := range names {
			if !(n == "services" || strings.HasPrefix(n, "services-") || strings.HasPrefix(n, "svc-")) {
				t.Errorf("%s: object %s outside the services prefixes", c.name, n)
			}
		}
	}
}

func TestMasqueradeMark(t *testing.T) {
	c := renderCases[0]
	tbl := Render(c.model(t), Config{MasqueradeMark: 0x8000})
	if s := tbl.String(); strings.Contains(s, "0x00004000") || !strings.Contains(s, "meta mark & 0x00008000 == 0x00008000 masquerade") {
		t.Errorf("mark 0x8000 not used throughout:\n%s", s)
	}
}

func TestTargetIDs(t *testing.T) {
	keys := []services.TargetKey{"a", "b", "c"}
	ids := TargetIDs(keys)
	for _, k := range keys {
		h := fnv32a(string(k))
		wantEq(t, "id of "+string(k), ids[k], h)
	}
	// Order of the input does not matter.
	rev := TargetIDs([]services.TargetKey{"c", "b", "a"})
	for _, k := range keys {
		wantEq(t, "reordered id of "+string(k), rev[k], ids[k])
	}
}

// TestTargetIDCollisions checks the probing with a hash that collides on
// purpose: distinct ids, the smallest key of a group keeps the hash, keys
// whose hash nobody shares keep it even when a loser probes past them.
func TestTargetIDCollisions(t *testing.T) {
	h := map[services.TargetKey]uint32{"a": 10, "b": 10, "c": 11, "d": 10, "e": 13}
	ids := assignIDs([]services.TargetKey{"e", "d", "c", "b", "a"}, func(k services.TargetKey) uint32 { return h[k] })
	want := map[services.TargetKey]uint32{"a": 10, "c": 11, "b": 12, "e": 13, "d": 14}
	for k, v := range want {
		wantEq(t, "id of "+string(k), ids[k], v)
	}
	// Adding a key that hashes elsewhere moves nobody.
	h["f"] = 99
	more := assignIDs([]services.TargetKey{"a", "b", "c", "d", "e", "f"}, func(k services.TargetKey) uint32 { return h[k] })
	for k, v := range want {
		wantEq(t, "id of "+string(k)+" after adding f", more[k], v)
	}
}

// TestTargetIDsRealCollision finds a real FNV-1a collision among Service
// target keys (a birthday search, about 80k keys) and checks both keys get
// distinct ids.
func TestTargetIDsRealCollision(t *testing.T) {
	if testing.Short() {
		t.Skip("birthday search over ~80k keys")
	}
	seen := map[uint32]services.TargetKey{}
	var keys []services.TargetKey
	var a, b services.TargetKey
	for i := 0; a == "" && i < 1<<21; i++ {
		k := services.TargetKey(fmt.Sprintf("ns/svc-%d:http/TCP/IPv4/cluster", i))
		keys = append(keys, k)
		h := fnv32a(string(k))
		if o, ok := seen[h]; ok {
			a, b = min(o, k), max(o, k)
		}
		seen[h] = k
	}
	if a == "" {
		t.Fatal("no collision found")
	}
	ids := TargetIDs(keys)
	wantEq(t, "smaller key keeps its hash", ids[a], fnv32a(string(a)))
	if ids[b] == ids[a] {
		t.Errorf("colliding keys %s and %s share id %d", a, b, ids[a])
	}
	used := map[uint32]bool{}
	for _, id := range ids {
		if used[id] {
			t.Fatalf("id %d given twice", id)
		}
		used[id] = true
	}
}

func fnv32a(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// TestPickUniform: each target chain picks among exactly its endpoints'
// buckets, 0..n-1, so numgen random mod n gives each 1/n.
func TestPickUniform(t *testing.T) {
	for n := 1; n <= 7; n++ {
		var eps []ep
		for i := range n {
			eps = append(eps, ep{addr: fmt.Sprintf("10.244.1.%d", i+1), node: "node-b"})
		}
		m := renderCase{svcs: []*corev1.Service{svc("default", "web", "10.96.0.20")}, slices: []*discoveryv1.EndpointSlice{v4slice("default", "web", "web-1", 8080, eps...)}}.model(t)
		tbl := Render(m, DefaultConfig())
		id := id(m, web+"/cluster")
		rules := chainRules(t, tbl, TargetChain(id))
		var gotID, mod uint32
		if len(rules) != 1 {
			t.Fatalf("n=%d: rules %q, want one", n, rules)
		}
		var mapRef string
		if _, err := fmt.Sscanf(rules[0], "meta l4proto tcp dnat ip to %d . numgen random mod %d map %s", &gotID, &mod, &mapRef); err != nil || gotID != id || mod != uint32(n) || mapRef != "@"+EndpointsMap(id) {
			t.Fatalf("n=%d: rule %q", n, rules[0])
		}
		seen := map[string]bool{}
		for b := range n {
			v, ok := elem(t, tbl, EndpointsMap(id), fmt.Sprintf("%d . %d", id, b))
			if !ok {
				t.Fatalf("n=%d: bucket %d missing", n, b)
			}
			seen[v] = true
		}
		if len(seen) != n || endpointElems(tbl) != n {
			t.Errorf("n=%d: buckets reach %d distinct endpoints of %d elements", n, len(seen), endpointElems(tbl))
		}
	}
}
