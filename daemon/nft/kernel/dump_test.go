package kernel

import (
	"fmt"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

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

// TestRuleDumpRequest: the hand-built GETRULE request is a well-formed
// netlink message naming the table and the chain (odd lengths padded).
func TestRuleDumpRequest(t *testing.T) {
	for _, chain := range []string{"a", "svc-00042", "ep-00042-07"} {
		b := ruleDumpRequest([]byte("stale"), chain, 7)[len("stale"):]
		var m netlink.Message
		if err := m.UnmarshalBinary(b); err != nil {
			t.Fatalf("%s: %v", chain, err)
		}
		if int(m.Header.Length) != len(b) || m.Header.Sequence != 7 || m.Header.Flags != netlink.Request|netlink.Dump ||
			m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETRULE) {
			t.Errorf("%s: header %+v", chain, m.Header)
		}
		attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
		if err != nil {
			t.Fatalf("%s: %v", chain, err)
		}
		got := map[uint16]string{}
		for _, a := range attrs {
			got[a.Type] = string(a.Data)
		}
		if got[unix.NFTA_RULE_TABLE] != nft.TableName+"\x00" || got[unix.NFTA_RULE_CHAIN] != chain+"\x00" || len(got) != 2 {
			t.Errorf("%s: attributes %v", chain, got)
		}
	}
}
