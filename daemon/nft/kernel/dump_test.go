package kernel

import (
	"fmt"
	"testing"

	"github.com/mdlayher/netlink"

	"github.com/meridian-net/meridian/daemon/nft"
)

// TestDumpLongChain: a chain whose rules take several dump datagrams (500
// rules of about 450 bytes against at most 32 KiB a datagram) reads back
// whole and in order, next to empty chains and a Services-shaped table.
func TestDumpLongChain(t *testing.T) {
	_, c := newNS(t)
	want := servicesShape(20, 3)
	long := nft.Chain{Name: "long"}
	for i := range 500 {
		long.Rules = append(long.Rules, nft.Rule{
			Match:   []nft.Match{{Keys: []nft.Field{nft.IPSaddr}, Value: fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)}},
			Action:  nft.Action{Kind: nft.ActAccept},
			Comment: fmt.Sprintf("rule %d", i),
		})
	}
	want.Chains = append(want.Chains, long, nft.Chain{Name: "empty-a"}, nft.Chain{Name: "empty-b"})
	mustApply(t, c, want)

	got, err := c.Dump()
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range got.Chains {
		if ch.Name != "long" {
			continue
		}
		if len(ch.Rules) != 500 {
			t.Fatalf("chain long: %d rules read back, want 500", len(ch.Rules))
		}
		for i, r := range ch.Rules {
			if want := fmt.Sprintf("rule %d", i); r.Comment != want {
				t.Fatalf("chain long: rule %d is %q, want %q", i, r.Comment, want)
			}
		}
	}
	rules, err := listRules(mustDial(t, c))
	if err != nil {
		t.Fatal(err)
	}
	if n := countRules(want); len(rules) != n {
		t.Errorf("listRules: %d rules, want %d", len(rules), n)
	}
}

// TestDumpMissingTable: no table is an empty Table, and so is a table
// deleted after it existed.
func TestDumpMissingTable(t *testing.T) {
	_, c := newNS(t)
	got, err := c.Dump()
	if err != nil || !got.Empty() {
		t.Fatalf("Dump of a namespace without the table: %v, %v; want empty", got, err)
	}
	mustApply(t, c, servicesShape(2, 2))
	mustApply(t, c, nft.Table{})
}

func countRules(t nft.Table) int {
	n := 0
	for _, c := range t.Chains {
		n += len(c.Rules)
	}
	return n
}

func mustDial(t *testing.T, c *Conn) *netlink.Conn {
	t.Helper()
	conn, err := dialDump(c.netnsFd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}
