package policynft

import (
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/nft/kernel"
	"github.com/meridian-net/meridian/policy"
)

// scaleSnapshot: 50 namespaces of 40 pods (half on n1), 20 policies per
// namespace, each selecting one app and allowing two others, one of them
// across namespaces, on numeric, ranged and named ports.
func scaleSnapshot() policy.Snapshot {
	s := policy.Snapshot{Node: "n1"}
	for n := range 50 {
		ns := fmt.Sprintf("ns%02d", n)
		s.Namespaces = append(s.Namespaces, namespace(ns, "team", fmt.Sprintf("t%d", n%5)))
		for p := range 40 {
			node := "n1"
			if p%2 == 1 {
				node = "n2"
			}
			s.Pods = append(s.Pods, pod(ns, fmt.Sprintf("p%02d", p), node, fmt.Sprintf("10.%d.%d.%d", 100+n/50, n%50, p+1),
				map[string]string{"app": fmt.Sprintf("a%d", p%10)}, cport("http", int32(8000+p%3), "")))
		}
		for k := range 20 {
			s.Policies = append(s.Policies, netpol(ns, fmt.Sprintf("pol%02d", k), match("app", fmt.Sprintf("a%d", k%10)), both,
				ingress(peers(podPeer(matchP("app", fmt.Sprintf("a%d", (k+1)%10)))), port("TCP", 80), port("TCP", "http")),
				ingress(peers(bothPeer(matchP("team", fmt.Sprintf("t%d", k%5)), matchP("app", fmt.Sprintf("a%d", (k+2)%10)))), port("TCP", 9000, 9100)),
				egress(peers(nsPeer(matchP("team", fmt.Sprintf("t%d", (k+3)%5)))), port("TCP", "http"), port("UDP", 53)),
			))
		}
	}
	return s
}

func TestScale(t *testing.T) {
	if testing.Short() {
		t.Skip("scale test skipped with -short")
	}
	s := scaleSnapshot()
	start := time.Now()
	m, problems := policy.Compile(s)
	compileTime := time.Since(start)
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems[:1])
	}
	start = time.Now()
	t0 := Render(m)
	renderTime := time.Since(start)
	rules, elements := 0, 0
	for _, c := range t0.Chains {
		rules += len(c.Rules)
	}
	for _, st := range t0.Sets {
		elements += len(st.Elements)
	}
	for _, mp := range t0.Maps {
		elements += len(mp.Elements)
	}
	t.Logf("%d policies, %d pods (%d local): compile %v, render %v: %d chains, %d rules, %d sets, %d elements",
		len(s.Policies), len(s.Pods), len(m.Pods), compileTime, renderTime, len(t0.Chains), rules, len(t0.Sets), elements)
	if len(podChains(t0)) != 2*len(m.Pods) {
		t.Errorf("%d pod chains for %d local pods isolated both ways", len(podChains(t0)), len(m.Pods))
	}

	// One pod more, on the other node: a peer of many selectors.
	s.Pods = append(s.Pods, pod("ns07", "new", "n2", "10.100.7.200", map[string]string{"app": "a3"}, cport("http", 8001, "")))
	m1, _ := policy.Compile(s)
	t1 := Render(m1)
	start = time.Now()
	tx := nft.Plan(t0, t1)
	planTime := time.Since(start)
	onlyElements(t, tx)
	// It joins the selector sets that match it (one pod selector of its
	// namespace, namespace+pod selectors, namespace selectors) and the
	// named-port set; nothing else moves.
	if tx.Ops() > 10 || len(tx.DeleteElements) > 0 {
		t.Errorf("one new peer pod planned %d ops:\n%s", tx.Ops(), tx)
	}
	t.Logf("plan of one pod added: %v, %d ops in %d sets", planTime, tx.Ops(), len(tx.AddElements))

	f := nft.NewFake()
	start = time.Now()
	if err := f.Apply(nft.Plan(nft.Table{}, t0)); err != nil {
		t.Fatalf("fake refused the scale table: %v", err)
	}
	if err := f.Apply(tx); err != nil {
		t.Fatalf("fake refused the element diff: %v", err)
	}
	t.Logf("fake apply of the full table and the diff: %v", time.Since(start))

	if os.Geteuid() != 0 {
		return
	}
	t.Run("kernel", func(t *testing.T) {
		n := newNetNS(t)
		conn := kernel.New(int(n.Fd()), slog.New(slog.DiscardHandler))
		start := time.Now()
		if err := conn.Apply(nft.Plan(nft.Table{}, t0)); err != nil {
			t.Fatalf("kernel refused the scale table: %v", err)
		}
		full := time.Since(start)
		start = time.Now()
		if err := conn.Apply(tx); err != nil {
			t.Fatalf("kernel refused the element diff: %v", err)
		}
		diff := time.Since(start)
		got, err := conn.Dump()
		if err != nil {
			t.Fatal(err)
		}
		if again := nft.Plan(got, t1); !again.Empty() {
			t.Errorf("kernel table differs from the render after the diff (%d ops)", again.Ops())
		}
		t.Logf("kernel: full table %v, one-pod diff %v", full, diff)
	})
}

// A pod on this node that no policy selects gets no map entry and no
// chain: it only joins its hairpin set and the selector sets it matches.
func TestScaleUnselectedLocalPod(t *testing.T) {
	if testing.Short() {
		t.Skip("scale test skipped with -short")
	}
	s := scaleSnapshot()
	m0, _ := policy.Compile(s)
	s.Pods = append(s.Pods, pod("ns01", "lonely", "n1", "10.100.1.222", map[string]string{"app": "none"}))
	m1, _ := policy.Compile(s)
	tx := nft.Plan(Render(m0), Render(m1))
	onlyElements(t, tx)
	self := false
	for _, op := range tx.AddElements {
		switch op.Name {
		case MapIngress, MapEgress:
			t.Errorf("a pod no policy selects got a %s entry", op.Name)
		case SetSelf:
			self = len(op.Elements) == 1 && op.Elements[0].Key == "10.100.1.222 . 10.100.1.222"
		}
	}
	if !self {
		t.Errorf("the pod's hairpin element is missing:\n%s", tx)
	}
}
