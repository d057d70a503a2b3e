package policynft

import (
	"errors"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/policy"
)

var planPolicies = []*networkingv1.NetworkPolicy{
	netpol("x", "from-b", match("pod", "a"), ingress(peers(podPeer(matchP("pod", "b"))), port("TCP", 80))),
	netpol("x", "to-blue", match("pod", "a"), egressOnly, egress(peers(nsPeer(matchP("team", "blue"))), port("TCP", "http"))),
}

// onlyElements fails unless tx changes nothing but set and map elements.
func onlyElements(t *testing.T, tx nft.Transaction) {
	t.Helper()
	if tx.DeleteTable || len(tx.AddChains)+len(tx.FlushChains)+len(tx.FillChains)+len(tx.DeleteChains)+len(tx.AddSets)+len(tx.AddMaps)+len(tx.DeleteSets) > 0 {
		t.Errorf("transaction touches more than elements:\n%s", tx)
	}
	if tx.Empty() {
		t.Error("empty transaction: the change did not reach the table")
	}
}

func TestPlanPeerChurnChangesElementsOnly(t *testing.T) {
	s := fixture()
	s.Policies = planPolicies
	m0, _ := policy.Compile(s)
	t0 := Render(m0)

	for _, tc := range []struct {
		name   string
		mutate func(s *policy.Snapshot)
	}{
		{"peer relabelled out of a selector", func(s *policy.Snapshot) {
			s.Pods[1] = s.Pods[1].DeepCopy() // x/b on n2
			s.Pods[1].Labels = map[string]string{"pod": "bb"}
		}},
		{"new peer pod", func(s *policy.Snapshot) {
			s.Pods = append(s.Pods, pod("x", "b2", "n2", "10.0.0.9", map[string]string{"pod": "b"}))
		}},
		{"new peer in a named-port namespace", func(s *policy.Snapshot) {
			s.Pods = append(s.Pods, pod("y", "web", "n2", "10.0.1.9", map[string]string{"pod": "w"}, cport("http", 9090, "")))
		}},
		{"new local pod nobody isolates", func(s *policy.Snapshot) {
			s.Pods = append(s.Pods, pod("z", "new", "n1", "10.0.2.9", map[string]string{"pod": "n"}))
		}},
		{"peer pod gone", func(s *policy.Snapshot) {
			s.Pods = append(s.Pods[:1:1], s.Pods[2:]...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fixture()
			s.Policies = planPolicies
			tc.mutate(&s)
			m1, _ := policy.Compile(s)
			t1 := Render(m1)
			tx := nft.Plan(t0, t1)
			onlyElements(t, tx)
			f := nft.NewFake()
			if err := f.Apply(nft.Plan(nft.Table{}, t0)); err != nil {
				t.Fatal(err)
			}
			if err := f.Apply(tx); err != nil {
				t.Fatalf("fake refused the element diff: %v", err)
			}
			if got, _ := f.Dump(); got.String() != t1.String() {
				t.Errorf("after the diff the fake holds\n%s\nwant\n%s", got, t1)
			}
		})
	}
}

func TestPlanIsolationAddsOnlyThatPodsChain(t *testing.T) {
	s := fixture()
	s.Policies = planPolicies
	m0, _ := policy.Compile(s)
	t0 := Render(m0)
	s.Pods = append(s.Pods, pod("x", "a2", "n1", "10.0.0.8", map[string]string{"pod": "a"}))
	m1, _ := policy.Compile(s)
	tx := nft.Plan(t0, Render(m1))
	if len(tx.FlushChains)+len(tx.DeleteChains)+len(tx.DeleteSets) > 0 || len(tx.AddChains) != 2 {
		t.Errorf("a new isolated pod should add its two chains and elements only:\n%s", tx)
	}
	for _, c := range tx.AddChains {
		if c.Name != PodChain("x/a2", Ingress) && c.Name != PodChain("x/a2", Egress) {
			t.Errorf("added chain %s is not x/a2's", c.Name)
		}
	}
	// Restart: the same snapshot renders the same table, so nothing is sent.
	if tx := nft.Plan(Render(m1), Render(m1)); !tx.Empty() {
		t.Errorf("re-render planned\n%s", tx)
	}
}

// refusing is an nft.Conn over the Fake that refuses, as the kernel might,
// any transaction adding a rule whose text contains bad.
type refusing struct {
	*nft.Fake
	bad string
}

func (r refusing) Apply(tx nft.Transaction) error {
	for _, c := range tx.FillChains {
		for _, rule := range c.Rules {
			if strings.Contains(rule.Text(), r.bad) {
				return errors.New("refused")
			}
		}
	}
	return r.Fake.Apply(tx)
}

func TestFailClosedFallback(t *testing.T) {
	s := fixture()
	s.Policies = planPolicies
	m0, _ := policy.Compile(s)
	t0 := Render(m0)
	conn := refusing{Fake: nft.NewFake(), bad: "th dport 4242"}
	if err := conn.Apply(nft.Plan(nft.Table{}, t0)); err != nil {
		t.Fatal(err)
	}

	// A new policy for x/c that the "kernel" refuses, and at the same time
	// a peer change affecting x/a's sets.
	s.Policies = append(s.Policies, netpol("x", "odd", match("pod", "c"), ingress(peers(podPeer(matchP("pod", "b"))), port("TCP", 4242))))
	s.Pods = append(s.Pods, pod("x", "b2", "n2", "10.0.0.9", map[string]string{"pod": "b"}))
	m1, _ := policy.Compile(s)
	if err := conn.Apply(nft.Plan(t0, Render(m1))); err == nil {
		t.Fatal("the refusing conn took the bad rule")
	}
	if got, _ := conn.Dump(); got.String() != t0.String() {
		t.Fatal("a refused transaction changed the table")
	}

	sus := Suspects(m1, t0)
	if len(sus) != 1 || sus[0] != "x/c" {
		t.Fatalf("suspects %v, want [x/c]", sus)
	}
	fb := RenderWith(m1, RenderOptions{FailClosed: sus})
	tx := nft.Plan(t0, fb)
	if err := conn.Apply(tx); err != nil {
		t.Fatalf("fallback refused: %v", err)
	}
	// x/a's chains are untouched by the fallback; its sets took the new peer.
	for _, c := range append(tx.FlushChains, tx.DeleteChains...) {
		if c == PodChain("x/a", Ingress) || c == PodChain("x/a", Egress) {
			t.Errorf("fallback rewrote x/a's chain %s", c)
		}
	}
	got, _ := conn.Dump()
	c := chainByName(t, got, PodChain("x/c", Ingress))
	if len(c.Rules) != 1 || c.Rules[0].Action.Kind != nft.ActDrop || c.Rules[0].Comment != "x/c ingress failed closed" {
		t.Errorf("x/c's chain %v, want one fail-closed drop", c.Rules)
	}
	wantKeys(t, mapByName(got, MapIngress), "10.0.0.1", "10.0.0.3")
	a := chainByName(t, got, PodChain("x/a", Ingress))
	if want := chainByName(t, Render(m1), PodChain("x/a", Ingress)); a.String() != want.String() {
		t.Errorf("x/a's chain %v, want its normal rules %v", a, want)
	}
	for _, set := range got.Sets {
		if strings.HasPrefix(set.Name, "pol-sel-") && len(set.Elements) == 2 {
			return // the x/b selector set holds x/b and x/b2
		}
	}
	t.Errorf("the fallback did not carry the new peer into x/a's selector set:\n%s", got)
}

func TestFailClosedOnlyIsolatedDirections(t *testing.T) {
	m := compile(t, planPolicies[:1]) // x/a ingress only
	tbl := RenderWith(m, RenderOptions{FailClosed: []string{"x/a", "y/a"}})
	wantKeys(t, mapByName(tbl, MapIngress), "10.0.0.1")
	wantKeys(t, mapByName(tbl, MapEgress))
	for _, s := range tbl.Sets {
		if strings.HasPrefix(s.Name, "pol-sel-") {
			t.Errorf("set %s kept though only a failed-closed pod used it", s.Name)
		}
	}
	if err := nft.NewFake().Apply(nft.Plan(nft.Table{}, tbl)); err != nil {
		t.Fatal(err)
	}
}

// TestFakeTransitions applies every golden case's table after every other
// to the Fake, which refuses deleting a chain a map element still jumps to
// or a set a rule still references.
func TestFakeTransitions(t *testing.T) {
	f := nft.NewFake()
	var cur nft.Table
	for _, a := range renderCases {
		for _, b := range renderCases {
			for _, next := range []nft.Table{Render(compile(t, a.policies)), Render(compile(t, b.policies))} {
				if err := f.Apply(nft.Plan(cur, next)); err != nil {
					t.Fatalf("%s -> %s: %v", a.name, b.name, err)
				}
				cur = next
			}
			if got, _ := f.Dump(); got.String() != cur.String() {
				t.Fatalf("%s -> %s: fake holds\n%s", a.name, b.name, got)
			}
		}
	}
}
