package policynft

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/policy"
)

// tracer follows the first packet of a connection through the rendered
// forward chain, reading rules in the vocabulary Render writes. It lets the
// random test below hold the table to Model.Evaluate without a kernel.
type tracer struct {
	t      *testing.T
	chains map[string]nft.Chain
	sets   map[string]nft.Set
	maps   map[string]nft.Map
}

func newTracer(t *testing.T, tbl nft.Table) *tracer {
	tr := &tracer{t: t, chains: map[string]nft.Chain{}, sets: map[string]nft.Set{}, maps: map[string]nft.Map{}}
	for _, c := range tbl.Chains {
		tr.chains[c.Name] = c
	}
	for _, s := range tbl.Sets {
		tr.sets[s.Name] = s
	}
	for _, m := range tbl.Maps {
		tr.maps[m.Name] = m
	}
	return tr
}

type verdict int

const (
	vContinue verdict = iota // fell off the chain or returned
	vAccept
	vDrop
)

func (tr *tracer) forward(p policy.Packet) bool {
	return tr.chain(ChainForward, p) != vDrop
}

func (tr *tracer) chain(name string, p policy.Packet) verdict {
	c, ok := tr.chains[name]
	if !ok {
		tr.t.Fatalf("trace: no chain %s", name)
	}
	for _, r := range c.Rules {
		if !tr.matches(r, p) {
			continue
		}
		switch a := r.Action; a.Kind {
		case nft.ActAccept:
			return vAccept
		case nft.ActDrop:
			return vDrop
		case nft.ActReturn:
			return vContinue
		case nft.ActVMap:
			key := tr.key(a.Keys, p)
			for _, e := range tr.maps[a.Map].Elements {
				if e.Key != key {
					continue
				}
				target, ok := strings.CutPrefix(e.Value, "jump ")
				if !ok {
					tr.t.Fatalf("trace: verdict %q", e.Value)
				}
				if v := tr.chain(target, p); v != vContinue {
					return v
				}
			}
		default:
			tr.t.Fatalf("trace: action %s", a.Kind)
		}
	}
	return vContinue
}

func (tr *tracer) field(f nft.Field, p policy.Packet) string {
	switch f {
	case nft.IPSaddr:
		return p.Src.String()
	case nft.IPDaddr:
		return p.Dst.String()
	case nft.L4Proto:
		return strings.ToLower(string(p.Protocol))
	case nft.THDport:
		return strconv.Itoa(int(p.DstPort))
	}
	tr.t.Fatalf("trace: field %s", f)
	return ""
}

func (tr *tracer) key(fs []nft.Field, p policy.Packet) string {
	parts := make([]string, len(fs))
	for i, f := range fs {
		parts[i] = tr.field(f, p)
	}
	return strings.Join(parts, " . ")
}

func (tr *tracer) matches(r nft.Rule, p policy.Packet) bool {
	for _, m := range r.Match {
		if m.Neg {
			tr.t.Fatalf("trace: negated match %s", m)
		}
		if len(m.Keys) == 1 && m.Keys[0] == nft.CTState {
			return false // the first packet is new
		}
		if m.Set != "" {
			s, ok := tr.sets[m.Set]
			if !ok {
				tr.t.Fatalf("trace: no set %s", m.Set)
			}
			key, found := tr.key(m.Keys, p), false
			for _, e := range s.Elements {
				if s.Interval {
					pfx, err := netip.ParsePrefix(e.Key)
					if err != nil {
						pfx = netip.PrefixFrom(netip.MustParseAddr(e.Key), 32)
					}
					found = found || pfx.Contains(netip.MustParseAddr(key))
				} else {
					found = found || e.Key == key
				}
			}
			if !found {
				return false
			}
			continue
		}
		v := tr.field(m.Keys[0], p)
		if lo, hi, ok := strings.Cut(m.Value, "-"); ok && m.Keys[0] == nft.THDport {
			l, _ := strconv.Atoi(lo)
			h, _ := strconv.Atoi(hi)
			if int(p.DstPort) < l || int(p.DstPort) > h {
				return false
			}
			continue
		}
		if v != m.Value {
			return false
		}
	}
	return true
}

// randomPolicies draws policies over the fixture: random selectors,
// ipBlocks with excepts, numeric, ranged and named ports of three
// protocols, both directions, and now and then an invalid one.
func randomPolicies(r *rand.Rand) []*networkingv1.NetworkPolicy {
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	sel := func() *metav1.LabelSelector {
		switch r.IntN(4) {
		case 0:
			return matchP()
		case 1:
			return matchP("pod", pick("a", "b", "c"))
		case 2:
			return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pod", Operator: metav1.LabelSelectorOpNotIn, Values: []string{pick("a", "b", "c")}}}}
		}
		return nil
	}
	peer := func() networkingv1.NetworkPolicyPeer {
		switch r.IntN(5) {
		case 0:
			return podPeer(sel())
		case 1:
			return nsPeer(matchP("team", pick("blue", "red")))
		case 2:
			return bothPeer(matchP("ns", pick("x", "y", "z")), matchP("pod", pick("a", "b", "c")))
		case 3:
			return blockPeer("10.0.0.0/16", pick("10.0.1.0/24", "10.0.0.2/32", "10.0.2.0/25"))
		}
		if r.IntN(10) == 0 {
			return blockPeer("10.0.0.0/40") // invalid
		}
		return blockPeer(pick("10.0.0.0/23", "10.0.2.0/24", "192.0.2.0/24"))
	}
	ports := func() []networkingv1.NetworkPolicyPort {
		var out []networkingv1.NetworkPolicyPort
		for range r.IntN(3) {
			switch r.IntN(5) {
			case 0:
				out = append(out, port("TCP", 80))
			case 1:
				out = append(out, port("UDP", 81))
			case 2:
				out = append(out, port("SCTP", nil))
			case 3:
				out = append(out, port("TCP", 79, 8080))
			case 4:
				out = append(out, port("TCP", "http"))
			}
		}
		return out
	}
	var out []*networkingv1.NetworkPolicy
	for i := range 1 + r.IntN(4) {
		ns := pick("x", "y", "z")
		var muts []func(*networkingv1.NetworkPolicy)
		switch r.IntN(3) {
		case 0:
			muts = append(muts, ingressOnly)
		case 1:
			muts = append(muts, egressOnly)
		case 2:
			muts = append(muts, both)
		}
		for range r.IntN(3) {
			var ps []networkingv1.NetworkPolicyPeer
			for range r.IntN(3) {
				ps = append(ps, peer())
			}
			muts = append(muts, ingress(ps, ports()...), egress(ps, ports()...))
		}
		podSel := match()
		if s := sel(); s != nil {
			podSel = *s
		}
		out = append(out, netpol(ns, fmt.Sprintf("p%d", i), podSel, muts...))
	}
	return out
}

// TestRandomTraceMatchesEvaluate renders random models and traces every
// pod-to-pod and pod-to-outside packet on a few ports through the table:
// the table must decide as Model.Evaluate does.
func TestRandomTraceMatchesEvaluate(t *testing.T) {
	iterations := 300
	if testing.Short() {
		iterations = 50
	}
	r := rand.New(rand.NewPCG(1, 2))
	base := fixture()
	var addrs []netip.Addr
	for _, p := range base.Pods {
		addrs = append(addrs, addr(p.Status.PodIP))
	}
	addrs = append(addrs, addr("192.0.2.7"), addr("10.0.1.200"))
	type pp struct {
		proto corev1.Protocol
		port  uint16
	}
	tried := map[bool]int{}
	for it := range iterations {
		s := fixture()
		s.Policies = randomPolicies(r)
		for _, node := range []string{"n1", "n2"} {
			s.Node = node
			m, _ := policy.Compile(s)
			tbl := Render(m)
			tr := newTracer(t, tbl)
			for _, src := range addrs {
				for _, dst := range addrs {
					for _, x := range []pp{{"TCP", 80}, {"TCP", 8080}, {"UDP", 81}, {"SCTP", 82}, {"TCP", 22}} {
						p := policy.Packet{Src: src, Dst: dst, Protocol: x.proto, DstPort: x.port}
						want := m.Evaluate(p).Allowed
						tried[want]++
						if got := tr.forward(p); got != want {
							var pols []string
							for _, pol := range s.Policies {
								pols = append(pols, fmt.Sprintf("%s/%s %+v", pol.Namespace, pol.Name, pol.Spec))
							}
							t.Fatalf("iteration %d node %s: %s -> %s %s/%d: table allows=%v, model %v\nmodel:\n%s\ntable:\n%s\npolicies:\n%s",
								it, node, src, dst, x.proto, x.port, got, want, m, tbl, strings.Join(pols, "\n"))
						}
					}
				}
			}
		}
	}
	t.Logf("traced %d allowed and %d denied packets", tried[true], tried[false])
	if tried[true] == 0 || tried[false] == 0 {
		t.Error("the random policies never allowed or never denied")
	}
}
