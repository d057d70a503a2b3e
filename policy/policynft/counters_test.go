package policynft

import (
	"reflect"
	"testing"

	"github.com/meridian-net/meridian/daemon/nft"
)

func TestDrops(t *testing.T) {
	in, out := PodChain("x/a", Ingress), PodChain("x/a", Egress)
	cIn := PodChain("x/c", Ingress)
	counters := []nft.RuleCounter{
		{Chain: "filter-forward", Index: 2, Comment: "default deny", Packets: 99},
		{Chain: in, Index: 0, Comment: "x/from-b ingress[0]", Packets: 3, Bytes: 180},
		{Chain: in, Index: 1, Comment: "x/from-b ingress[0]", Packets: 1, Bytes: 60},
		{Chain: in, Index: 2, Comment: "x/web ingress[1]", Packets: 2, Bytes: 120},
		{Chain: in, Index: 3, Comment: "x/a ingress drop: from-b web", Packets: 5, Bytes: 300},
		{Chain: out, Index: 0, Comment: "x/a egress drop: to-blue", Packets: 7, Bytes: 420},
		{Chain: cIn, Index: 0, Comment: "x/c ingress failed closed", Packets: 4, Bytes: 240},
	}
	got := Drops(counters)
	want := []DropCount{
		{Chain: out, Pod: "x/a", Direction: Egress, Policies: []string{"x/to-blue"}, Packets: 7, Bytes: 420},
		{Chain: in, Pod: "x/a", Direction: Ingress, Policies: []string{"x/from-b", "x/web"}, Packets: 5, Bytes: 300,
			Allowed: []RuleHits{{Policy: "x/from-b", Index: 0, Packets: 4, Bytes: 240}, {Policy: "x/web", Index: 1, Packets: 2, Bytes: 120}}},
		{Chain: cIn, Pod: "x/c", Direction: Ingress, FailedClosed: true, Packets: 4, Bytes: 240},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Drops =\n%+v\nwant\n%+v", got, want)
	}
	byPol := ByPolicy(got)
	wantPol := []PolicyCount{
		{Policy: "x/from-b", DroppedPackets: 5, DroppedBytes: 300, AllowedPackets: 4, AllowedBytes: 240},
		{Policy: "x/to-blue", DroppedPackets: 7, DroppedBytes: 420},
		{Policy: "x/web", DroppedPackets: 5, DroppedBytes: 300, AllowedPackets: 2, AllowedBytes: 120},
	}
	if !reflect.DeepEqual(byPol, wantPol) {
		t.Errorf("ByPolicy =\n%+v\nwant\n%+v", byPol, wantPol)
	}
}

// TestDropsOfRenderedTable reads the Fake's counters of a rendered table:
// every pod chain's drop is found and attributed to its policies.
func TestDropsOfRenderedTable(t *testing.T) {
	m := compile(t, planPolicies)
	f := nft.NewFake()
	if err := f.Apply(nft.Plan(nft.Table{}, Render(m))); err != nil {
		t.Fatal(err)
	}
	counters, err := f.Counters()
	if err != nil {
		t.Fatal(err)
	}
	got := Drops(counters)
	if len(got) != 2 {
		t.Fatalf("Drops = %+v, want x/a's two chains", got)
	}
	if got[0].Pod != "x/a" || got[0].Direction != Egress || !reflect.DeepEqual(got[0].Policies, []string{"x/to-blue"}) ||
		len(got[0].Allowed) != 1 || got[0].Allowed[0].Policy != "x/to-blue" {
		t.Errorf("egress = %+v", got[0])
	}
	if got[1].Pod != "x/a" || got[1].Direction != Ingress || !reflect.DeepEqual(got[1].Policies, []string{"x/from-b"}) {
		t.Errorf("ingress = %+v", got[1])
	}
}
