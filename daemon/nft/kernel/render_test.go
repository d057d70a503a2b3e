package kernel

import (
	"strconv"

	"github.com/google/nftables"
	"log/slog"
	"strings"
	"testing"

	"github.com/meridian-net/meridian/daemon/nft"
)

// These run without root: the errors come from rendering, before any IO.

func TestApplyRefusesRuleTooLongToReadBack(t *testing.T) {
	c := New(0, slog.New(slog.DiscardHandler))
	long := nft.Rule{Action: nft.Action{Kind: nft.ActJump, Chain: strings.Repeat("x", 250)}, Comment: "c"}
	tx := nft.Transaction{AddChains: []nft.Chain{{Name: "a"}}, FillChains: []nft.Chain{{Name: "a", Rules: []nft.Rule{long}}}}
	err := c.Apply(tx)
	if err == nil || !strings.Contains(err.Error(), "userdata") {
		t.Fatalf("Apply = %v, want a userdata size error", err)
	}
}

func TestRenderRuleErrors(t *testing.T) {
	for name, r := range map[string]nft.Rule{
		"value match on two fields": {Match: []nft.Match{{Keys: []nft.Field{nft.IPDaddr, nft.THDport}, Value: "1.2.3.4"}}},
		"unmasked prefix":           {Match: []nft.Match{{Keys: []nft.Field{nft.IPDaddr}, Value: "10.0.0.1/8"}}},
		"ipv6 address":              {Match: []nft.Match{{Keys: []nft.Field{nft.IPSaddr}, Value: "::1"}}},
		"unknown ct state":          {Match: []nft.Match{{Keys: []nft.Field{nft.CTState}, Value: "bogus"}}},
		"ct state as a set key":     {Match: []nft.Match{{Keys: []nft.Field{nft.CTState}, Set: "s"}}},
		"reversed port range":       {Match: []nft.Match{{Keys: []nft.Field{nft.THDport}, Value: "90-80"}}},
		"bad dnat address":          {Action: nft.Action{Kind: nft.ActDNAT, Addr: "nope"}},
		"unknown action":            {Action: nft.Action{Kind: "teleport"}},
	} {
		if _, err := renderRule(r, nil); err == nil {
			t.Errorf("%s: renderRule(%q) = nil error", name, r)
		}
	}
	// An IPv4 match in an inet table is guarded by meta nfproto ipv4.
	exprs, err := renderRule(nft.Rule{Match: []nft.Match{{Keys: []nft.Field{nft.IPDaddr}, Value: "10.0.0.0/8"}}, Action: nft.Action{Kind: nft.ActAccept}}, nil)
	if err != nil || len(exprs) != 6 {
		t.Errorf("renderRule = %d exprs, %v; want nfproto load+cmp, daddr load+mask+cmp, verdict", len(exprs), err)
	}
}

func TestChunks(t *testing.T) {
	els := encodeN(t, 5000)
	parts := chunks(els)
	total := 0
	for _, p := range parts {
		total += len(p)
		if len(p) == 0 || len(p)*(64+12) > 48<<10 {
			t.Errorf("chunk of %d elements", len(p))
		}
	}
	if total != len(els) || len(parts) < 2 {
		t.Errorf("chunks: %d parts holding %d of %d elements", len(parts), total, len(els))
	}
}

func encodeN(t *testing.T, n int) []nftables.SetElement {
	t.Helper()
	op := nft.ElementOp{KeyType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetProto, nft.TypeInetService}}
	for i := range n {
		op.Elements = append(op.Elements, nft.Element{Key: "10.96." + strconv.Itoa(i/250) + "." + strconv.Itoa(i%250) + " . tcp . 80"})
	}
	els, err := encodeElements(op, true)
	if err != nil {
		t.Fatal(err)
	}
	return els
}
