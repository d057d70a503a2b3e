package servicenft

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/services"
)

// threeServices is a small cluster: web (ClusterIP, two endpoints), api
// (LoadBalancer, externalTrafficPolicy Local, affinity) and dns (UDP).
// apiEps are api's endpoints.
func threeServices(apiEps ...ep) *services.Model {
	s := services.Snapshot{
		Services: []*corev1.Service{
			svc("default", "web", "10.96.0.20"),
			svc("default", "api", "10.96.0.30", loadBalancer(30030, "203.0.113.30"), etpLocal, affinity(300)),
			svc("kube-system", "dns", "10.96.0.10", ports(sport("dns", corev1.ProtocolUDP, 53))),
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			v4slice("default", "web", "web-1", 8080, ep{addr: "10.244.1.5", node: thisNode}, ep{addr: "10.244.2.5", node: "node-b"}),
			v4slice("default", "api", "api-1", 9090, apiEps...),
			slice("kube-system", "dns", "dns-1", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("dns", corev1.ProtocolUDP, 53)},
				ep{addr: "10.244.1.53", node: thisNode}),
		},
		Config: services.DefaultConfig(),
		Node:   testNode(),
	}
	m, _ := services.Desired(s)
	return m
}

var apiEps = []ep{{addr: "10.244.1.7", node: thisNode}, {addr: "10.244.2.7", node: "node-b"}, {addr: "10.244.3.7", node: "node-c"}}

// touched lists every object a transaction changes, as "kind name" and
// "element map key".
func touched(tx nft.Transaction) []string {
	var out []string
	for _, c := range tx.AddChains {
		out = append(out, "chain "+c.Name)
	}
	for _, c := range tx.FillChains {
		out = append(out, "chain "+c.Name)
	}
	for _, n := range slices.Concat(tx.FlushChains, tx.DeleteChains) {
		out = append(out, "chain "+n)
	}
	for _, s := range tx.AddSets {
		out = append(out, "set "+s.Name)
	}
	for _, m := range tx.AddMaps {
		out = append(out, "set "+m.Name)
	}
	for _, n := range tx.DeleteSets {
		out = append(out, "set "+n)
	}
	for _, o := range slices.Concat(tx.AddElements, tx.DeleteElements) {
		for _, e := range o.Elements {
			out = append(out, "element "+o.Name+" "+e.Key)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// onlyService fails unless every object tx touches belongs to the targets
// of ServicePort key prefix svcKey (their chains and their elements of
// services-endpoints-*) or is listed in extra (frontend and hairpin
// elements, an affinity map its last Service leaves).
func onlyService(t *testing.T, m *services.Model, tx nft.Transaction, svcKey string, extra ...string) {
	t.Helper()
	var ids []string
	for _, r := range m.TargetRows() {
		if strings.HasPrefix(string(r.Key), svcKey) {
			ids = append(ids, fmt.Sprintf("%08x", id(m, string(r.Key))), fmt.Sprint(id(m, string(r.Key))))
		}
	}
	for _, o := range touched(tx) {
		f := strings.Fields(o)
		ok := false
		switch f[0] {
		case "chain", "set":
			ok = slices.ContainsFunc(ids, func(id string) bool { return strings.Contains(f[1], "-"+id) }) || slices.Contains(extra, f[1])
		case "element":
			key := strings.Join(f[2:], " ")
			ok = (f[1] == MapFrontends || f[1] == MapNoEndpoints || f[1] == SetHairpin) && slices.Contains(extra, key) ||
				strings.HasPrefix(f[1], "services-endpoints-") && slices.ContainsFunc(ids, func(id string) bool { return strings.HasPrefix(key, id+" . ") })
		}
		if !ok {
			t.Errorf("transaction touches %s, outside %s:\n%s", o, svcKey, tx)
		}
	}
}

func TestOneEndpointChangeTouchesOnlyItsService(t *testing.T) {
	m1 := threeServices(apiEps...)
	t1 := Render(m1, DefaultConfig())

	// 10.244.2.7 replaced by 10.244.2.9 (same bucket).
	m2 := threeServices(apiEps[0], ep{addr: "10.244.2.9", node: "node-b"}, apiEps[2])
	tx := nft.Plan(t1, Render(m2, DefaultConfig()))
	if tx.Empty() {
		t.Fatal("endpoint change planned nothing")
	}
	hairpin := []string{"10.244.2.7 . 10.244.2.7", "10.244.2.9 . 10.244.2.9"}
	onlyService(t, m2, tx, "default/api:", hairpin...)
	cluster := id(m2, "default/api:http/TCP/IPv4/cluster")
	// The endpoint's bucket gets the new address, the hairpin pair moves,
	// and the target chain is refilled because affinity is keyed by the
	// endpoints' epoch; nothing else moves, and nothing added holds a goto.
	want := []string{
		fmt.Sprintf("chain svc-%08x", cluster),
		fmt.Sprintf("element %s %d . 1", EndpointsMap(cluster), cluster),
		"element services-hairpin 10.244.2.7 . 10.244.2.7",
		"element services-hairpin 10.244.2.9 . 10.244.2.9",
	}
	wantSlice(t, "touched", touched(tx), want)
	noGoto(t, tx)

	// Without affinity, the same change is elements only.
	tx = nft.Plan(Render(threeServicesWeb(ep{addr: "10.244.2.5", node: "node-b"}), DefaultConfig()), Render(threeServicesWeb(ep{addr: "10.244.2.6", node: "node-b"}), DefaultConfig()))
	web := id(m2, "default/web:http/TCP/IPv4/cluster")
	wantSlice(t, "touched without affinity", touched(tx), []string{
		fmt.Sprintf("element %s %d . 1", EndpointsMap(web), web),
		"element services-hairpin 10.244.2.5 . 10.244.2.5",
		"element services-hairpin 10.244.2.6 . 10.244.2.6",
	})

	// A removed endpoint shifts the buckets after it: still only api.
	m3 := threeServices(apiEps[0], apiEps[2])
	tx = nft.Plan(t1, Render(m3, DefaultConfig()))
	onlyService(t, m3, tx, "default/api:", "10.244.2.7 . 10.244.2.7")
	noGoto(t, tx)

	// The last local endpoint gone: the local target drops from filter,
	// its frontends switch to the short-circuit chain only.
	m4 := threeServices(apiEps[1:]...)
	tx = nft.Plan(t1, Render(m4, DefaultConfig()))
	onlyService(t, m4, tx, "default/api:", "203.0.113.30 . tcp . 80", "192.168.1.10 . tcp . 30030", "10.244.1.7 . 10.244.1.7")
	if !slices.Contains(touched(tx), "element services-no-endpoints 203.0.113.30 . tcp . 80") {
		t.Errorf("load balancer IP not dropped without local endpoints:\n%s", tx)
	}

	// No endpoint at all: every frontend of api rejects; the affinity
	// map goes with the last Service of its timeout.
	m5 := threeServices()
	onlyService(t, m5, nft.Plan(t1, Render(m5, DefaultConfig())), "default/api:", AffinityMap(300),
		"10.96.0.30 . tcp . 80", "203.0.113.30 . tcp . 80", "192.168.1.10 . tcp . 30030",
		"10.244.1.7 . 10.244.1.7", "10.244.2.7 . 10.244.2.7", "10.244.3.7 . 10.244.3.7")
}

// threeServicesWeb is threeServices with web's second endpoint replaced.
func threeServicesWeb(second ep) *services.Model {
	s := services.Snapshot{
		Services: []*corev1.Service{svc("default", "web", "10.96.0.20")},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			v4slice("default", "web", "web-1", 8080, ep{addr: "10.244.1.5", node: thisNode}, second),
		},
		Config: services.DefaultConfig(),
		Node:   testNode(),
	}
	m, _ := services.Desired(s)
	return m
}

// noGoto fails if tx adds a jump or goto (a rule or a verdict map
// element): any makes the kernel validate the whole table.
func noGoto(t *testing.T, tx nft.Transaction) {
	t.Helper()
	for _, c := range tx.FillChains {
		for _, r := range c.Rules {
			if k := r.Action.Kind; k == nft.ActJump || k == nft.ActGoto {
				t.Errorf("transaction adds %q to %s", r, c.Name)
			}
		}
	}
	for _, o := range tx.AddElements {
		for _, e := range o.Elements {
			if strings.HasPrefix(e.Value, "goto ") || strings.HasPrefix(e.Value, "jump ") {
				t.Errorf("transaction adds element %s to %s", e, o.Name)
			}
		}
	}
	if len(tx.AddChains)+len(tx.AddMaps)+len(tx.AddSets) > 0 {
		t.Errorf("transaction adds chains, sets or maps:\n%s", tx)
	}
}

// TestFakeAcceptsEveryTable applies every rendered table through the
// Syncer and the semantic Fake, in sequence (so each transition is a
// partial plan), then again from a fresh Syncer (a restart adopts the table
// with zero ops), then removes it.
func TestFakeAcceptsEveryTable(t *testing.T) {
	fake := nft.NewFake()
	s := nft.NewSyncer(fake, slog.New(slog.DiscardHandler))
	tables := []nft.Table{}
	for _, c := range renderCases {
		tables = append(tables, Render(c.model(t), DefaultConfig()))
	}
	tables = append(tables, Render(threeServices(apiEps...), DefaultConfig()), Render(threeServices(), DefaultConfig()), Render(threeServices(apiEps[1:]...), DefaultConfig()))
	for i, tbl := range tables {
		if _, err := s.Sync(tbl); err != nil {
			t.Fatalf("table %d refused: %v\n%s", i, err, tbl)
		}
		got, err := fake.Dump()
		if err != nil {
			t.Fatal(err)
		}
		if !nft.Plan(got, tbl).Empty() {
			t.Fatalf("table %d: dump differs from desired:\n%s", i, nft.Plan(got, tbl))
		}
		res, err := nft.NewSyncer(fake, slog.New(slog.DiscardHandler)).Sync(tbl)
		if err != nil || res.Ops != 0 || !res.Dumped {
			t.Errorf("table %d: restart sync = %+v, %v; want zero ops after a dump", i, res, err)
		}
		// A full rebuild in one batch is accepted too.
		if err := nft.NewFake().Apply(nft.Full(tbl, false)); err != nil {
			t.Errorf("table %d: full transaction refused: %v", i, err)
		}
	}
	if _, err := s.Sync(nft.Table{}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if got, _ := fake.Dump(); !got.Empty() {
		t.Errorf("table left after Sync(empty):\n%s", got)
	}
}

// TestMergeWithPolicy: the services fragment merges with a policy
// fragment that uses its own names.
func TestMergeWithPolicy(t *testing.T) {
	svcs := Render(threeServices(apiEps...), DefaultConfig())
	pol := nft.Table{
		Chains: []nft.Chain{{Name: "pol-filter-forward", Type: nft.TypeFilter, Hook: nft.HookForward, Priority: nft.PriorityFilter,
			Rules: []nft.Rule{{Match: []nft.Match{{Keys: []nft.Field{nft.IPSaddr}, Set: "pol-blocked"}}, Action: nft.Action{Kind: nft.ActDrop}}}}},
		Sets: []nft.Set{{Name: "pol-blocked", KeyType: []nft.DataType{nft.TypeIPv4Addr}, Elements: []nft.Element{{Key: "10.244.9.9"}}}},
	}
	merged, err := nft.Merge(svcs, pol)
	if err != nil {
		t.Fatal(err)
	}
	wantEq(t, "chains", len(merged.Chains), len(svcs.Chains)+1)
	if err := nft.NewFake().Apply(nft.Full(merged, false)); err != nil {
		t.Fatalf("merged table refused: %v", err)
	}
}
