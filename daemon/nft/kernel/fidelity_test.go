package kernel

import (
	"testing"

	"github.com/meridian-net/meridian/daemon/nft"
)

// TestFakeMatchesKernel runs the same desired states, including a full
// rebuild after a hook change and a refused transaction, through the Fake
// and the kernel: both must accept and refuse the same transactions and
// dump the same tables, so unit tests written against the Fake hold.
func TestFakeMatchesKernel(t *testing.T) {
	_, k := newNS(t)
	f := nft.NewFake()

	moved := serviceTable("10.244.1.2")
	for i := range moved.Chains {
		if moved.Chains[i].Name == nft.ChainNATPrerouting {
			moved.Chains[i].Priority = nft.PriorityDstNAT + 5
		}
	}
	retyped := serviceTable("10.244.1.2")
	retyped.Sets[1].KeyType = []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetService}
	retyped.Sets[1].Elements = []nft.Element{{Key: "10.96.0.20 . 53"}}
	broken := serviceTable("10.244.1.2")
	broken.Chains[0].Rules = append(broken.Chains[0].Rules, nft.Rule{Action: nft.Action{Kind: nft.ActGoto, Chain: "missing"}})

	steps := []struct {
		name    string
		desired nft.Table
		fails   bool
	}{
		{name: "create", desired: serviceTable("10.244.1.2", "10.244.2.3")},
		{name: "scale down", desired: serviceTable("10.244.1.2")},
		{name: "refused", desired: broken, fails: true},
		{name: "priority change rebuilds", desired: moved},
		{name: "set type change", desired: retyped},
		{name: "no endpoints", desired: serviceTable()},
		{name: "delete", desired: nft.Table{}},
		{name: "recreate", desired: serviceTable("10.244.3.4")},
	}
	for _, st := range steps {
		kc, err := k.Dump()
		if err != nil {
			t.Fatal(err)
		}
		fc, _ := f.Dump()
		if kc.String() != fc.String() {
			t.Fatalf("before %s: kernel and fake differ:\n%s\n%s", st.name, kc, fc)
		}
		tx := nft.Plan(kc, st.desired)
		if st.name == "priority change rebuilds" && !tx.DeleteTable {
			t.Errorf("%s: want a full rebuild, got:\n%s", st.name, tx)
		}
		kerr, ferr := k.Apply(tx), f.Apply(tx)
		if (kerr != nil) != st.fails || (ferr != nil) != st.fails {
			t.Fatalf("%s: kernel error %v, fake error %v, want failure %v\n%s", st.name, kerr, ferr, st.fails, tx)
		}
		if !st.fails {
			assertDump(t, k, st.desired)
		}
	}
}
