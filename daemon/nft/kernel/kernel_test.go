package kernel

import (
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/meridian-net/meridian/daemon/nft"
)

// newNS returns a throw-away network namespace and a Conn bound to it.
func newNS(t *testing.T) (ns.NetNS, *Conn) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() {
		_ = n.Close()
		_ = testutils.UnmountNS(n)
	})
	return n, New(int(n.Fd()), slog.New(slog.DiscardHandler))
}

// serviceTable: a concatenated-key verdict map to per-Service chains, a
// numgen random mod N map choosing DNAT chains, an interval set, a data
// map and filter rules, in base chains at dstnat, srcnat and filter.
func serviceTable(eps ...string) nft.Table {
	var epMap []nft.Element
	var chains []nft.Chain
	for i, ep := range eps {
		name := "ep-" + strings.ReplaceAll(ep, ".", "-")
		chains = append(chains, nft.Chain{Name: name, Rules: []nft.Rule{
			{Match: []nft.Match{{Keys: []nft.Field{nft.IPSaddr}, Value: ep}}, MarkOr: 0x4000},
			{Match: []nft.Match{{Keys: []nft.Field{nft.L4Proto}, Value: "tcp"}}, Action: nft.Action{Kind: nft.ActDNAT, Addr: ep, Port: 8080}},
		}})
		epMap = append(epMap, nft.Element{Key: string(rune('0' + i)), Value: "goto " + name})
	}
	svc := []nft.Rule{{Action: nft.Action{Kind: nft.ActReject}}}
	if len(eps) > 0 {
		svc = []nft.Rule{{Counter: true, Action: nft.Action{Kind: nft.ActVMap, Keys: []nft.Field{nft.Numgen(uint32(len(eps)))}, Map: "svc-web-eps"}}}
	}
	chains = append(chains,
		nft.Chain{Name: nft.ChainNATPrerouting, Type: nft.TypeNAT, Hook: nft.HookPrerouting, Priority: nft.PriorityDstNAT, Rules: []nft.Rule{
			{Action: nft.Action{Kind: nft.ActJump, Chain: "services"}},
		}},
		nft.Chain{Name: nft.ChainNATOutput, Type: nft.TypeNAT, Hook: nft.HookOutput, Priority: nft.PriorityDstNAT, Rules: []nft.Rule{
			{Action: nft.Action{Kind: nft.ActJump, Chain: "services"}},
		}},
		nft.Chain{Name: nft.ChainNATPostrouting, Type: nft.TypeNAT, Hook: nft.HookPostrouting, Priority: nft.PrioritySrcNAT, Rules: []nft.Rule{
			{Match: []nft.Match{{Keys: []nft.Field{nft.MetaMark}, Mask: 0x4000, Value: "0x00004000"}}, Action: nft.Action{Kind: nft.ActMasquerade}},
		}},
		nft.Chain{Name: "services", Rules: []nft.Rule{
			{Match: []nft.Match{{Keys: []nft.Field{nft.IPSaddr}, Neg: true, Set: "cluster-cidrs"}}, Action: nft.Action{Kind: nft.ActVMap, Keys: []nft.Field{nft.IPDaddr, nft.L4Proto, nft.THDport}, Map: "service-ips"}},
			{Match: []nft.Match{{Keys: []nft.Field{nft.IPDaddr, nft.L4Proto, nft.THDport}, Set: "no-endpoints"}, {Keys: []nft.Field{nft.L4Proto}, Value: "tcp"}}, Action: nft.Action{Kind: nft.ActRejectTCP}},
			{Match: []nft.Match{{Keys: []nft.Field{nft.IPDaddr, nft.L4Proto, nft.THDport}, Set: "no-endpoints"}}, Action: nft.Action{Kind: nft.ActReject}},
		}},
		nft.Chain{Name: "svc-web", Rules: svc},
		nft.Chain{Name: nft.ChainFilterForward, Type: nft.TypeFilter, Hook: nft.HookForward, Priority: nft.PriorityFilter, Rules: []nft.Rule{
			{Match: []nft.Match{{Keys: []nft.Field{nft.CTState}, Value: "established,related"}}, Action: nft.Action{Kind: nft.ActAccept}},
			{Match: []nft.Match{{Keys: []nft.Field{nft.IPSaddr}, Set: "cluster-cidrs"}, {Keys: []nft.Field{nft.THDport}, Value: "8000-8080"}}, Action: nft.Action{Kind: nft.ActAccept}},
			{Match: []nft.Match{{Keys: []nft.Field{nft.L4Proto}, Value: "tcp"}, {Keys: []nft.Field{nft.THDport}, Neg: true, Value: "22"}, {Keys: []nft.Field{nft.IPDaddr}, Value: "10.0.0.0/8"}},
				Counter: true, Action: nft.Action{Kind: nft.ActDrop}, Comment: "default deny"},
		}},
	)
	return nft.Table{
		Chains: chains,
		Sets: []nft.Set{
			{Name: "cluster-cidrs", KeyType: []nft.DataType{nft.TypeIPv4Addr}, Interval: true, Elements: []nft.Element{{Key: "10.244.0.0/16"}, {Key: "192.168.7.1"}, {Key: "192.168.7.2"}}},
			{Name: "no-endpoints", KeyType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetProto, nft.TypeInetService}, Elements: []nft.Element{{Key: "10.96.0.20 . udp . 53"}}},
		},
		Maps: []nft.Map{
			{Name: "service-ips", KeyType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetProto, nft.TypeInetService}, DataType: []nft.DataType{nft.TypeVerdict},
				Elements: []nft.Element{{Key: "10.96.0.10 . tcp . 80", Value: "goto svc-web"}}},
			{Name: "svc-web-eps", KeyType: []nft.DataType{nft.TypeMark}, DataType: []nft.DataType{nft.TypeVerdict}, Elements: epMap},
			{Name: "backends", KeyType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetService}, DataType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetService},
				Elements: []nft.Element{{Key: "10.96.0.11 . 443", Value: "10.244.1.5 . 8443"}}},
		},
	}
}

func mustApply(t *testing.T, c *Conn, desired nft.Table) nft.Transaction {
	t.Helper()
	cur, err := c.Dump()
	if err != nil {
		t.Fatalf("Dump: %v", err)
	}
	tx := nft.Plan(cur, desired)
	if err := c.Apply(tx); err != nil {
		t.Fatalf("Apply: %v\n%s", err, tx)
	}
	assertDump(t, c, desired)
	return tx
}

func assertDump(t *testing.T, c *Conn, want nft.Table) {
	t.Helper()
	got, err := c.Dump()
	if err != nil {
		t.Fatalf("Dump: %v", err)
	}
	if got.String() != want.String() {
		t.Fatalf("Dump:\n%s\nwant:\n%s", got, want)
	}
	if tx := nft.Plan(got, want); !tx.Empty() {
		t.Fatalf("Plan(dump, desired) not empty:\n%s", tx)
	}
}

// nftList runs the nft binary in the namespace: only in tests, to check
// that what Meridian wrote is what nft (and so an operator) reads.
func nftList(t *testing.T, n ns.NetNS, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("nsenter not installed")
	}
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.Path(), "nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func TestApplyDump(t *testing.T) {
	n, c := newNS(t)
	if got, err := c.Dump(); err != nil || !got.Empty() {
		t.Fatalf("Dump of a fresh namespace = %v, %v; want empty", got, err)
	}
	want := serviceTable("10.244.1.2", "10.244.2.3")
	mustApply(t, c, want)

	// nft must read back every rule as Meridian renders it.
	listed := nftList(t, n, "list", "table", "inet", "meridian")
	for _, ch := range want.Chains {
		for _, r := range ch.Rules {
			line := strings.ReplaceAll(r.String(), "counter", "counter packets 0 bytes 0")
			// nft folds a protocol match into the port match that follows.
			line = strings.ReplaceAll(line, "meta l4proto tcp th dport", "tcp dport")
			if !strings.Contains(listed, line) {
				t.Errorf("nft list lacks rule %q:\n%s", line, listed)
			}
		}
	}
	for _, s := range []string{"10.96.0.10 . tcp . 80 : goto svc-web", "type nat hook prerouting priority dstnat; policy accept;", "10.244.0.0/16", "10.96.0.11 . 443 : 10.244.1.5 . 8443", "0x00000001 : goto ep-10-244-2-3", "type nat hook output priority -100;"} {
		if !strings.Contains(listed, s) {
			t.Errorf("nft list lacks %q:\n%s", s, listed)
		}
	}
}

func ruleHandles(t *testing.T, n ns.NetNS, chain string) []uint64 {
	t.Helper()
	nc, err := nftables.New(nftables.WithNetNSFd(int(n.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tbl := &nftables.Table{Family: nftables.TableFamilyINet, Name: nft.TableName}
	rules, err := nc.GetRules(tbl, &nftables.Chain{Name: chain, Table: tbl})
	if err != nil {
		t.Fatalf("rules of %s: %v", chain, err)
	}
	var hs []uint64
	for _, r := range rules {
		hs = append(hs, r.Handle)
	}
	return hs
}

func TestIncrementalChangeSendsOnlyTheDifference(t *testing.T) {
	n, c := newNS(t)
	mustApply(t, c, serviceTable("10.244.1.2"))
	untouched := map[string][]uint64{}
	for _, ch := range []string{"services", nft.ChainNATPrerouting, nft.ChainFilterForward, "ep-10-244-1-2"} {
		untouched[ch] = ruleHandles(t, n, ch)
	}

	tx := mustApply(t, c, serviceTable("10.244.1.2", "10.244.2.3"))
	// New endpoint chain (1 + 2 rules), one map element, svc-web flushed
	// and refilled with one rule.
	if tx.Ops() != 6 || len(tx.AddSets)+len(tx.AddMaps)+len(tx.DeleteSets) != 0 {
		t.Errorf("endpoint added: %d ops, want 6:\n%s", tx.Ops(), tx)
	}
	for ch, before := range untouched {
		if after := ruleHandles(t, n, ch); !slices.Equal(before, after) {
			t.Errorf("chain %s rewritten: handles %v -> %v", ch, before, after)
		}
	}

	tx = mustApply(t, c, serviceTable())
	if len(tx.DeleteChains) != 2 || tx.DeleteTable {
		t.Errorf("all endpoints removed: want the two endpoint chains deleted, got:\n%s", tx)
	}
	mustApply(t, c, serviceTable("10.244.9.9"))
}

func TestFailedTransactionLeavesTableAsItWas(t *testing.T) {
	n, c := newNS(t)
	base := serviceTable("10.244.1.2")
	mustApply(t, c, base)
	before := nftList(t, n, "list", "table", "inet", "meridian")

	bad := serviceTable("10.244.1.2", "10.244.2.3")
	bad.Chains = append(bad.Chains, nft.Chain{Name: "broken", Rules: []nft.Rule{{Action: nft.Action{Kind: nft.ActJump, Chain: "missing"}}}})
	bad.Maps[0].Elements = append(bad.Maps[0].Elements, nft.Element{Key: "10.96.0.12 . udp . 53", Value: "goto broken"})
	cur, _ := c.Dump()
	if err := c.Apply(nft.Plan(cur, bad)); err == nil {
		t.Fatal("Apply of a rule jumping to a missing chain succeeded")
	}
	assertDump(t, c, base)
	if after := nftList(t, n, "list", "table", "inet", "meridian"); after != before {
		t.Errorf("table changed by a failed transaction:\n%s\nwas:\n%s", after, before)
	}
}

func TestOtherTablesUntouched(t *testing.T) {
	n, c := newNS(t)
	nc, err := nftables.New(nftables.WithNetNSFd(int(n.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	other := nc.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "other"})
	otherIP4 := nc.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: nft.TableName})
	for _, tbl := range []*nftables.Table{other, otherIP4} {
		ch := nc.AddChain(&nftables.Chain{Name: "input", Table: tbl, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
		nc.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{&expr.Counter{}}})
		if err := nc.AddSet(&nftables.Set{Table: tbl, Name: "s", KeyType: nftables.TypeIPAddr}, []nftables.SetElement{{Key: []byte{1, 2, 3, 4}}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("create other tables: %v", err)
	}
	want := func() string {
		return nftList(t, n, "list", "table", "inet", "other") + nftList(t, n, "list", "table", "ip", nft.TableName)
	}
	before := want()

	mustApply(t, c, serviceTable("10.244.1.2"))
	mustApply(t, c, serviceTable("10.244.1.2", "10.244.2.3"))
	if after := want(); after != before {
		t.Errorf("other tables changed:\n%s\nwas:\n%s", after, before)
	}
	cur, _ := c.Dump()
	tx := nft.Plan(cur, nft.Table{})
	if !tx.OnlyDeletesTable() {
		t.Fatalf("Plan to empty = %s", tx)
	}
	if err := c.Apply(tx); err != nil {
		t.Fatalf("delete: %v", err)
	}
	assertDump(t, c, nft.Table{})
	if after := want(); after != before {
		t.Errorf("other tables changed by deleting Meridian's:\n%s\nwas:\n%s", after, before)
	}
	if tables := nftList(t, n, "list", "tables"); strings.Contains(tables, "table inet meridian") {
		t.Errorf("table inet meridian still there:\n%s", tables)
	}
	// Deleting again is a no-op, not an error.
	if tx := nft.Plan(nft.Table{}, nft.Table{}); !tx.Empty() || c.Apply(tx) != nil {
		t.Error("deleting an absent table is not a no-op")
	}
}
