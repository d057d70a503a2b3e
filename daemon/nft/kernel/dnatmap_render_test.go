package kernel

import (
	"fmt"
	"testing"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/daemon/nft"
)

// TestRenderDNATMap checks the register layout against what nft 1.0.6
// emits for `dnat ip to meta mark . ip saddr map @m` ("lookup reg 1 set m
// dreg 1; nat dnat ip addr_min reg 1 proto_min reg 9"), and that a Record
// loads its key clear of the looked-up value before the dynset.
func TestRenderDNATMap(t *testing.T) {
	client := []nft.Field{nft.Const(7), nft.IPSaddr}
	for name, tc := range map[string]struct {
		a    nft.Action
		want string
	}{
		"spread": {nft.Action{Kind: nft.ActDNATMap, Keys: []nft.Field{nft.Const(7), nft.Numgen(3)}, Map: "eps"},
			"meta load nfproto => reg 8; cmp eq reg 8 02; immediate reg 8 7; numgen reg 9 random mod 3; lookup reg 8 set eps dreg 1; " +
				"nat dnat ip addr_min reg 8 proto_min reg 9 specified"},
		"record": {nft.Action{Kind: nft.ActDNATMap, Keys: []nft.Field{nft.Const(7), nft.Numgen(3)}, Map: "eps", Record: &nft.SetUpdate{Set: "aff", Keys: client}},
			"meta load nfproto => reg 8; cmp eq reg 8 02; immediate reg 8 7; numgen reg 9 random mod 3; lookup reg 8 set eps dreg 1; " +
				"immediate reg 12 7; payload load 4b @ network header + 12 => reg 13; dynset update reg_key 12 set aff; data reg 1; " +
				"nat dnat ip addr_min reg 8 proto_min reg 9 specified"},
	} {
		exprs, err := renderRule(nft.Rule{Action: tc.a}, nil)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := describeNAT(exprs); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", name, got, tc.want)
		}
	}
	if _, err := renderRule(nft.Rule{Action: nft.Action{Kind: nft.ActDNATMap, Keys: []nft.Field{nft.CTState}, Map: "eps"}}, nil); err == nil {
		t.Errorf("ct state accepted as a lookup key")
	}
}

// describeNAT is describe plus the NAT and the dynset's data register.
func describeNAT(es []expr.Any) string {
	var out string
	for i, e := range es {
		if i > 0 {
			out += "; "
		}
		switch e := e.(type) {
		case *expr.NAT:
			s := "bad"
			if e.Type == expr.NATTypeDestNAT && e.Family == unix.NFPROTO_IPV4 {
				s = "dnat ip"
			}
			s += fmt.Sprintf(" addr_min reg %d proto_min reg %d", e.RegAddrMin, e.RegProtoMin)
			if e.Specified {
				s += " specified"
			}
			out += "nat " + s
		case *expr.Dynset:
			out += describe([]expr.Any{e}) + fmt.Sprintf("; data reg %d", e.SrcRegData)
		default:
			out += describe([]expr.Any{e})
		}
	}
	return out
}
