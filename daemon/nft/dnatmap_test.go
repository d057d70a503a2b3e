package nft

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var (
	natKey  = []DataType{TypeMark, TypeMark}
	natData = []DataType{TypeIPv4Addr, TypeInetService}
	affKey  = []DataType{TypeMark, TypeIPv4Addr}
)

// dnatMapTable is the shape Service load balancing renders: a shared data
// map of endpoints keyed (target id . bucket), a dynamic affinity map
// keyed (target id . client), and a chain that tries affinity first.
func dnatMapTable(timeout time.Duration, eps ...Element) Table {
	return Table{
		Maps: []Map{
			{Name: "eps", KeyType: natKey, DataType: natData, Elements: eps},
			{Name: "aff", KeyType: affKey, DataType: natData, Dynamic: true, Timeout: timeout},
		},
		Chains: []Chain{
			{Name: "nat", Type: TypeNAT, Hook: HookPrerouting, Priority: PriorityDstNAT, Rules: []Rule{{Action: Action{Kind: ActJump, Chain: "svc"}}}},
			{Name: "svc", Rules: []Rule{
				{Action: Action{Kind: ActDNATMap, Keys: []Field{Const(7), IPSaddr}, Map: "aff"}},
				{Match: []Match{{Keys: []Field{L4Proto}, Value: "tcp"}}, Action: Action{Kind: ActDNATMap, Keys: []Field{Const(7), Numgen(2)}, Map: "eps",
					Record: &SetUpdate{Set: "aff", Keys: []Field{Const(7), IPSaddr}}}},
			}},
		},
	}
}

func TestDNATMapRuleText(t *testing.T) {
	for _, c := range []struct {
		r    Rule
		want string
	}{
		{Rule{Action: Action{Kind: ActDNATMap, Keys: []Field{Const(7), Numgen(3)}, Map: "services-endpoints"}},
			"dnat ip to 7 . numgen random mod 3 map @services-endpoints"},
		{Rule{Action: Action{Kind: ActDNATMap, Keys: []Field{Const(7), IPSaddr}, Map: "services-affinity-10800"}},
			"dnat ip to 7 . ip saddr map @services-affinity-10800"},
		{Rule{Match: []Match{{Keys: []Field{L4Proto}, Value: "udp"}}, Action: Action{Kind: ActDNATMap, Keys: []Field{Const(4294967295), Numgen(2)}, Map: "e",
			Record: &SetUpdate{Set: "aff", Keys: []Field{Const(4294967295), IPSaddr}}}},
			"meta l4proto udp dnat ip to 4294967295 . numgen random mod 2 map @e record @aff { 4294967295 . ip saddr }"},
		{Rule{Action: Action{Kind: ActDNAT, Addr: "10.0.0.1", Port: 80}}, "dnat ip to 10.0.0.1:80"},
		{Rule{Action: Action{Kind: ActDNAT, Addr: "10.0.0.1"}}, "dnat ip to 10.0.0.1"},
	} {
		if got := c.r.Text(); got != c.want {
			t.Errorf("Text() = %q, want %q", got, c.want)
		}
		back, err := ParseRule(c.want)
		if err != nil {
			t.Errorf("ParseRule(%q): %v", c.want, err)
			continue
		}
		if back.Text() != c.want || back.Action.Kind != c.r.Action.Kind {
			t.Errorf("ParseRule(%q) = %+v, renders %q", c.want, back, back.Text())
		}
	}
	for _, bad := range []string{
		"dnat ip to 7 . numgen random mod 3",
		"dnat ip to 7 . numgen random mod 3 map",
		"dnat ip to 7 . numgen random mod 3 map @e record aff { ip saddr }",
		"dnat ip to 7 . numgen random mod 3 map @e record @aff { ip saddr",
	} {
		if r, err := ParseRule(bad); err == nil {
			t.Errorf("ParseRule(%q) = %q, want an error", bad, r)
		}
	}
}

func TestDNATMapFake(t *testing.T) {
	f := NewFake()
	tbl := dnatMapTable(10*time.Second, Element{Key: "7 . 0", Value: "10.0.0.1 . 80"}, Element{Key: "7 . 1", Value: "10.0.0.2 . 80"})
	if err := f.Apply(Plan(Table{}, tbl)); err != nil {
		t.Fatalf("apply: %v", err)
	}
	got, _ := f.Dump()
	if tx := Plan(got, tbl); !tx.Empty() {
		t.Errorf("dump differs from desired:\n%s", tx)
	}
	if s := got.String(); !strings.Contains(s, "flags dynamic,timeout\n\t\ttimeout 10s\n") {
		t.Errorf("affinity map rendered without its flags:\n%s", s)
	}

	// Elements the kernel would have learned are never planned away, and
	// desired elements of a dynamic map are never sent.
	learned := got
	learned.Maps = append([]Map(nil), got.Maps...)
	for i := range learned.Maps {
		if learned.Maps[i].Name == "aff" {
			learned.Maps[i].Elements = []Element{{Key: "7 . 192.168.1.1", Value: "10.0.0.1 . 80"}}
		}
	}
	withEls := dnatMapTable(10*time.Second, Element{Key: "7 . 0", Value: "10.0.0.1 . 80"}, Element{Key: "7 . 1", Value: "10.0.0.2 . 80"})
	withEls.Maps[1].Elements = []Element{{Key: "7 . 10.1.1.1", Value: "10.0.0.2 . 80"}}
	if tx := Plan(learned, withEls); !tx.Empty() {
		t.Errorf("plan touches a dynamic map's elements:\n%s", tx)
	}
	if tx := Full(withEls, false); len(tx.AddMaps[0].Elements)+len(tx.AddMaps[1].Elements) != 2 {
		t.Errorf("full sync sends dynamic map elements:\n%s", tx)
	}

	// An endpoint change is element operations only: no chain moves.
	tx := Plan(got, dnatMapTable(10*time.Second, Element{Key: "7 . 0", Value: "10.0.0.1 . 80"}, Element{Key: "7 . 1", Value: "10.0.0.3 . 80"}))
	if len(tx.FillChains)+len(tx.FlushChains)+len(tx.AddChains)+len(tx.AddMaps)+len(tx.DeleteSets) != 0 || len(tx.AddElements) != 1 || len(tx.DeleteElements) != 1 {
		t.Errorf("endpoint change: want one element replaced, got:\n%s", tx)
	}
	if err := f.Apply(tx); err != nil {
		t.Fatalf("endpoint change: %v", err)
	}

	// Another timeout recreates the affinity map, refilling the chain
	// that refers to it.
	tx = Plan(got, dnatMapTable(20*time.Second, Element{Key: "7 . 0", Value: "10.0.0.1 . 80"}, Element{Key: "7 . 1", Value: "10.0.0.2 . 80"}))
	if len(tx.DeleteSets) != 1 || tx.DeleteSets[0] != "aff" || len(tx.AddMaps) != 1 || len(tx.FlushChains) != 1 {
		t.Errorf("timeout change: want aff recreated and svc refilled, got:\n%s", tx)
	}
	f2 := NewFake()
	if err := f2.Apply(Full(tbl, false)); err != nil {
		t.Fatal(err)
	}
	if err := f2.Apply(tx); err != nil {
		t.Errorf("timeout change refused: %v", err)
	}
}

func TestDNATMapFakeRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(*Table)
	}{
		{"lookup in a verdict map", func(t *Table) {
			t.Maps = append(t.Maps, Map{Name: "v", KeyType: natKey, DataType: []DataType{TypeVerdict}})
			t.Chains[1].Rules[1].Action.Map = "v"
		}},
		{"keys of another type", func(t *Table) { t.Chains[1].Rules[1].Action.Keys = []Field{Const(7), L4Proto} }},
		{"record into a static map", func(t *Table) { t.Chains[1].Rules[1].Action.Record.Set = "eps" }},
		{"record keys of another length", func(t *Table) { t.Chains[1].Rules[1].Action.Record.Keys = []Field{Const(7), L4Proto} }},
		{"record of other data", func(t *Table) { t.Maps[1].DataType = []DataType{TypeIPv4Addr} }},
		{"data map without NAT data", func(t *Table) { t.Maps[0].DataType = []DataType{TypeMark} }},
		{"missing map", func(t *Table) { t.Chains[1].Rules[0].Action.Map = "nope" }},
		{"record without dnat", func(t *Table) {
			t.Chains[1].Rules[0].Action = Action{Kind: ActAccept, Record: &SetUpdate{Set: "aff", Keys: []Field{Const(7), IPSaddr}}}
		}},
		{"dynamic verdict map", func(t *Table) {
			t.Maps = append(t.Maps, Map{Name: "v", KeyType: natKey, DataType: []DataType{TypeVerdict}, Dynamic: true})
		}},
	} {
		tbl := dnatMapTable(time.Second)
		c.edit(&tbl)
		if err := NewFake().Apply(Full(tbl, false)); !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: %v, want a refusal", c.name, err)
		}
	}
	if err := NewFake().Apply(Full(dnatMapTable(time.Second), false)); err != nil {
		t.Errorf("valid table refused: %v", err)
	}
}
