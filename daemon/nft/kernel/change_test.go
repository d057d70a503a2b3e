package kernel

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/meridian-net/meridian/daemon/nft"
)

var update = flag.Bool("update", false, "rewrite testdata/*.nft goldens from the kernel")

// TestElementChanges moves elements of an interval set (adjacent and
// removed intervals) and changes a verdict map value and a data map value
// in place, each as element operations only.
func TestElementChanges(t *testing.T) {
	_, c := newNS(t)
	want := serviceTable("10.244.1.2", "10.244.2.3")
	mustApply(t, c, want)

	want.Sets[0].Elements = []nft.Element{{Key: "10.244.0.0/17"}, {Key: "10.244.128.0/17"}, {Key: "192.168.7.2"}, {Key: "255.255.255.255"}}
	want.Maps[0].Elements[0].Value = "goto ep-10-244-2-3"
	want.Maps[2].Elements[0].Value = "10.244.1.6 . 8443"
	tx := mustApply(t, c, want)
	if len(tx.FlushChains)+len(tx.AddChains)+len(tx.DeleteChains)+len(tx.AddSets)+len(tx.AddMaps)+len(tx.DeleteSets) != 0 {
		t.Errorf("element changes touched objects:\n%s", tx)
	}
}

// TestForeignRuleIsReplaced: a rule someone else added to a Meridian chain
// reads back as foreign, so the next sync rewrites that chain (and only it).
func TestForeignRuleIsReplaced(t *testing.T) {
	n, c := newNS(t)
	want := serviceTable("10.244.1.2")
	mustApply(t, c, want)

	nc, err := nftables.New(nftables.WithNetNSFd(int(n.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tbl := &nftables.Table{Family: nftables.TableFamilyINet, Name: nft.TableName}
	nc.AddRule(&nftables.Rule{Table: tbl, Chain: &nftables.Chain{Name: "services", Table: tbl}, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	cur, err := c.Dump()
	if err != nil {
		t.Fatal(err)
	}
	tx := nft.Plan(cur, want)
	if len(tx.FlushChains) != 1 || tx.FlushChains[0] != "services" || tx.Ops() != 4 {
		t.Errorf("want only chain services refilled, got:\n%s", tx)
	}
	if err := c.Apply(tx); err != nil {
		t.Fatal(err)
	}
	assertDump(t, c, want)
}

// TestGolden compares `nft list table inet meridian` with testdata.
func TestGolden(t *testing.T) {
	n, c := newNS(t)
	mustApply(t, c, serviceTable("10.244.1.2", "10.244.2.3"))
	got := nftList(t, n, "list", "table", "inet", "meridian")
	// Set handles are not stable across kernels; nothing else varies.
	got = regexp.MustCompile(`# handle \d+`).ReplaceAllString(got, "")
	path := filepath.Join("testdata", "service-table.nft")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	golden, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if got != string(golden) {
		t.Errorf("nft list table differs from %s (rerun with -update if intended):\n%s", path, got)
	}
}
