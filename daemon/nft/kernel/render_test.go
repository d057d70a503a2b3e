package kernel

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

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
		"unknown fib address type":  {Match: []nft.Match{{Keys: []nft.Field{nft.FibDaddrType}, Value: "anycast"}}},
		"fib type as a set key":     {Match: []nft.Match{{Keys: []nft.Field{nft.FibSaddrType}, Set: "s"}}},
		"iifname as a set key":      {Match: []nft.Match{{Keys: []nft.Field{nft.IIFName}, Set: "s"}}},
		"interface name too long":   {Match: []nft.Match{{Keys: []nft.Field{nft.OIFName}, Value: "0123456789abcdef"}}},
		"bare wildcard":             {Match: []nft.Match{{Keys: []nft.Field{nft.IIFName}, Value: "*"}}},
		"constant compared":         {Match: []nft.Match{{Keys: []nft.Field{nft.Const(1)}, Value: "1"}}},
		"update keyed by ifname":    {Update: &nft.SetUpdate{Set: "aff", Keys: []nft.Field{nft.IIFName}}},
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

// TestRenderNewVocabulary checks the expressions nft itself emits for the
// same statements (nft --debug=netlink).
func TestRenderNewVocabulary(t *testing.T) {
	for name, tc := range map[string]struct {
		r    nft.Rule
		want string
	}{
		"exact iifname": {nft.Rule{Match: []nft.Match{{Keys: []nft.Field{nft.IIFName}, Value: "eth0"}}},
			`meta load iifname => reg 1; cmp eq reg 1 eth0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00`},
		"wildcard oifname": {nft.Rule{Match: []nft.Match{{Keys: []nft.Field{nft.OIFName}, Value: "veth*", Neg: true}}},
			"meta load oifname => reg 1; cmp neq reg 1 veth"},
		"fib daddr type local": {nft.Rule{Match: []nft.Match{{Keys: []nft.Field{nft.FibDaddrType}, Value: "local"}}},
			"fib daddr type => reg 8; cmp eq reg 8 2"},
		"constant key": {nft.Rule{Action: nft.Action{Kind: nft.ActVMap, Keys: []nft.Field{nft.Const(7), nft.Numgen(3)}, Map: "m"}},
			"immediate reg 8 7; numgen reg 9 random mod 3; lookup reg 8 set m dreg 0"},
		"update": {nft.Rule{Update: &nft.SetUpdate{Set: "aff", Keys: []nft.Field{nft.IPSaddr}}},
			"meta load nfproto => reg 8; cmp eq reg 8 02; payload load 4b @ network header + 12 => reg 8; dynset update reg_key 8 set aff"},
		"masquerade fully-random": {nft.Rule{Action: nft.Action{Kind: nft.ActMasqueradeFullyRandom}}, "masq fully-random"},
	} {
		exprs, err := renderRule(tc.r, nil)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := describe(exprs); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", name, got, tc.want)
		}
	}
}

// describe prints expressions roughly as nft --debug=netlink does, 4-byte
// data as the host-order number it holds.
func describe(es []expr.Any) string {
	var out []string
	for _, e := range es {
		switch e := e.(type) {
		case *expr.Meta:
			names := map[expr.MetaKey]string{expr.MetaKeyIIFNAME: "iifname", expr.MetaKeyOIFNAME: "oifname", expr.MetaKeyNFPROTO: "nfproto"}
			out = append(out, fmt.Sprintf("meta load %s => reg %d", names[e.Key], e.Register))
		case *expr.Cmp:
			op := map[expr.CmpOp]string{expr.CmpOpEq: "eq", expr.CmpOpNeq: "neq"}[e.Op]
			data := fmt.Sprintf("%x", e.Data)
			if len(e.Data) == 4 {
				data = fmt.Sprint(binary.NativeEndian.Uint32(e.Data))
			}
			if e.Register == 1 {
				data = strings.ReplaceAll(fmt.Sprintf("%q", e.Data), "\"", "")
			}
			out = append(out, fmt.Sprintf("cmp %s reg %d %s", op, e.Register, data))
		case *expr.Fib:
			dir := "saddr"
			if e.FlagDADDR {
				dir = "daddr"
			}
			if !e.ResultADDRTYPE || e.FlagDADDR == e.FlagSADDR {
				dir = "bad"
			}
			out = append(out, fmt.Sprintf("fib %s type => reg %d", dir, e.Register))
		case *expr.Immediate:
			out = append(out, fmt.Sprintf("immediate reg %d %d", e.Register, binary.NativeEndian.Uint32(e.Data)))
		case *expr.Numgen:
			out = append(out, fmt.Sprintf("numgen reg %d random mod %d", e.Register, e.Modulus))
		case *expr.Lookup:
			out = append(out, fmt.Sprintf("lookup reg %d set %s dreg %d", e.SourceRegister, e.SetName, e.DestRegister))
		case *expr.Payload:
			out = append(out, fmt.Sprintf("payload load %db @ network header + %d => reg %d", e.Len, e.Offset, e.DestRegister))
		case *expr.Dynset:
			op := "bad"
			if e.Operation == 1 {
				op = "update"
			}
			out = append(out, fmt.Sprintf("dynset %s reg_key %d set %s", op, e.SrcRegKey, e.SetName))
		case *expr.Masq:
			if e.FullyRandom && !e.Random && !e.Persistent {
				out = append(out, "masq fully-random")
			} else {
				out = append(out, "masq")
			}
		default:
			out = append(out, fmt.Sprintf("%T", e))
		}
	}
	return strings.Join(out, "; ")
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
