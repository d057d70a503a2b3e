package policynft

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/policy"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

type renderCase struct {
	name     string
	policies []*networkingv1.NetworkPolicy
	// check asserts on the rendered table beyond the golden file.
	check func(t *testing.T, tbl nft.Table, m *policy.Model)
}

var renderCases = []renderCase{
	{
		name: "no-policies",
		check: func(t *testing.T, tbl nft.Table, m *policy.Model) {
			if n := len(podChains(tbl)); n != 0 {
				t.Errorf("%d pod chains without policies, want 0", n)
			}
			for _, mp := range tbl.Maps {
				if len(mp.Elements) != 0 {
					t.Errorf("map %s has %d elements without policies", mp.Name, len(mp.Elements))
				}
			}
		},
	},
	{
		name:     "default-deny",
		policies: []*networkingv1.NetworkPolicy{netpol("x", "deny-all", match(), both)},
		check: func(t *testing.T, tbl nft.Table, m *policy.Model) {
			// x/a and x/c are local; y and z are not isolated and get no entry.
			wantKeys(t, mapByName(tbl, MapIngress), "10.0.0.1", "10.0.0.3")
			wantKeys(t, mapByName(tbl, MapEgress), "10.0.0.1", "10.0.0.3")
			c := chainByName(t, tbl, PodChain("x/a", Ingress))
			if len(c.Rules) != 1 || c.Rules[0].Action.Kind != nft.ActDrop || !c.Rules[0].Counter {
				t.Errorf("default deny chain = %v, want one counted drop", c.Rules)
			}
		},
	},
	{
		name: "selectors",
		policies: []*networkingv1.NetworkPolicy{
			netpol("x", "from-b", match("pod", "a"), ingress(peers(podPeer(matchP("pod", "b"))))),
			netpol("x", "from-blue", match("pod", "a"), ingress(peers(nsPeer(matchP("team", "blue"))))),
			netpol("x", "from-red-c", match("pod", "c"), ingress(peers(bothPeer(matchP("team", "red"), matchP("pod", "c"))))),
		},
		check: func(t *testing.T, tbl nft.Table, m *policy.Model) {
			wantKeys(t, mapByName(tbl, MapIngress), "10.0.0.1", "10.0.0.3")
			wantKeys(t, mapByName(tbl, MapEgress))
			wantKeys(t, setByName(t, tbl, "pol-"+m.Pods[0].Ingress.Rules[0].Set), "10.0.0.2")
			wantKeys(t, setByName(t, tbl, "pol-"+m.Pods[0].Ingress.Rules[1].Set), "10.0.1.1", "10.0.1.2", "10.0.1.3")
		},
	},
	{
		name: "ipblock-except",
		policies: []*networkingv1.NetworkPolicy{
			netpol("x", "to-block", match("pod", "a"), egressOnly, egress(peers(blockPeer("10.0.0.0/16", "10.0.1.0/24", "10.0.2.128/25")))),
		},
		check: func(t *testing.T, tbl nft.Table, m *policy.Model) {
			s := setByName(t, tbl, "pol-"+m.BlockSets[0].Name)
			if !s.Interval {
				t.Error("block set is not an interval set")
			}
			wantKeys(t, s, "10.0.0.0/24", "10.0.2.0/25", "10.0.3.0/24", "10.0.4.0/22", "10.0.8.0/21", "10.0.16.0/20", "10.0.32.0/19", "10.0.64.0/18", "10.0.128.0/17")
		},
	},
	{
		name: "ports",
		policies: []*networkingv1.NetworkPolicy{
			netpol("x", "ports", match("pod", "a"), both,
				ingress(nil, port("", 80), port("UDP", 81), port("SCTP", 82), port("TCP", 8000, 8080), port("TCP", "http"), port("UDP", nil)),
				egress(peers(nsPeer(matchP())), port("TCP", "http"), port("UDP", 53))),
		},
		check: func(t *testing.T, tbl nft.Table, m *policy.Model) {
			in := chainByName(t, tbl, PodChain("x/a", Ingress)).Rules
			var got []string
			for _, r := range in {
				got = append(got, r.Text())
			}
			for _, want := range []string{
				"meta l4proto tcp th dport 80 counter return",
				"meta l4proto udp th dport 81 counter return",
				"meta l4proto sctp th dport 82 counter return",
				"meta l4proto tcp th dport 8000-8080 counter return",
				"meta l4proto udp counter return",
			} {
				if !slices.Contains(got, want) {
					t.Errorf("ingress chain lacks %q:\n%s", want, strings.Join(got, "\n"))
				}
			}
			np := setByName(t, tbl, "pol-"+m.PortSets[0].Name)
			// http is 80 on every a and 8080 on every b.
			wantKeys(t, np, "10.0.0.1 . 80", "10.0.0.2 . 8080", "10.0.1.1 . 80", "10.0.1.2 . 8080", "10.0.2.1 . 80", "10.0.2.2 . 8080")
		},
	},
	{
		name: "shared-sets",
		policies: []*networkingv1.NetworkPolicy{
			netpol("x", "p1", match("pod", "a"), ingress(peers(podPeer(matchP("pod", "b"))))),
			netpol("x", "p2", match("pod", "c"), both, ingress(peers(podPeer(matchP("pod", "b")))), egress(peers(podPeer(matchP("pod", "b"))))),
		},
		check: func(t *testing.T, tbl nft.Table, m *policy.Model) {
			var sel []string
			for _, s := range tbl.Sets {
				if strings.HasPrefix(s.Name, "pol-sel-") {
					sel = append(sel, s.Name)
				}
			}
			if len(sel) != 1 {
				t.Errorf("selector sets %v, want one shared by p1 and p2", sel)
			}
		},
	},
	{
		name: "invalid-fails-closed",
		policies: []*networkingv1.NetworkPolicy{
			netpol("x", "bad-cidr", match("pod", "a"), ingress(peers(blockPeer("10.0.0.0/33")))),
			netpol("x", "ok", match("pod", "a"), ingress(peers(podPeer(matchP("pod", "b"))), port("TCP", 80))),
		},
		check: func(t *testing.T, tbl nft.Table, m *policy.Model) {
			rules := chainByName(t, tbl, PodChain("x/a", Ingress)).Rules
			last := rules[len(rules)-1]
			if last.Comment != "x/a ingress drop: bad-cidr ok" {
				t.Errorf("drop comment %q, want it to name both isolating policies", last.Comment)
			}
			if len(rules) != 2 {
				t.Errorf("rules %v, want the valid policy's allow and the drop", rules)
			}
		},
	},
}

func compile(t *testing.T, pols []*networkingv1.NetworkPolicy) *policy.Model {
	t.Helper()
	s := fixture()
	s.Policies = pols
	m, _ := policy.Compile(s)
	return m
}

func TestRenderGolden(t *testing.T) {
	for _, tc := range renderCases {
		t.Run(tc.name, func(t *testing.T) {
			m := compile(t, tc.policies)
			tbl := Render(m)
			checkFragment(t, tbl)
			if tc.check != nil {
				tc.check(t, tbl, m)
			}
			// Deterministic: a second compile and render is identical.
			if again := Render(compile(t, tc.policies)); again.String() != tbl.String() {
				t.Error("two renders of one snapshot differ")
			}
			golden(t, tc.name, "# "+strings.ReplaceAll(strings.TrimSpace(m.String()), "\n", "\n# ")+"\n"+tbl.String())
			// The Fake, which refuses what the kernel refuses, takes it.
			f := nft.NewFake()
			if err := f.Apply(nft.Plan(nft.Table{}, tbl)); err != nil {
				t.Fatalf("fake refused the rendered table: %v", err)
			}
			got, _ := f.Dump()
			if got.String() != tbl.String() {
				t.Errorf("fake holds\n%s\nwant\n%s", got, tbl)
			}
		})
	}
}

// checkFragment holds a rendered table to the fragment contract.
func checkFragment(t *testing.T, tbl nft.Table) {
	t.Helper()
	for _, c := range tbl.Chains {
		if !strings.HasPrefix(c.Name, Prefix) {
			t.Errorf("chain %s outside the pol namespace", c.Name)
		}
		for _, r := range c.Rules {
			if len(r.Comment) > maxComment {
				t.Errorf("chain %s: comment of %d bytes", c.Name, len(r.Comment))
			}
		}
	}
	for _, s := range tbl.Sets {
		if !strings.HasPrefix(s.Name, Prefix) {
			t.Errorf("set %s outside the pol namespace", s.Name)
		}
	}
	for _, m := range tbl.Maps {
		if !strings.HasPrefix(m.Name, Prefix) {
			t.Errorf("map %s outside the pol namespace", m.Name)
		}
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if filepath.Ext(name) == "" {
		path += ".golden"
	}
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the golden file (run with -update to accept):\n%s", path, got)
	}
}

func podChains(tbl nft.Table) []nft.Chain {
	var out []nft.Chain
	for _, c := range tbl.Chains {
		if strings.HasPrefix(c.Name, ChainIngressPrefix) || strings.HasPrefix(c.Name, ChainEgressPrefix) {
			out = append(out, c)
		}
	}
	return out
}

func chainByName(t *testing.T, tbl nft.Table, name string) nft.Chain {
	t.Helper()
	for _, c := range tbl.Chains {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no chain %s", name)
	return nft.Chain{}
}

func setByName(t *testing.T, tbl nft.Table, name string) nft.Set {
	t.Helper()
	for _, s := range tbl.Sets {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no set %s", name)
	return nft.Set{}
}

func mapByName(tbl nft.Table, name string) nft.Set {
	for _, m := range tbl.Maps {
		if m.Name == name {
			return nft.Set{Name: name, Elements: m.Elements}
		}
	}
	return nft.Set{}
}

func wantKeys(t *testing.T, s nft.Set, keys ...string) {
	t.Helper()
	var got []string
	for _, e := range s.Elements {
		got = append(got, e.Key)
	}
	slices.Sort(got)
	slices.Sort(keys)
	if !slices.Equal(got, keys) {
		t.Errorf("%s holds %v, want %v", s.Name, got, keys)
	}
}

func TestRangePrefixes(t *testing.T) {
	for _, tc := range []struct {
		from, to string
		want     string
	}{
		{"10.0.0.0", "10.0.0.255", "10.0.0.0/24"},
		{"10.0.0.1", "10.0.0.1", "10.0.0.1/32"},
		{"10.0.0.1", "10.0.0.6", "10.0.0.1/32 10.0.0.2/31 10.0.0.4/31 10.0.0.6/32"},
		{"0.0.0.0", "255.255.255.255", "0.0.0.0/0"},
		{"255.255.255.254", "255.255.255.255", "255.255.255.254/31"},
		{"0.0.0.0", "127.255.255.255", "0.0.0.0/1"},
	} {
		var got []string
		for _, p := range rangePrefixes(policy.Range{From: netip.MustParseAddr(tc.from), To: netip.MustParseAddr(tc.to)}) {
			got = append(got, p.String())
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("%s-%s = %v, want %s", tc.from, tc.to, got, tc.want)
		}
	}
	if got := rangePrefixes(policy.Range{From: netip.MustParseAddr("::1"), To: netip.MustParseAddr("::2")}); got != nil {
		t.Errorf("IPv6 range gave %v", got)
	}
}

func TestDualStackRendersIPv4Only(t *testing.T) {
	s := fixture()
	p := s.Pods[0] // x/a
	p.Status.PodIPs = append(p.Status.PodIPs, corePodIP("fd00::1"))
	s.Policies = []*networkingv1.NetworkPolicy{netpol("x", "deny", match(), ingressOnly)}
	m, _ := policy.Compile(s)
	tbl := Render(m)
	wantKeys(t, mapByName(tbl, MapIngress), "10.0.0.1", "10.0.0.3")
	if err := nft.NewFake().Apply(nft.Plan(nft.Table{}, tbl)); err != nil {
		t.Fatal(err)
	}
}

func TestCommentsFitAndParse(t *testing.T) {
	long := strings.Repeat("p", 200)
	if c := allowComment("x/"+long, Ingress, 3); len(c) > maxComment || !strings.HasSuffix(c, " ingress[3]") {
		t.Errorf("allow comment %q (%d bytes)", c, len(c))
	}
	var pols []string
	for i := range 30 {
		pols = append(pols, "x/policy-number-"+string(rune('a'+i%26))+strings.Repeat("z", i))
	}
	c := dropComment("x", "x/a", Egress, pols)
	if len(c) > maxComment {
		t.Fatalf("drop comment of %d bytes: %q", len(c), c)
	}
	d := Drops([]nft.RuleCounter{{Chain: PodChain("x/a", Egress), Index: 0, Comment: c, Packets: 1}})
	if len(d) != 1 || d[0].Pod != "x/a" || len(d[0].Policies)+d[0].MorePolicies != len(pols) || d[0].MorePolicies == 0 {
		t.Errorf("Drops of a shortened comment = %+v, want %d policies in all", d, len(pols))
	}
	for i, p := range d[0].Policies {
		if p != pols[i] {
			t.Errorf("policy %d = %s, want %s", i, p, pols[i])
		}
	}
}
