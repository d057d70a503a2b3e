package nft

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// affinityTable is a Service with session affinity through a dynamic set,
// endpoints in one shared map keyed (service id . bucket), masquerade
// fully-random, fib and interface matches.
func affinityTable() Table {
	return Table{
		Sets: []Set{{Name: "aff-web", KeyType: []DataType{TypeIPv4Addr}, Dynamic: true, Timeout: 3 * time.Hour}},
		Maps: []Map{{Name: "endpoints", KeyType: []DataType{TypeMark, TypeMark}, DataType: []DataType{TypeVerdict},
			Elements: []Element{{Key: "7 . 0", Value: "goto ep-a"}, {Key: "7 . 1", Value: "goto ep-b"}}}},
		Chains: []Chain{
			{Name: "ep-a", Rules: []Rule{{Update: &SetUpdate{Set: "aff-web", Keys: []Field{IPSaddr}}, Action: Action{Kind: ActDNAT, Addr: "10.244.1.2", Port: 80}}}},
			{Name: "ep-b", Rules: []Rule{{Action: Action{Kind: ActDNAT, Addr: "10.244.1.3", Port: 80}}}},
			{Name: "svc-web", Rules: []Rule{
				{Match: []Match{{Keys: []Field{IPSaddr}, Set: "aff-web"}}, Action: Action{Kind: ActGoto, Chain: "ep-a"}},
				{Counter: true, Action: Action{Kind: ActVMap, Keys: []Field{Const(7), Numgen(2)}, Map: "endpoints"}},
			}},
			{Name: ChainNATPrerouting, Type: TypeNAT, Hook: HookPrerouting, Priority: PriorityDstNAT, Rules: []Rule{
				{Match: []Match{{Keys: []Field{FibDaddrType}, Value: "local"}, {Keys: []Field{IIFName}, Value: "veth*", Neg: true}}, Action: Action{Kind: ActJump, Chain: "svc-web"}},
			}},
			{Name: ChainNATPostrouting, Type: TypeNAT, Hook: HookPostrouting, Priority: PrioritySrcNAT, Rules: []Rule{
				{Match: []Match{{Keys: []Field{OIFName}, Value: "eth0"}, {Keys: []Field{FibSaddrType}, Value: "local", Neg: true}}, Action: Action{Kind: ActMasqueradeFullyRandom}},
			}},
		},
	}
}

func TestNewVocabularyRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		r    Rule
		want string
	}{
		{Rule{Action: Action{Kind: ActVMap, Keys: []Field{Const(7), Numgen(3)}, Map: "endpoints"}}, "7 . numgen random mod 3 vmap @endpoints"},
		{Rule{Action: Action{Kind: ActVMap, Keys: []Field{Const(0), Numgen(1)}, Map: "e"}}, "0 . numgen random mod 1 vmap @e"},
		{Rule{Match: []Match{{Keys: []Field{Const(4294967295), IPDaddr}, Set: "s"}}, Action: Action{Kind: ActAccept}}, "4294967295 . ip daddr @s accept"},
		{Rule{Match: []Match{{Keys: []Field{FibDaddrType}, Value: "local"}}, Action: Action{Kind: ActJump, Chain: "nodeports"}}, "fib daddr type local jump nodeports"},
		{Rule{Match: []Match{{Keys: []Field{FibSaddrType}, Value: "local", Neg: true}}, Action: Action{Kind: ActReturn}}, "fib saddr type != local return"},
		{Rule{Match: []Match{{Keys: []Field{FibDaddrType}, Value: "broadcast"}, {Keys: []Field{FibDaddrType}, Value: "multicast", Neg: true}, {Keys: []Field{FibSaddrType}, Value: "unicast"}}}, "fib daddr type broadcast fib daddr type != multicast fib saddr type unicast"},
		{Rule{Match: []Match{{Keys: []Field{IIFName}, Value: "veth*"}}, Counter: true}, `iifname "veth*" counter`},
		{Rule{Match: []Match{{Keys: []Field{OIFName}, Value: "eth0", Neg: true}, {Keys: []Field{IIFName}, Value: "lo"}}, Action: Action{Kind: ActAccept}}, `oifname != "eth0" iifname "lo" accept`},
		{Rule{Match: []Match{{Keys: []Field{IPDaddr}, Value: "10.96.0.10"}}, Counter: true, MarkOr: 0x4000, Update: &SetUpdate{Set: "aff-x", Keys: []Field{IPSaddr}}, Action: Action{Kind: ActGoto, Chain: "ep"}},
			"ip daddr 10.96.0.10 counter meta mark set meta mark | 0x00004000 update @aff-x { ip saddr } goto ep"},
		{Rule{Update: &SetUpdate{Set: "aff", Keys: []Field{IPSaddr, THDport}}}, "update @aff { ip saddr . th dport }"},
		{Rule{Match: []Match{{Keys: []Field{MetaMark}, Mask: 0x4000, Value: "0x00004000"}}, Action: Action{Kind: ActMasqueradeFullyRandom}}, "meta mark & 0x00004000 == 0x00004000 masquerade fully-random"},
		{Rule{Action: Action{Kind: ActMasquerade}}, "masquerade"},
		{Rule{Match: []Match{{Keys: []Field{CTState}, Value: "established,related"}}, Action: Action{Kind: ActAccept}}, "ct state established,related accept"},
		{Rule{Match: []Match{{Keys: []Field{MetaMark}, Mask: 0x4000, Neg: true, Value: "0x00004000"}}, Action: Action{Kind: ActReturn}}, "meta mark & 0x00004000 != 0x00004000 return"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
			continue
		}
		back, err := ParseRule(tc.want)
		if err != nil {
			t.Errorf("ParseRule(%q): %v", tc.want, err)
			continue
		}
		if back.String() != tc.want {
			t.Errorf("round trip %q -> %q", tc.want, back.String())
		}
		// The parsed rule is the model rule, not just the same text.
		if tc.r.Update != nil && (back.Update == nil || back.Update.Set != tc.r.Update.Set || joinFields(back.Update.Keys) != joinFields(tc.r.Update.Keys)) {
			t.Errorf("ParseRule(%q).Update = %+v, want %+v", tc.want, back.Update, tc.r.Update)
		}
		if len(tc.r.Match) > 0 && tc.r.Match[0].Keys[0].quoted() && back.Match[0].Value != tc.r.Match[0].Value {
			t.Errorf("ParseRule(%q) interface value %q, want %q unquoted", tc.want, back.Match[0].Value, tc.r.Match[0].Value)
		}
	}
	for _, bad := range []string{
		"update aff { ip saddr }", "update @aff ip saddr", "update @aff { ip saddr", "update @aff { bogus }",
		"iifname veth0 accept", "fib daddr local", "masquerade randomly",
	} {
		if r, err := ParseRule(bad); err == nil {
			t.Errorf("ParseRule(%q) = %q, nil error; want one", bad, r)
		}
	}
}

func TestConstField(t *testing.T) {
	if v, ok := Const(7).ConstValue(); !ok || v != 7 {
		t.Errorf("Const(7).ConstValue() = %d, %v", v, ok)
	}
	if dt, ok := Const(7).DataType(); !ok || dt != TypeMark {
		t.Errorf("Const(7).DataType() = %q, %v; want mark", dt, ok)
	}
	for _, f := range []Field{IPSaddr, Numgen(3), "007", "-1", "4294967296", "", FibDaddrType} {
		if _, ok := f.ConstValue(); ok {
			t.Errorf("%q.ConstValue() ok, want not a constant", f)
		}
	}
	for _, f := range []Field{FibDaddrType, FibSaddrType, IIFName, OIFName} {
		if _, ok := f.DataType(); ok {
			t.Errorf("%q is a set key type, want not", f)
		}
	}
}

func TestDynamicSetString(t *testing.T) {
	got := affinityTable().String()
	want := "\tset aff-web {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 10800s\n\t}\n"
	if !strings.Contains(got, want) {
		t.Errorf("table:\n%s\nlacks:\n%s", got, want)
	}
	if s := (Set{Name: "x", KeyType: []DataType{TypeIPv4Addr}, Dynamic: true}).String(); !strings.Contains(s, "flags dynamic\n") || strings.Contains(s, "timeout") {
		t.Errorf("dynamic set without timeout:\n%s", s)
	}
	tx := Plan(Table{}, affinityTable())
	if !strings.Contains(tx.String(), "add set inet meridian aff-web { type ipv4_addr; flags dynamic,timeout; timeout 10800s; }") {
		t.Errorf("transaction:\n%s", tx)
	}
}

// TestPlanDynamicSetElements: the kernel fills a dynamic set from packets;
// Plan must neither add what the desired model lists nor delete what the
// kernel learned, and a change of timeout recreates the set (refilling the
// chains that reference it).
func TestPlanDynamicSetElements(t *testing.T) {
	des := affinityTable()
	des.Sets[0].Elements = []Element{{Key: "10.0.0.1"}} // ignored
	tx := Plan(Table{}, des)
	if len(tx.AddSets) != 1 || len(tx.AddSets[0].Elements) != 0 || len(tx.AddElements) != 0 {
		t.Errorf("create: dynamic set elements planned:\n%s", tx)
	}
	if full := Full(des, false); len(full.AddSets[0].Elements) != 0 {
		t.Errorf("Full plans dynamic set elements: %v", full.AddSets[0].Elements)
	}

	learned := affinityTable()
	learned.Sets[0].Elements = []Element{{Key: "10.1.2.3"}, {Key: "10.1.2.4"}}
	if tx := Plan(learned, affinityTable()); !tx.Empty() {
		t.Errorf("learned elements planned away:\n%s", tx)
	}
	if tx := Plan(learned, des); !tx.Empty() {
		t.Errorf("desired elements of a dynamic set planned:\n%s", tx)
	}

	// Deleting a rule that updates the set does not touch the set.
	noUpdate := affinityTable()
	noUpdate.Chains[0].Rules[0].Update = nil
	tx = Plan(learned, noUpdate)
	if len(tx.DeleteSets)+len(tx.DeleteElements)+len(tx.AddSets) != 0 || len(tx.FlushChains) != 1 {
		t.Errorf("rule change:\n%s", tx)
	}

	retimed := affinityTable()
	retimed.Sets[0].Timeout = time.Hour
	tx = Plan(learned, retimed)
	if len(tx.DeleteSets) != 1 || len(tx.AddSets) != 1 || len(tx.FlushChains) != 2 {
		t.Errorf("timeout change: want the set recreated and its two referencing chains refilled:\n%s", tx)
	}
	f := NewFake()
	if err := f.Apply(Plan(Table{}, learned)); err != nil {
		t.Fatal(err)
	}
	if err := f.Apply(Plan(learned, retimed)); err != nil {
		t.Fatalf("apply timeout change: %v", err)
	}
	if got, _ := f.Dump(); got.String() != retimed.String() {
		t.Errorf("after timeout change:\n%s\nwant:\n%s", got, retimed)
	}
}

func TestFakeNewVocabulary(t *testing.T) {
	f := NewFake()
	if err := f.Apply(Plan(Table{}, affinityTable())); err != nil {
		t.Fatal(err)
	}
	got, _ := f.Dump()
	if got.String() != affinityTable().String() {
		t.Errorf("Dump:\n%s\nwant:\n%s", got, affinityTable())
	}
	counters, err := f.Counters()
	if err != nil || len(counters) != 1 || counters[0] != (RuleCounter{Chain: "svc-web", Index: 1}) {
		t.Errorf("Counters = %+v, %v; want svc-web rule 1 at zero", counters, err)
	}

	for name, r := range map[string]Rule{
		"update of a static set":     {Update: &SetUpdate{Set: "static", Keys: []Field{IPSaddr}}},
		"update of a missing set":    {Update: &SetUpdate{Set: "nope", Keys: []Field{IPSaddr}}},
		"update with the wrong keys": {Update: &SetUpdate{Set: "aff-web", Keys: []Field{IPSaddr, THDport}}},
		"update with a port key":     {Update: &SetUpdate{Set: "aff-web", Keys: []Field{THDport}}},
		"unknown fib type":           {Match: []Match{{Keys: []Field{FibDaddrType}, Value: "anycast"}}},
		"fib as a set key":           {Match: []Match{{Keys: []Field{FibDaddrType}, Set: "static"}}},
		"iifname as a set key":       {Match: []Match{{Keys: []Field{IIFName}, Set: "static"}}},
		"empty wildcard":             {Match: []Match{{Keys: []Field{IIFName}, Value: "*"}}},
		"interface name too long":    {Match: []Match{{Keys: []Field{OIFName}, Value: "a234567890123456"}}},
		"constant compared":          {Match: []Match{{Keys: []Field{Const(3)}, Value: "3"}}},
	} {
		des := affinityTable()
		des.Sets = append(des.Sets, Set{Name: "static", KeyType: []DataType{TypeIPv4Addr}})
		des.Chains = append(des.Chains, Chain{Name: "bad", Rules: []Rule{r}})
		err := f.Apply(Plan(got, des))
		if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: Apply = %v, want a refusal", name, err)
		}
	}
	if after, _ := f.Dump(); after.String() != got.String() {
		t.Errorf("refused transactions changed the table")
	}
}

func TestMerge(t *testing.T) {
	svc := affinityTable()
	pol := Table{
		Sets: []Set{{Name: "pods", KeyType: []DataType{TypeIPv4Addr}, Interval: true, Elements: []Element{{Key: "10.244.0.0/16"}}}},
		Chains: []Chain{
			{Name: ChainFilterForward, Type: TypeFilter, Hook: HookForward, Priority: PriorityFilter, Rules: []Rule{
				{Match: []Match{{Keys: []Field{CTState}, Value: "established,related"}}, Action: Action{Kind: ActAccept}},
			}},
			// Identical in both parts: kept once.
			{Name: "ep-b", Rules: []Rule{{Action: Action{Kind: ActDNAT, Addr: "10.244.1.3", Port: 80}}}},
		},
	}
	got, err := Merge(svc, pol, Table{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Chains) != len(svc.Chains)+1 || len(got.Sets) != 2 || len(got.Maps) != 1 {
		t.Errorf("Merge: %d chains, %d sets, %d maps:\n%s", len(got.Chains), len(got.Sets), len(got.Maps), got)
	}
	for _, part := range []Table{svc, pol} {
		for _, c := range part.Chains {
			if !strings.Contains(got.String(), c.String()) {
				t.Errorf("merged table lacks chain %s", c.Name)
			}
		}
	}
	if m, err := Merge(); err != nil || !m.Empty() {
		t.Errorf("Merge() = %v, %v; want empty", m, err)
	}

	for name, other := range map[string]Table{
		"ep-a":                  {Chains: []Chain{{Name: "ep-a"}}},
		"nat-prerouting":        {Chains: []Chain{{Name: ChainNATPrerouting, Type: TypeNAT, Hook: HookPrerouting, Priority: PriorityDstNAT + 1, Rules: svc.Chains[3].Rules}}},
		"aff-web":               {Sets: []Set{{Name: "aff-web", KeyType: []DataType{TypeIPv4Addr}, Dynamic: true}}},
		"endpoints":             {Maps: []Map{{Name: "endpoints", KeyType: []DataType{TypeMark, TypeMark}, DataType: []DataType{TypeVerdict}}}},
		"set and map endpoints": {Sets: []Set{{Name: "endpoints", KeyType: []DataType{TypeMark}}}},
	} {
		_, err := Merge(svc, other)
		if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(name, "set and map ")) {
			t.Errorf("Merge with a different %s = %v, want an error naming it", name, err)
		}
	}
	// A comment is part of a rule: different comments conflict.
	commented := svc
	commented.Chains = []Chain{{Name: "ep-b", Rules: []Rule{{Action: Action{Kind: ActDNAT, Addr: "10.244.1.3", Port: 80}, Comment: "x"}}}}
	if _, err := Merge(svc, Table{Chains: commented.Chains}); err == nil {
		t.Error("Merge of chains differing in a comment succeeded")
	}
}
