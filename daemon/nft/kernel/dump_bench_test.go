package kernel

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"testing"

	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/meridian-net/meridian/daemon/nft"
)

// servicesShape is a table shaped like servicenft's for n Services with eps
// endpoints each: a verdict map of n Service addresses to n Service
// chains, each looking (Service number . random bucket) up in one shared
// map of n×eps elements, and n×eps endpoint chains of two rules. Dump's
// cost is in the number of chains, rules and elements, which this has as
// many of as the real thing.
func servicesShape(n, eps int) nft.Table {
	ipsKey := []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetProto, nft.TypeInetService}
	markKey := []nft.DataType{nft.TypeMark, nft.TypeMark}
	verdict := []nft.DataType{nft.TypeVerdict}
	t := nft.Table{
		Chains: []nft.Chain{
			{Name: nft.ChainNATPrerouting, Type: nft.TypeNAT, Hook: nft.HookPrerouting, Priority: nft.PriorityDstNAT, Rules: []nft.Rule{
				{Action: nft.Action{Kind: nft.ActVMap, Keys: []nft.Field{nft.IPDaddr, nft.L4Proto, nft.THDport}, Map: "service-ips"}},
			}},
			{Name: nft.ChainNATPostrouting, Type: nft.TypeNAT, Hook: nft.HookPostrouting, Priority: nft.PrioritySrcNAT, Rules: []nft.Rule{
				{Match: []nft.Match{{Keys: []nft.Field{nft.MetaMark}, Mask: 0x4000, Value: "0x00004000"}}, Action: nft.Action{Kind: nft.ActMasquerade}},
			}},
		},
		Maps: []nft.Map{
			{Name: "service-ips", KeyType: ipsKey, DataType: verdict},
			{Name: "endpoints", KeyType: markKey, DataType: verdict},
		},
	}
	for i := range n {
		svc := fmt.Sprintf("svc-%05d", i)
		t.Chains = append(t.Chains, nft.Chain{Name: svc, Rules: []nft.Rule{
			{Counter: true, Action: nft.Action{Kind: nft.ActVMap, Keys: []nft.Field{nft.Const(uint32(i)), nft.Numgen(uint32(eps))}, Map: "endpoints"}},
		}})
		t.Maps[0].Elements = append(t.Maps[0].Elements, nft.Element{Key: fmt.Sprintf("10.96.%d.%d . tcp . 80", i/250, i%250+1), Value: "goto " + svc})
		for j := range eps {
			k := i*eps + j
			addr := fmt.Sprintf("10.%d.%d.%d", 128+k>>16, k>>8&0xff, k&0xff)
			ep := fmt.Sprintf("ep-%05d-%02d", i, j)
			t.Chains = append(t.Chains, nft.Chain{Name: ep, Rules: []nft.Rule{
				{Match: []nft.Match{{Keys: []nft.Field{nft.IPSaddr}, Value: addr}}, MarkOr: 0x4000},
				{Match: []nft.Match{{Keys: []nft.Field{nft.L4Proto}, Value: "tcp"}}, Action: nft.Action{Kind: nft.ActDNAT, Addr: addr, Port: 8080}},
			}})
			t.Maps[1].Elements = append(t.Maps[1].Elements, nft.Element{Key: fmt.Sprintf("%d . %d", i, j), Value: "goto " + ep})
		}
	}
	return t
}

// benchNS is newNS for benchmarks.
func benchNS(tb testing.TB) *Conn {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root for a network namespace")
	}
	n, err := testutils.NewNS()
	if err != nil {
		tb.Fatalf("new netns: %v", err)
	}
	tb.Cleanup(func() {
		_ = n.Close()
		_ = testutils.UnmountNS(n)
	})
	return New(int(n.Fd()), slog.New(slog.DiscardHandler))
}

// BenchmarkDump reads back a Services-shaped table (see servicesShape) of
// MERIDIAN_BENCH_SERVICES Services × 10 endpoints (default 1000) from a
// throw-away namespace: what a restarted meridiand does before its first
// sync. The first read is checked against the applied table.
func BenchmarkDump(b *testing.B) {
	n := 1000
	if v := os.Getenv("MERIDIAN_BENCH_SERVICES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("MERIDIAN_BENCH_SERVICES=%q: want a number of Services", v)
		}
	}
	c := benchNS(b)
	want := servicesShape(n, 10)
	if err := c.Apply(nft.Plan(nft.Table{}, want)); err != nil {
		b.Fatalf("apply %d Services: %v", n, err)
	}
	got, err := c.Dump()
	if err != nil {
		b.Fatal(err)
	}
	if tx := nft.Plan(got, want); !tx.Empty() {
		b.Fatalf("dump of %d Services differs from what was applied: %d ops to fix", n, tx.Ops())
	}
	for b.Loop() {
		if _, err := c.Dump(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(want.Chains)), "chains")
}
