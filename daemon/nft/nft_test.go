package nft

import (
	"errors"
	"strings"
	"testing"
)

// serviceTable is a kube-proxy-like layout: a concatenated-key verdict map
// from VIP . proto . port to a per-Service chain, numgen endpoint choice, an
// interval set, and masquerade by mark.
func serviceTable(eps ...string) Table {
	var epMap []Element
	var chains []Chain
	for i, ep := range eps {
		name := "ep-" + strings.ReplaceAll(ep, ".", "-")
		chains = append(chains, Chain{Name: name, Rules: []Rule{
			{Match: []Match{{Keys: []Field{IPSaddr}, Value: ep}}, MarkOr: 0x4000},
			{Action: Action{Kind: ActDNAT, Addr: ep, Port: 8080}},
		}})
		epMap = append(epMap, Element{Key: itoa(i), Value: "goto " + name})
	}
	svcRules := []Rule{{Action: Action{Kind: ActReject}}}
	if len(eps) > 0 {
		svcRules = []Rule{{Counter: true, Action: Action{Kind: ActVMap, Keys: []Field{Numgen(uint32(len(eps)))}, Map: "svc-web-eps"}}}
	}
	chains = append(chains,
		Chain{Name: ChainNATPrerouting, Type: TypeNAT, Hook: HookPrerouting, Priority: PriorityDstNAT, Rules: []Rule{
			{Action: Action{Kind: ActJump, Chain: "services"}},
		}},
		Chain{Name: ChainNATPostrouting, Type: TypeNAT, Hook: HookPostrouting, Priority: PrioritySrcNAT, Rules: []Rule{
			{Match: []Match{{Keys: []Field{MetaMark}, Mask: 0x4000, Value: "0x00004000"}}, Action: Action{Kind: ActMasquerade}},
		}},
		Chain{Name: "services", Rules: []Rule{
			{Match: []Match{{Keys: []Field{IPSaddr}, Set: "cluster-cidrs", Neg: true}}, Action: Action{Kind: ActVMap, Keys: []Field{IPDaddr, L4Proto, THDport}, Map: "service-ips"}},
			{Match: []Match{{Keys: []Field{IPDaddr, L4Proto, THDport}, Set: "no-endpoints"}, {Keys: []Field{L4Proto}, Value: "tcp"}}, Action: Action{Kind: ActRejectTCP}},
			{Match: []Match{{Keys: []Field{IPDaddr, L4Proto, THDport}, Set: "no-endpoints"}}, Action: Action{Kind: ActReject}},
		}},
		Chain{Name: "svc-web", Rules: svcRules},
		Chain{Name: ChainFilterForward, Type: TypeFilter, Hook: HookForward, Priority: PriorityFilter, Rules: []Rule{
			{Match: []Match{{Keys: []Field{CTState}, Value: "established,related"}}, Action: Action{Kind: ActAccept}},
			{Match: []Match{{Keys: []Field{L4Proto}, Value: "tcp"}, {Keys: []Field{THDport}, Neg: true, Value: "22"}, {Keys: []Field{IPDaddr}, Value: "10.0.0.0/8"}}, Counter: true, Action: Action{Kind: ActDrop}, Comment: "drop it"},
		}},
	)
	return Table{
		Chains: chains,
		Sets: []Set{
			{Name: "cluster-cidrs", KeyType: []DataType{TypeIPv4Addr}, Interval: true, Elements: []Element{{Key: "10.244.0.0/16"}, {Key: "192.168.7.1"}}},
			{Name: "no-endpoints", KeyType: []DataType{TypeIPv4Addr, TypeInetProto, TypeInetService}, Elements: []Element{{Key: "10.96.0.20 . udp . 53"}}},
		},
		Maps: []Map{
			{Name: "service-ips", KeyType: []DataType{TypeIPv4Addr, TypeInetProto, TypeInetService}, DataType: []DataType{TypeVerdict},
				Elements: []Element{{Key: "10.96.0.10 . tcp . 80", Value: "goto svc-web"}}},
			{Name: "svc-web-eps", KeyType: []DataType{TypeMark}, DataType: []DataType{TypeVerdict}, Elements: epMap},
			{Name: "backends", KeyType: []DataType{TypeIPv4Addr, TypeInetService}, DataType: []DataType{TypeIPv4Addr, TypeInetService},
				Elements: []Element{{Key: "10.96.0.11 . 443", Value: "10.244.1.5 . 8443"}}},
		},
	}
}

func itoa(i int) string { return string(rune('0' + i)) }

func TestRuleRoundTrip(t *testing.T) {
	for _, c := range serviceTable("10.244.1.2", "10.244.2.3").Chains {
		for _, r := range c.Rules {
			r.Comment = ""
			got, err := ParseRule(r.Text())
			if err != nil {
				t.Fatalf("ParseRule(%q): %v", r.Text(), err)
			}
			if got.String() != r.String() {
				t.Errorf("round trip %q -> %q", r.String(), got.String())
			}
		}
	}
	for _, bad := range []string{"ip foo 1.2.3.4", "numgen random mod 0 vmap @x", "dnat ip 1.2.3.4", "ip daddr"} {
		if _, err := ParseRule(bad); err == nil {
			t.Errorf("ParseRule(%q) = nil error, want one", bad)
		}
	}
}

func TestRuleString(t *testing.T) {
	for _, tc := range []struct {
		r    Rule
		want string
	}{
		{Rule{Match: []Match{{Keys: []Field{IPDaddr, L4Proto, THDport}, Set: "s"}}, Action: Action{Kind: ActGoto, Chain: "c"}}, "ip daddr . meta l4proto . th dport @s goto c"},
		{Rule{Action: Action{Kind: ActVMap, Keys: []Field{Numgen(3)}, Map: "m"}}, "numgen random mod 3 vmap @m"},
		{Rule{Action: Action{Kind: ActDNAT, Addr: "10.0.0.1", Port: 80}}, "dnat ip to 10.0.0.1:80"},
		{Rule{Match: []Match{{Keys: []Field{L4Proto}, Value: "tcp"}}, Action: Action{Kind: ActRejectTCP}}, "meta l4proto tcp reject with tcp reset"},
		{Rule{Match: []Match{{Keys: []Field{MetaMark}, Mask: 0x4000, Value: "0x00004000"}}, Action: Action{Kind: ActMasquerade}}, "meta mark & 0x00004000 == 0x00004000 masquerade"},
		{Rule{Counter: true, MarkOr: 0x4000, Comment: "x y"}, `counter meta mark set meta mark | 0x00004000 comment "x y"`},
		{Rule{Match: []Match{{Keys: []Field{IPSaddr}, Neg: true, Set: "a"}}, Action: Action{Kind: ActReturn}}, "ip saddr != @a return"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

func TestTableString(t *testing.T) {
	got := serviceTable("10.244.1.2").String()
	for _, want := range []string{
		"table inet meridian {\n\tset cluster-cidrs {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.244.0.0/16, 192.168.7.1 }\n\t}\n",
		"\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\telements = { 10.96.0.10 . tcp . 80 : goto svc-web }\n\t}\n",
		"\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n",
		"type nat hook postrouting priority srcnat; policy accept;",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Table.String() lacks %q; got:\n%s", want, got)
		}
	}
}

func TestEncodeKeyRoundTrip(t *testing.T) {
	types := []DataType{TypeIPv4Addr, TypeInetProto, TypeInetService}
	b, err := EncodeKey(types, "10.96.0.10 . tcp . 80")
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0}
	if string(b) != string(want) {
		t.Errorf("EncodeKey = %v, want %v", b, want)
	}
	s, err := DecodeKey(types, b)
	if err != nil || s != "10.96.0.10 . tcp . 80" {
		t.Errorf("DecodeKey = %q, %v", s, err)
	}
	for _, bad := range []string{"10.96.0.10 . tcp", "10.96.0.300 . tcp . 80", "10.96.0.10 . tcp . 70000"} {
		if _, err := EncodeKey(types, bad); err == nil {
			t.Errorf("EncodeKey(%q) = nil error", bad)
		}
	}
}

func TestIntervalBounds(t *testing.T) {
	for _, tc := range []struct{ key, start, end string }{
		{"10.0.0.0/8", "10.0.0.0", "11.0.0.0"},
		{"192.168.7.1", "192.168.7.1", "192.168.7.2"},
		{"255.255.255.0/24", "255.255.255.0", "invalid IP"},
		{"0.0.0.0/0", "0.0.0.0", "invalid IP"},
	} {
		s, e, _, err := IntervalBounds(tc.key)
		if err != nil || s.String() != tc.start || e.String() != tc.end {
			t.Errorf("IntervalBounds(%q) = %v, %v, %v", tc.key, s, e, err)
		}
		if back := IntervalKey(s, e); back != tc.key {
			t.Errorf("IntervalKey(%v, %v) = %q, want %q", s, e, back, tc.key)
		}
	}
	if _, _, _, err := IntervalBounds("10.0.0.1/8"); err == nil {
		t.Error("unmasked prefix accepted")
	}
}

func TestPlan(t *testing.T) {
	one := serviceTable("10.244.1.2")
	two := serviceTable("10.244.1.2", "10.244.2.3")
	for _, tc := range []struct {
		name     string
		cur, des Table
		want     string // Transaction.String()
	}{
		{name: "nothing to nothing", want: ""},
		{name: "same", cur: two, des: two, want: ""},
		{name: "to empty deletes only the table", cur: two, des: Table{}, want: "delete table inet meridian\n"},
		{
			name: "one endpoint added: new chain, one element, one changed rule",
			cur:  one, des: two,
			want: "add table inet meridian\n" +
				"add chain inet meridian ep-10-244-2-3\n" +
				"flush chain inet meridian svc-web\n" +
				"add element inet meridian svc-web-eps { 1 : goto ep-10-244-2-3 }\n" +
				"add rule inet meridian ep-10-244-2-3 ip saddr 10.244.2.3 meta mark set meta mark | 0x00004000\n" +
				"add rule inet meridian ep-10-244-2-3 dnat ip to 10.244.2.3:8080\n" +
				"add rule inet meridian svc-web counter numgen random mod 2 vmap @svc-web-eps\n",
		},
		{
			name: "one endpoint removed: element goes before its chain",
			cur:  two, des: one,
			want: "add table inet meridian\n" +
				"delete element inet meridian svc-web-eps { 1 }\n" +
				"flush chain inet meridian ep-10-244-2-3\n" +
				"flush chain inet meridian svc-web\n" +
				"add rule inet meridian svc-web counter numgen random mod 1 vmap @svc-web-eps\n" +
				"delete chain inet meridian ep-10-244-2-3\n",
		},
		{
			name: "changed map value is delete and add of that element only",
			cur:  one,
			des: func() Table {
				t := serviceTable("10.244.1.2")
				t.Maps[2].Elements[0].Value = "10.244.1.6 . 8443"
				return t
			}(),
			want: "add table inet meridian\n" +
				"delete element inet meridian backends { 10.96.0.11 . 443 }\n" +
				"add element inet meridian backends { 10.96.0.11 . 443 : 10.244.1.6 . 8443 }\n",
		},
		{
			name: "set type change recreates the set and refills its users",
			cur:  one,
			des: func() Table {
				t := serviceTable("10.244.1.2")
				t.Sets[1].KeyType = []DataType{TypeIPv4Addr, TypeInetService}
				t.Sets[1].Elements = []Element{{Key: "10.96.0.20 . 53"}}
				return t
			}(),
			want: "add table inet meridian\n" +
				"flush chain inet meridian services\n" +
				"delete set inet meridian no-endpoints\n" +
				"add set inet meridian no-endpoints { type ipv4_addr . inet_service; }\n" +
				"add element inet meridian no-endpoints { 10.96.0.20 . 53 }\n" +
				"add rule inet meridian services ip saddr != @cluster-cidrs ip daddr . meta l4proto . th dport vmap @service-ips\n" +
				"add rule inet meridian services ip daddr . meta l4proto . th dport @no-endpoints meta l4proto tcp reject with tcp reset\n" +
				"add rule inet meridian services ip daddr . meta l4proto . th dport @no-endpoints reject\n",
		},
		{
			name: "hook change rebuilds the table in one batch",
			cur:  one,
			des: func() Table {
				t := serviceTable("10.244.1.2")
				for i := range t.Chains {
					if t.Chains[i].Name == ChainNATPrerouting {
						t.Chains[i].Priority = PriorityDstNAT - 5
					}
				}
				return t
			}(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx := Plan(tc.cur, tc.des)
			if tc.want != "" || tc.name == "same" || tc.name == "nothing to nothing" {
				if got := tx.String(); got != tc.want {
					t.Errorf("Plan:\n%s\nwant:\n%s", got, tc.want)
				}
			}
			// Whatever Plan emits must take a table holding cur to des.
			f := NewFake()
			if !tc.cur.Empty() {
				if err := f.Apply(Plan(Table{}, tc.cur)); err != nil {
					t.Fatalf("seed: %v", err)
				}
			}
			if err := f.Apply(tx); err != nil {
				t.Fatalf("apply plan: %v\n%s", err, tx)
			}
			got, _ := f.Dump()
			if got.String() != tc.des.String() {
				t.Errorf("after apply:\n%s\nwant:\n%s", got, tc.des)
			}
			if again := Plan(got, tc.des); !again.Empty() {
				t.Errorf("second Plan not empty:\n%s", again)
			}
		})
	}
}

func TestPlanHookChangeIsFullRebuild(t *testing.T) {
	des := serviceTable("10.244.1.2")
	des.Chains[len(des.Chains)-1].Priority = 10
	tx := Plan(serviceTable("10.244.1.2"), des)
	if !tx.DeleteTable || len(tx.AddChains) != len(des.Chains) {
		t.Errorf("want delete table and re-add all chains, got:\n%s", tx)
	}
}

func TestPlanEndpointChangeIsSmall(t *testing.T) {
	// 100 Services sharing one map: changing one Service's endpoints must not
	// touch the others' objects.
	build := func(last string) Table {
		t := Table{Maps: []Map{{Name: "service-ips", KeyType: []DataType{TypeIPv4Addr, TypeInetProto, TypeInetService}, DataType: []DataType{TypeVerdict}}}}
		for i := 0; i < 100; i++ {
			name := "svc-" + string(rune('a'+i/26)) + string(rune('a'+i%26))
			dst := "10.244.0." + itoa(i%10)
			if i == 99 {
				dst = last
			}
			t.Chains = append(t.Chains, Chain{Name: name, Rules: []Rule{{Action: Action{Kind: ActDNAT, Addr: dst, Port: 80}}}})
			t.Maps[0].Elements = append(t.Maps[0].Elements, Element{Key: "10.96." + itoa(i/10) + "." + itoa(i%10) + " . tcp . 80", Value: "goto " + name})
		}
		return t
	}
	tx := Plan(build("10.244.9.1"), build("10.244.9.2"))
	if tx.Ops() != 2 || len(tx.FlushChains) != 1 || len(tx.AddElements) != 0 {
		t.Errorf("want flush+refill of one chain (2 ops), got %d ops:\n%s", tx.Ops(), tx)
	}
}

func TestFakeAllOrNothing(t *testing.T) {
	f := NewFake()
	base := serviceTable("10.244.1.2")
	if err := f.Apply(Plan(Table{}, base)); err != nil {
		t.Fatal(err)
	}
	before, _ := f.Dump()

	bad := serviceTable("10.244.1.2", "10.244.2.3")
	bad.Chains = append(bad.Chains, Chain{Name: "broken", Rules: []Rule{{Action: Action{Kind: ActJump, Chain: "missing"}}}})
	err := f.Apply(Plan(before, bad))
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Apply = %v, want ErrNotFound", err)
	}
	after, _ := f.Dump()
	if after.String() != before.String() {
		t.Errorf("failed transaction changed the table:\n%s\nwas:\n%s", after, before)
	}

	for name, tx := range map[string]Transaction{
		"delete referenced set":   {DeleteSets: []string{"cluster-cidrs"}},
		"delete referenced chain": {DeleteChains: []string{"svc-web"}},
		"element of wrong type":   {AddElements: []ElementOp{{Name: "no-endpoints", KeyType: []DataType{TypeIPv4Addr}, Elements: []Element{{Key: "1.2.3.4"}}}}},
		"goto missing chain":      {AddElements: []ElementOp{{Name: "service-ips", DataType: []DataType{TypeVerdict}, Elements: []Element{{Key: "10.96.0.1 . tcp . 1", Value: "goto nope"}}}}},
		"delete missing element":  {DeleteElements: []ElementOp{{Name: "no-endpoints", Elements: []Element{{Key: "10.96.0.1 . tcp . 1"}}}}},
	} {
		if err := f.Apply(tx); err == nil {
			t.Errorf("%s: Apply succeeded", name)
		}
	}
	if got, _ := f.Dump(); got.String() != before.String() {
		t.Errorf("refused transactions changed the table")
	}
}
