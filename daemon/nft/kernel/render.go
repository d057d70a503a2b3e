package kernel

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/daemon/nft"
)

// reg32 is NFT_REG32_00, the first 4-byte register. Every field Meridian
// loads fits in 4 bytes, so field i of a concatenation goes to reg32+i,
// which is the layout the kernel expects for concatenated lookups.
const reg32 = 8

var ctStates = map[string]uint32{"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}

func loadField(f nft.Field, reg uint32) ([]expr.Any, error) {
	switch f {
	case nft.IPSaddr:
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}}, nil
	case nft.IPDaddr:
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}}, nil
	case nft.THSport:
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2}}, nil
	case nft.THDport:
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}}, nil
	case nft.L4Proto:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}}, nil
	case nft.MetaMark:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: reg}}, nil
	case nft.CTState:
		return []expr.Any{&expr.Ct{Key: expr.CtKeySTATE, Register: reg}}, nil
	}
	if n, ok := f.NumgenMod(); ok {
		return []expr.Any{&expr.Numgen{Register: reg, Modulus: n, Type: unix.NFT_NG_RANDOM}}, nil
	}
	if v, ok := f.ConstValue(); ok {
		// A mark-typed constant in its part of the key: host byte order,
		// like the mark elements it is compared with.
		return []expr.Any{&expr.Immediate{Register: reg, Data: u32(v)}}, nil
	}
	return nil, fmt.Errorf("unknown field %q", f)
}

// regIfname is NFT_REG_1, a 16-byte register: an interface name is
// IFNAMSIZ bytes.
const regIfname = 1

// fibTypes are the route types (RTN_*) of nft's fib ... type values.
var fibTypes = map[string]uint32{
	"unicast":   unix.RTN_UNICAST,
	"local":     unix.RTN_LOCAL,
	"broadcast": unix.RTN_BROADCAST,
	"multicast": unix.RTN_MULTICAST,
}

// renderFib is "fib saddr|daddr type [!=] t": the route type the FIB
// gives the address, as nft renders it (host byte order result).
func renderFib(m nft.Match) ([]expr.Any, error) {
	t, ok := fibTypes[m.Value]
	if !ok {
		return nil, fmt.Errorf("unknown address type %q", m.Value)
	}
	fib := &expr.Fib{Register: reg32, ResultADDRTYPE: true, FlagSADDR: m.Keys[0] == nft.FibSaddrType, FlagDADDR: m.Keys[0] == nft.FibDaddrType}
	return []expr.Any{fib, &expr.Cmp{Op: cmpOp(m.Neg), Register: reg32, Data: u32(t)}}, nil
}

// renderIfname is "iifname|oifname [!=] name": the whole zero-padded name
// for an exact match, only the prefix bytes for "prefix*", as nft does.
func renderIfname(m nft.Match) ([]expr.Any, error) {
	if err := nft.CheckIfname(m.Value); err != nil {
		return nil, err
	}
	key := expr.MetaKeyIIFNAME
	if m.Keys[0] == nft.OIFName {
		key = expr.MetaKeyOIFNAME
	}
	var data []byte
	if prefix, ok := strings.CutSuffix(m.Value, "*"); ok {
		data = []byte(prefix)
	} else {
		data = make([]byte, unix.IFNAMSIZ)
		copy(data, m.Value)
	}
	return []expr.Any{&expr.Meta{Key: key, Register: regIfname}, &expr.Cmp{Op: cmpOp(m.Neg), Register: regIfname, Data: data}}, nil
}

func loadKeys(keys []nft.Field) ([]expr.Any, error) { return loadKeysAt(keys, reg32) }

// loadKeysAt loads a concatenated key into the 4-byte registers from base.
func loadKeysAt(keys []nft.Field, base uint32) ([]expr.Any, error) {
	var out []expr.Any
	for i, k := range keys {
		if _, ok := k.DataType(); !ok {
			return nil, fmt.Errorf("field %q cannot be a lookup key", k)
		}
		e, err := loadField(k, base+uint32(i))
		if err != nil {
			return nil, err
		}
		out = append(out, e...)
	}
	return out, nil
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func cmpOp(neg bool) expr.CmpOp {
	if neg {
		return expr.CmpOpNeq
	}
	return expr.CmpOpEq
}

func renderMatch(m nft.Match, setIDs map[string]uint32) ([]expr.Any, error) {
	if m.Set != "" {
		load, err := loadKeys(m.Keys)
		if err != nil {
			return nil, err
		}
		return append(load, &expr.Lookup{SourceRegister: reg32, SetName: m.Set, SetID: setIDs[m.Set], Invert: m.Neg}), nil
	}
	if len(m.Keys) != 1 {
		return nil, fmt.Errorf("a value match takes one field, got %d", len(m.Keys))
	}
	f := m.Keys[0]
	switch f {
	case nft.FibSaddrType, nft.FibDaddrType:
		return renderFib(m)
	case nft.IIFName, nft.OIFName:
		return renderIfname(m)
	}
	load, err := loadField(f, reg32)
	if err != nil {
		return nil, err
	}
	switch f {
	case nft.IPSaddr, nft.IPDaddr:
		p, err := netip.ParsePrefix(m.Value)
		if err != nil {
			a, aerr := netip.ParseAddr(m.Value)
			if aerr != nil {
				return nil, fmt.Errorf("bad address %q", m.Value)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if !p.Addr().Is4() || p.Masked() != p {
			return nil, fmt.Errorf("bad ipv4 prefix %q", m.Value)
		}
		addr := p.Addr().AsSlice()
		if p.Bits() < 32 {
			mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
			load = append(load, &expr.Bitwise{SourceRegister: reg32, DestRegister: reg32, Len: 4, Mask: mask, Xor: make([]byte, 4)})
		}
		return append(load, &expr.Cmp{Op: cmpOp(m.Neg), Register: reg32, Data: addr}), nil
	case nft.L4Proto:
		n, err := nft.ProtoNumber(m.Value)
		if err != nil {
			return nil, err
		}
		return append(load, &expr.Cmp{Op: cmpOp(m.Neg), Register: reg32, Data: []byte{n}}), nil
	case nft.THDport, nft.THSport:
		if lo, hi, ok := strings.Cut(m.Value, "-"); ok {
			// A port range (NetworkPolicy endPort): "th dport 8000-8080".
			from, err := nft.EncodeValue(nft.TypeInetService, lo)
			if err != nil {
				return nil, err
			}
			to, err := nft.EncodeValue(nft.TypeInetService, hi)
			if err != nil {
				return nil, err
			}
			if string(from) >= string(to) {
				return nil, fmt.Errorf("empty or reversed port range %q", m.Value)
			}
			return append(load, &expr.Range{Op: cmpOp(m.Neg), Register: reg32, FromData: from, ToData: to}), nil
		}
		b, err := nft.EncodeValue(nft.TypeInetService, m.Value)
		if err != nil {
			return nil, err
		}
		return append(load, &expr.Cmp{Op: cmpOp(m.Neg), Register: reg32, Data: b}), nil
	case nft.CTState:
		var bits uint32
		for _, s := range strings.Split(m.Value, ",") {
			b, ok := ctStates[s]
			if !ok {
				return nil, fmt.Errorf("unknown ct state %q", s)
			}
			bits |= b
		}
		// "ct state established,related" means any of the bits is set.
		op := expr.CmpOpNeq
		if m.Neg {
			op = expr.CmpOpEq
		}
		return append(load,
			&expr.Bitwise{SourceRegister: reg32, DestRegister: reg32, Len: 4, Mask: u32(bits), Xor: u32(0)},
			&expr.Cmp{Op: op, Register: reg32, Data: u32(0)}), nil
	case nft.MetaMark:
		v, err := strconv.ParseUint(m.Value, 0, 32)
		if err != nil {
			return nil, fmt.Errorf("bad mark %q", m.Value)
		}
		if m.Mask != 0 {
			load = append(load, &expr.Bitwise{SourceRegister: reg32, DestRegister: reg32, Len: 4, Mask: u32(m.Mask), Xor: u32(0)})
		}
		return append(load, &expr.Cmp{Op: cmpOp(m.Neg), Register: reg32, Data: u32(uint32(v))}), nil
	}
	return nil, fmt.Errorf("field %q cannot be compared with a value", f)
}

func usesIP(r nft.Rule) bool {
	has := func(fs []nft.Field) bool {
		for _, f := range fs {
			if f == nft.IPSaddr || f == nft.IPDaddr {
				return true
			}
		}
		return false
	}
	for _, m := range r.Match {
		if has(m.Keys) {
			return true
		}
	}
	if r.Update != nil && has(r.Update.Keys) {
		return true
	}
	return has(r.Action.Keys) || r.Action.Kind == nft.ActDNAT || r.Action.Kind == nft.ActDNATMap
}

// Registers of a DNAT from a map, as nft lays it out (`nft --debug=netlink
// add rule ... dnat ip to meta mark . ip saddr map @m`: "lookup reg 1 set m
// dreg 1", "nat dnat ip addr_min reg 1 proto_min reg 9"): the lookup
// writes the value into NFT_REG_1, the 16-byte register that overlays
// NFT_REG32_00..03, address in the first word and port (padded to 4 bytes
// like every part of a concatenation) in the second. A Record's key goes
// to NFT_REG32_04 on (NFT_REG_2), clear of both the lookup key and the
// value.
const (
	regNATData   = unix.NFT_REG_1
	regNATAddr   = reg32     // NFT_REG32_00, the same bytes as NFT_REG_1
	regNATPort   = reg32 + 1 // NFT_REG32_01
	regRecordKey = reg32 + 4 // NFT_REG32_04
)

// renderDNATMap is `dnat ip to <keys> map @m [record @aff { <keys> }]`:
// look the keys up in the data map (a miss ends the rule), optionally add
// the value found to the dynamic map under the record keys (or refresh
// its timeout), then translate to the address and port found.
func renderDNATMap(a nft.Action, setIDs map[string]uint32) ([]expr.Any, error) {
	out, err := loadKeys(a.Keys)
	if err != nil {
		return nil, fmt.Errorf("dnat map: %w", err)
	}
	out = append(out, &expr.Lookup{SourceRegister: reg32, SetName: a.Map, SetID: setIDs[a.Map], IsDestRegSet: true, DestRegister: regNATData})
	if rec := a.Record; rec != nil {
		load, err := loadKeysAt(rec.Keys, regRecordKey)
		if err != nil {
			return nil, fmt.Errorf("record @%s: %w", rec.Set, err)
		}
		out = append(out, load...)
		// No timeout of its own: the element gets the map's.
		out = append(out, &expr.Dynset{SrcRegKey: regRecordKey, SrcRegData: regNATData, SetName: rec.Set, SetID: setIDs[rec.Set], Operation: unix.NFT_DYNSET_OP_UPDATE})
	}
	return append(out, &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: regNATAddr, RegProtoMin: regNATPort, Specified: true}), nil
}

// renderRule turns a model rule into kernel expressions. Like nft, a rule
// that reads IPv4 headers in an inet table first checks meta nfproto ipv4,
// so IPv6 packets never match IPv4 offsets.
func renderRule(r nft.Rule, setIDs map[string]uint32) ([]expr.Any, error) {
	var out []expr.Any
	if usesIP(r) {
		out = append(out,
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg32},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg32, Data: []byte{unix.NFPROTO_IPV4}})
	}
	for _, m := range r.Match {
		e, err := renderMatch(m, setIDs)
		if err != nil {
			return nil, fmt.Errorf("match %q: %w", m, err)
		}
		out = append(out, e...)
	}
	if r.Counter {
		out = append(out, &expr.Counter{})
	}
	if r.MarkOr != 0 {
		out = append(out,
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg32},
			&expr.Bitwise{SourceRegister: reg32, DestRegister: reg32, Len: 4, Mask: u32(^r.MarkOr), Xor: u32(r.MarkOr)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg32})
	}
	if u := r.Update; u != nil {
		load, err := loadKeys(u.Keys)
		if err != nil {
			return nil, fmt.Errorf("update @%s: %w", u.Set, err)
		}
		out = append(out, load...)
		// No timeout of its own: the kernel gives the element the set's.
		out = append(out, &expr.Dynset{SrcRegKey: reg32, SetName: u.Set, SetID: setIDs[u.Set], Operation: unix.NFT_DYNSET_OP_UPDATE})
	}
	a := r.Action
	switch a.Kind {
	case nft.ActNone:
	case nft.ActAccept:
		out = append(out, &expr.Verdict{Kind: expr.VerdictAccept})
	case nft.ActDrop:
		out = append(out, &expr.Verdict{Kind: expr.VerdictDrop})
	case nft.ActReturn:
		out = append(out, &expr.Verdict{Kind: expr.VerdictReturn})
	case nft.ActJump:
		out = append(out, &expr.Verdict{Kind: expr.VerdictJump, Chain: a.Chain})
	case nft.ActGoto:
		out = append(out, &expr.Verdict{Kind: expr.VerdictGoto, Chain: a.Chain})
	case nft.ActReject:
		// icmpx port-unreachable: ICMP to IPv4 and IPv6 clients alike, what
		// kube-proxy sends for a Service without endpoints.
		out = append(out, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
	case nft.ActRejectTCP:
		out = append(out, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
	case nft.ActMasquerade:
		out = append(out, &expr.Masq{})
	case nft.ActMasqueradeFullyRandom:
		out = append(out, &expr.Masq{FullyRandom: true})
	case nft.ActDNAT:
		addr, err := netip.ParseAddr(a.Addr)
		if err != nil || !addr.Is4() {
			return nil, fmt.Errorf("dnat: bad address %q", a.Addr)
		}
		out = append(out, &expr.Immediate{Register: reg32, Data: addr.AsSlice()})
		nat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: reg32}
		if a.Port != 0 {
			out = append(out, &expr.Immediate{Register: reg32 + 1, Data: binary.BigEndian.AppendUint16(nil, a.Port)})
			nat.RegProtoMin, nat.Specified = reg32+1, true
		}
		out = append(out, nat)
	case nft.ActDNATMap:
		e, err := renderDNATMap(a, setIDs)
		if err != nil {
			return nil, err
		}
		out = append(out, e...)
	case nft.ActVMap:
		load, err := loadKeys(a.Keys)
		if err != nil {
			return nil, fmt.Errorf("vmap: %w", err)
		}
		out = append(out, load...)
		out = append(out, &expr.Lookup{SourceRegister: reg32, SetName: a.Map, SetID: setIDs[a.Map], IsDestRegSet: true, DestRegister: unix.NFT_REG_VERDICT})
	default:
		return nil, fmt.Errorf("unknown action %q", a.Kind)
	}
	return out, nil
}

var nftTypes = map[nft.DataType]nftables.SetDatatype{
	nft.TypeIPv4Addr:    nftables.TypeIPAddr,
	nft.TypeInetProto:   nftables.TypeInetProto,
	nft.TypeInetService: nftables.TypeInetService,
	nft.TypeMark:        nftables.TypeMark,
	nft.TypeVerdict:     nftables.TypeVerdict,
}

// Kernel data type numbers (nft's datatype.h), needed to read set types back.
var typesByMagic = map[uint32]nft.DataType{7: nft.TypeIPv4Addr, 12: nft.TypeInetProto, 13: nft.TypeInetService, 19: nft.TypeMark}

func setType(ts []nft.DataType) (nftables.SetDatatype, error) {
	var parts []nftables.SetDatatype
	for _, t := range ts {
		st, ok := nftTypes[t]
		if !ok || (t == nft.TypeVerdict && len(ts) > 1) {
			return nftables.SetDatatype{}, fmt.Errorf("unsupported type %s", t)
		}
		parts = append(parts, st)
	}
	switch len(parts) {
	case 0:
		return nftables.SetDatatype{}, fmt.Errorf("no type")
	case 1:
		return parts[0], nil
	}
	return nftables.ConcatSetType(parts...)
}

func typesFromMagic(magic uint32) ([]nft.DataType, error) {
	var out []nft.DataType
	for ; magic != 0; magic >>= nftables.SetConcatTypeBits {
		t, ok := typesByMagic[magic&nftables.SetConcatTypeMask]
		if !ok {
			return nil, fmt.Errorf("unsupported set data type %d", magic&nftables.SetConcatTypeMask)
		}
		out = append([]nft.DataType{t}, out...)
	}
	return out, nil
}

func parseVerdict(s string) (*expr.Verdict, error) {
	kind, chain, _ := strings.Cut(s, " ")
	switch kind {
	case "accept":
		return &expr.Verdict{Kind: expr.VerdictAccept}, nil
	case "drop":
		return &expr.Verdict{Kind: expr.VerdictDrop}, nil
	case "return":
		return &expr.Verdict{Kind: expr.VerdictReturn}, nil
	case "jump":
		return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}, nil
	case "goto":
		return &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain}, nil
	}
	return nil, fmt.Errorf("bad verdict %q", s)
}

func verdictString(code int32, chain string) (string, error) {
	switch expr.VerdictKind(code) {
	case expr.VerdictAccept:
		return "accept", nil
	case expr.VerdictDrop:
		return "drop", nil
	case expr.VerdictReturn:
		return "return", nil
	case expr.VerdictJump:
		return "jump " + chain, nil
	case expr.VerdictGoto:
		return "goto " + chain, nil
	}
	return "", fmt.Errorf("unsupported verdict code %d", code)
}

// encodeElements turns model elements into kernel elements. An interval
// element becomes a start element and an end element flagged
// NFT_SET_ELEM_INTERVAL_END at the first address after it, the layout the
// kernel's interval sets use. withValues is false for deletions, which
// match on keys only.
func encodeElements(op nft.ElementOp, withValues bool) ([]nftables.SetElement, error) {
	var out []nftables.SetElement
	verdict := len(op.DataType) == 1 && op.DataType[0] == nft.TypeVerdict
	for _, e := range op.Elements {
		if op.Interval {
			start, end, last, err := nft.IntervalBounds(e.Key)
			if err != nil {
				return nil, err
			}
			out = append(out, nftables.SetElement{Key: start.AsSlice()})
			if !last {
				out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
			}
			continue
		}
		k, err := nft.EncodeKey(op.KeyType, e.Key)
		if err != nil {
			return nil, err
		}
		el := nftables.SetElement{Key: k}
		switch {
		case !withValues || !op.IsMap():
		case verdict:
			if el.VerdictData, err = parseVerdict(e.Value); err != nil {
				return nil, err
			}
		default:
			if el.Val, err = nft.EncodeKey(op.DataType, e.Value); err != nil {
				return nil, err
			}
		}
		out = append(out, el)
	}
	return out, nil
}
