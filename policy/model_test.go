package policy

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update to create): %v", err)
	}
	if got != string(want) {
		t.Errorf("model differs from %s (rerun with -update if intended)\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// sharingPolicies use the same peer selectors in different policies and
// namespaces, in different spellings, with a named ingress port and an
// egress named port.
func sharingPolicies() []*networkingv1.NetworkPolicy {
	return []*networkingv1.NetworkPolicy{
		netpol("x", "web", match("pod", "a"), ingress(peers(podPeer(matchP("pod", "b"))), port(TCP, "http"))),
		// Same podSelector peer in the same namespace: same set.
		netpol("x", "web-too", all, ingress(peers(podPeer(matchP("pod", "b"))), port(TCP, 80))),
		// Same namespaceSelector, once with a nil and once with an empty
		// podSelector, in two namespaces: one set.
		netpol("x", "blue", all, ingress(peers(nsPeer(matchP("team", "blue"))))),
		netpol("z", "blue", all, ingress(peers(bothPeer(matchP("team", "blue"), allP)))),
		// The same podSelector in another namespace means other pods: its own set.
		netpol("z", "b", all, ingress(peers(podPeer(matchP("pod", "b"))))),
		netpol("x", "out", all, types(egressT),
			egress(peers(blockPeer("192.0.2.0/24", "192.0.2.128/25", "192.0.2.16/28")), port(UDP, 53), port(TCP, 1000, 2000)),
			egress(peers(nsPeer(allP)), port(TCP, "http"))),
	}
}

func TestModelGolden(t *testing.T) {
	s := fixture()
	s.Policies = sharingPolicies()
	s.Node = "n1"
	m, problems := Compile(s)
	if len(problems) != 0 {
		t.Fatalf("problems: %v", problems)
	}
	golden(t, "model-n1.txt", m.String())

	// Explicit checks of what the golden shows, so a careless -update
	// cannot bless a regression in sharing.
	if len(m.SelectorSets) != 4 {
		t.Errorf("got %d selector sets, want 4 (x pod=b, team=blue, z pod=b, all pods):\n%s", len(m.SelectorSets), m)
	}
	sets := map[string]int{}
	for _, p := range m.Pods {
		for _, r := range p.Ingress.Rules {
			sets[r.Set]++
		}
	}
	blue := ""
	for _, ss := range m.SelectorSets {
		if ss.Selector == "nssel=team=blue pod=" {
			blue = ss.Name
			want := []netip.Addr{netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.1.3")}
			if !slices.Equal(ss.Members, want) {
				t.Errorf("team=blue members %v, want %v", ss.Members, want)
			}
		}
	}
	if blue == "" || sets[blue] != 4 { // x/a, x/c, z/a, z/c on n1
		t.Errorf("team=blue set %q used by %d rules, want 4", blue, sets[blue])
	}
	// Only n1's pods are in n1's model: ingress is enforced where the
	// destination runs, egress where the source runs.
	for _, p := range m.Pods {
		if p.Name == "b" {
			t.Errorf("pod %s of n2 in n1's model", p.Key())
		}
	}

	s.Node = "n2"
	m2, _ := Compile(s)
	golden(t, "model-n2.txt", m2.String())
}

func TestCompileDeterministic(t *testing.T) {
	s := fixture()
	s.Policies = sharingPolicies()
	s.Node = "n1"
	m1, _ := Compile(s)
	slices.Reverse(s.Policies)
	slices.Reverse(s.Pods)
	slices.Reverse(s.Namespaces)
	m2, _ := Compile(s)
	if !reflect.DeepEqual(m1, m2) {
		t.Errorf("input order changed the model:\n%s\nvs\n%s", m1, m2)
	}
}

// TestRelabelChangesOnlySetMembers is the property the applier relies on:
// pod churn is element churn, chains and rules stay put.
func TestRelabelChangesOnlySetMembers(t *testing.T) {
	s := fixture()
	s.Policies = sharingPolicies()
	s.Node = "n1"
	before, _ := Compile(s)

	// x/c becomes a "b" pod in the eyes of selectors, and z/b leaves.
	for _, p := range s.Pods {
		if p.Namespace == "x" && p.Name == "c" {
			p.Labels = map[string]string{"pod": "b"}
		}
	}
	s.Pods = slices.DeleteFunc(s.Pods, func(p *corev1.Pod) bool { return p.Namespace == "z" && p.Name == "b" })
	after, _ := Compile(s)

	changed := 0
	for i := range before.SelectorSets {
		if !slices.Equal(before.SelectorSets[i].Members, after.SelectorSets[i].Members) {
			changed++
		}
	}
	// x pod=b gains 10.0.0.3; z pod=b and all-pods lose 10.0.2.2.
	if changed != 3 {
		t.Errorf("%d selector sets changed, want 3:\n%s\nvs\n%s", changed, before, after)
	}
	strip := func(m *Model) *Model {
		c := *m
		c.SelectorSets = slices.Clone(m.SelectorSets)
		for i := range c.SelectorSets {
			c.SelectorSets[i].Members = nil
		}
		c.PortSets = slices.Clone(m.PortSets)
		for i := range c.PortSets {
			c.PortSets[i].Members = nil
		}
		return &c
	}
	if !reflect.DeepEqual(strip(before), strip(after)) {
		t.Errorf("relabel changed more than set members:\n%s\nvs\n%s", before, after)
	}
}

func TestEvaluateNamesTheDecidingPolicies(t *testing.T) {
	s := fixture()
	s.Node = "n1"
	s.Policies = []*networkingv1.NetworkPolicy{
		netpol("x", "deny", all, types(ingressT, egressT)),
		netpol("x", "web", match("pod", "a"), ingress(peers(nsPeer(matchP("ns", "y"))), port(TCP, 81)), ingress(peers(nsPeer(allP)), port(TCP, 80))),
		netpol("x", "from-y", match("pod", "a"), ingress(peers(nsPeer(matchP("ns", "y"))))),
	}
	m, _ := Compile(s)

	v := m.Evaluate(probe(t, s, "y/a -> x/a TCP/80"))
	// y/a runs on n1 too, so its egress is judged here: not isolated.
	if !v.Allowed || v.Egress == nil || v.Egress.Reason != VerdictNotIsolated || v.Ingress == nil || v.Ingress.Reason != VerdictAllowedByRule {
		t.Fatalf("verdict %+v", v)
	}
	want := []RuleRef{{Policy: "x/from-y", Index: 0}, {Policy: "x/web", Index: 1}}
	if !slices.Equal(v.Ingress.Rules, want) {
		t.Errorf("deciding rules %v, want %v", v.Ingress.Rules, want)
	}

	v = m.Evaluate(probe(t, s, "x/a -> x/c TCP/80"))
	if v.Allowed || v.Egress == nil || v.Egress.Reason != VerdictDefaultDeny || !slices.Equal(v.Egress.Policies, []string{"x/deny"}) {
		t.Errorf("x/a -> x/c: egress verdict %+v", v.Egress)
	}
	if v.Ingress == nil || v.Ingress.Pod != "x/c" || v.Ingress.Allowed {
		t.Errorf("x/a -> x/c: ingress verdict %+v", v.Ingress)
	}

	v = m.Evaluate(probe(t, s, "z/a -> y/a TCP/80"))
	if !v.Allowed || v.Egress == nil || v.Egress.Reason != VerdictNotIsolated || v.Ingress == nil || v.Ingress.Reason != VerdictNotIsolated {
		t.Errorf("z/a -> y/a: %+v", v)
	}
	// x/b and y/b run on n2: n1 does not judge traffic between them.
	v = m.Evaluate(probe(t, s, "y/b -> x/b TCP/80"))
	if !v.Allowed || v.Egress != nil || v.Ingress != nil {
		t.Errorf("y/b -> x/b on n1: %+v", v)
	}
}
