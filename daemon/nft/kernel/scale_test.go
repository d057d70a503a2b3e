package kernel

import (
	"fmt"
	"testing"
	"time"

	"github.com/meridian-net/meridian/daemon/nft"
)

// TestLargeTransaction: a full sync is one netlink batch, sent in one
// sendmsg, so it must fit the socket's send buffer (212992 bytes by
// default). 10k Services with their chains is several megabytes.
func TestLargeTransaction(t *testing.T) {
	_, c := newNS(t)
	const services = 10000
	tbl := nft.Table{
		Chains: []nft.Chain{{Name: nft.ChainNATPrerouting, Type: nft.TypeNAT, Hook: nft.HookPrerouting, Priority: nft.PriorityDstNAT, Rules: []nft.Rule{
			{Action: nft.Action{Kind: nft.ActVMap, Keys: []nft.Field{nft.IPDaddr, nft.L4Proto, nft.THDport}, Map: "service-ips"}},
		}}},
		Maps: []nft.Map{{Name: "service-ips", KeyType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetProto, nft.TypeInetService}, DataType: []nft.DataType{nft.TypeVerdict}}},
	}
	for i := range services {
		name := fmt.Sprintf("svc-%05d", i)
		tbl.Chains = append(tbl.Chains, nft.Chain{Name: name, Rules: []nft.Rule{
			{Match: []nft.Match{{Keys: []nft.Field{nft.L4Proto}, Value: "tcp"}}, Action: nft.Action{Kind: nft.ActDNAT, Addr: fmt.Sprintf("10.244.%d.%d", i/250, i%250+1), Port: 8080}},
		}})
		tbl.Maps[0].Elements = append(tbl.Maps[0].Elements, nft.Element{Key: fmt.Sprintf("10.96.%d.%d . tcp . 80", i/250, i%250+1), Value: "goto " + name})
	}
	start := time.Now()
	tx := nft.Plan(nft.Table{}, tbl)
	if err := c.Apply(tx); err != nil {
		t.Fatalf("full sync of %d services: %v", services, err)
	}
	t.Logf("full sync of %d services (%d ops): %v", services, tx.Ops(), time.Since(start))
	start = time.Now()
	got, err := c.Dump()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dump: %v", time.Since(start))
	if got.String() != tbl.String() {
		n := 0
		if len(got.Maps) > 0 {
			n = len(got.Maps[0].Elements)
		}
		t.Fatalf("dump differs from the %d-service table: %d chains, %d sets, %d maps, %d map elements", services, len(got.Chains), len(got.Sets), len(got.Maps), n)
	}
	tbl.Chains[1].Rules[0].Action.Addr = "10.244.99.99"
	start = time.Now()
	tx = nft.Plan(got, tbl)
	if tx.Ops() != 2 {
		t.Errorf("one endpoint change: %d ops, want flush and one rule:\n%s", tx.Ops(), tx)
	}
	if err := c.Apply(tx); err != nil {
		t.Fatal(err)
	}
	t.Logf("one endpoint change (%d ops): plan+apply %v", tx.Ops(), time.Since(start))
}
