package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Field is a packet or metadata value a rule loads, spelled as nft spells it.
// Numgen(n) builds the "numgen random mod n" field.
type Field string

const (
	IPSaddr   Field = "ip saddr"
	IPDaddr   Field = "ip daddr"
	L4Proto   Field = "meta l4proto"
	THDport   Field = "th dport"
	THSport   Field = "th sport"
	CTState   Field = "ct state"
	MetaMark  Field = "meta mark"
	numgenPfx       = "numgen random mod "

	// FibSaddrType and FibDaddrType are the route type of the source or
	// destination address ("fib daddr type local"); a Match compares them
	// with one of FibAddrTypes. They cannot be set keys.
	FibSaddrType Field = "fib saddr type"
	FibDaddrType Field = "fib daddr type"

	// IIFName and OIFName are the input and output interface names. A
	// Match Value is a name or a prefix ending in "*" ("veth*"), as nft's
	// wildcard. Rendered quoted, as nft prints them. They cannot be set keys.
	IIFName Field = "iifname"
	OIFName Field = "oifname"
)

// FibAddrTypes are the address types a fib ... type match accepts.
var FibAddrTypes = []string{"unicast", "local", "broadcast", "multicast"}

// Const is a constant used as one part of a concatenated lookup key, of
// type mark, rendered as the decimal number: `7 . numgen random mod 3 vmap
// @endpoints` looks up (7, random bucket) in one shared map keyed
// mark . mark, so the number of maps stays constant as Services grow.
func Const(v uint32) Field { return Field(strconv.FormatUint(uint64(v), 10)) }

// ConstValue returns v for a Const field.
func (f Field) ConstValue() (uint32, bool) {
	s := string(f)
	if s == "" || s[0] < '0' || s[0] > '9' || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil
}

// Numgen is the field "numgen random mod n": a random number in [0, n),
// used as a key into a map of endpoints.
func Numgen(n uint32) Field { return Field(numgenPfx + strconv.FormatUint(uint64(n), 10)) }

// NumgenMod returns n for a Numgen field.
func (f Field) NumgenMod() (uint32, bool) {
	s, ok := strings.CutPrefix(string(f), numgenPfx)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil && n > 0
}

// DataType is the set key type a field's value has.
func (f Field) DataType() (DataType, bool) {
	switch f {
	case IPSaddr, IPDaddr:
		return TypeIPv4Addr, true
	case L4Proto:
		return TypeInetProto, true
	case THDport, THSport:
		return TypeInetService, true
	case MetaMark:
		return TypeMark, true
	}
	if _, ok := f.NumgenMod(); ok {
		return TypeMark, true
	}
	if _, ok := f.ConstValue(); ok {
		return TypeMark, true
	}
	return "", false
}

var fields = []Field{IPSaddr, IPDaddr, L4Proto, THDport, THSport, CTState, MetaMark, FibSaddrType, FibDaddrType, IIFName, OIFName}

// quoted reports whether the field's values are printed in double quotes.
func (f Field) quoted() bool { return f == IIFName || f == OIFName }

// Match is one condition of a rule. Exactly one of Value or Set is set:
//   - Value compares a single field: an address or prefix for ip saddr/daddr,
//     a protocol name, a port or port range ("8000-8080"), ct states joined by commas
//     ("established,related"), or a mark (with Mask, "meta mark & mask == v").
//     An address type (FibAddrTypes) for fib saddr/daddr type, an interface
//     name or "prefix*" for iifname/oifname.
//   - Set looks the (possibly concatenated) Keys up in a named set.
type Match struct {
	Keys  []Field
	Neg   bool
	Value string
	Mask  uint32 // meta mark only; 0 means compare the whole mark
	Set   string
}

func (m Match) String() string {
	keys := joinFields(m.Keys)
	if len(m.Keys) == 1 && m.Keys[0].quoted() && m.Set == "" {
		m.Value = `"` + m.Value + `"`
	}
	switch {
	case m.Set != "" && m.Neg:
		return keys + " != @" + m.Set
	case m.Set != "":
		return keys + " @" + m.Set
	case m.Mask != 0:
		op := "=="
		if m.Neg {
			op = "!="
		}
		return fmt.Sprintf("%s & 0x%08x %s %s", keys, m.Mask, op, m.Value)
	case m.Neg:
		return keys + " != " + m.Value
	}
	return keys + " " + m.Value
}

func joinFields(fs []Field) string {
	s := make([]string, len(fs))
	for i, f := range fs {
		s[i] = string(f)
	}
	return strings.Join(s, " . ")
}

// ActionKind is a rule's final statement.
type ActionKind string

const (
	ActNone   ActionKind = ""
	ActAccept ActionKind = "accept"
	ActDrop   ActionKind = "drop"
	ActReject ActionKind = "reject"
	// ActRejectTCP answers with a TCP reset; match meta l4proto tcp first
	// (nft insists, and a reset means nothing to other protocols).
	ActRejectTCP  ActionKind = "reject with tcp reset"
	ActReturn     ActionKind = "return"
	ActJump       ActionKind = "jump"
	ActGoto       ActionKind = "goto"
	ActDNAT       ActionKind = "dnat"
	ActMasquerade ActionKind = "masquerade"
	// ActMasqueradeFullyRandom masquerades with a fully random source port
	// mapping (NF_NAT_RANGE_PROTO_RANDOM_FULLY), as kube-proxy does, so
	// concurrent connections from different pods do not race for a port.
	ActMasqueradeFullyRandom ActionKind = "masquerade fully-random"
	ActVMap                  ActionKind = "vmap"
	// ActDNATMap translates the destination to the address and port found
	// by looking Keys up in the data Map (type ipv4_addr .
	// inet_service): "dnat ip to 7 . numgen random
	// mod 3 map @m", nft's spelling. A miss ends the rule, so the next
	// rule runs. With Record, the value found is also written to the
	// Dynamic map Record.Set under Record.Keys (see Action).
	ActDNATMap ActionKind = "dnat map"
)

// Action is the final statement of a rule: a verdict, NAT, or a verdict map
// lookup of Keys in Map ("ip daddr . meta l4proto . th dport vmap @m",
// "numgen random mod 3 vmap @m").
//
// Record (ActDNATMap only) remembers the translation: the value the lookup
// found is added to (or refreshes the timeout of) the Dynamic map
// Record.Set under the key Record.Keys, before the NAT. A later rule
// `dnat ip to <Record.Keys> map @<Record.Set>` then sends the same client
// to the same endpoint (Service session affinity). nft has no syntax for
// an update whose data comes from a lookup, so this renders as
// "dnat ip to <keys> map @m record @aff { <keys> }", which only
// ParseRule reads (Dump reads rules back from their stored text).
type Action struct {
	Kind   ActionKind
	Chain  string // jump, goto
	Addr   string // dnat: IPv4 address
	Port   uint16 // dnat: 0 keeps the port
	Keys   []Field
	Map    string
	Record *SetUpdate
}

func (a Action) String() string {
	switch a.Kind {
	case ActJump, ActGoto:
		return string(a.Kind) + " " + a.Chain
	case ActDNAT:
		if a.Port != 0 {
			return fmt.Sprintf("dnat ip to %s:%d", a.Addr, a.Port)
		}
		return "dnat ip to " + a.Addr
	case ActVMap:
		return joinFields(a.Keys) + " vmap @" + a.Map
	case ActDNATMap:
		s := "dnat ip to " + joinFields(a.Keys) + " map @" + a.Map
		if a.Record != nil {
			s += " record @" + a.Record.Set + " { " + joinFields(a.Record.Keys) + " }"
		}
		return s
	}
	return string(a.Kind)
}

// SetUpdate adds the packet's Keys to the Dynamic set Set, or refreshes
// the timeout of an element already there: "update @aff { ip saddr }".
type SetUpdate struct {
	Set  string
	Keys []Field
}

func (u SetUpdate) String() string { return "update @" + u.Set + " { " + joinFields(u.Keys) + " }" }

// Rule is matches (all must hold), then an optional counter, mark and set
// update, then the action. Comment is stored as nft's own rule comment.
type Rule struct {
	Match   []Match
	Counter bool
	MarkOr  uint32 // "meta mark set meta mark | MarkOr"; 0 means none
	Update  *SetUpdate
	Action  Action
	Comment string
}

// String renders the rule as nft prints it (without the comment).
func (r Rule) String() string {
	var parts []string
	for _, m := range r.Match {
		parts = append(parts, m.String())
	}
	if r.Counter {
		parts = append(parts, "counter")
	}
	if r.MarkOr != 0 {
		parts = append(parts, fmt.Sprintf("meta mark set meta mark | 0x%08x", r.MarkOr))
	}
	if r.Update != nil {
		parts = append(parts, r.Update.String())
	}
	if r.Action.Kind != ActNone {
		parts = append(parts, r.Action.String())
	}
	s := strings.Join(parts, " ")
	if r.Comment != "" {
		s += fmt.Sprintf(" comment %q", r.Comment)
	}
	return s
}

// Text is the rule without its comment, the form stored in the kernel next to
// the rule so that Dump can read the model back.
func (r Rule) Text() string {
	r.Comment = ""
	return r.String()
}

func (r Rule) clone() Rule {
	r.Match = slices.Clone(r.Match)
	for i := range r.Match {
		r.Match[i].Keys = slices.Clone(r.Match[i].Keys)
	}
	r.Action.Keys = slices.Clone(r.Action.Keys)
	if rec := r.Action.Record; rec != nil {
		u := *rec
		u.Keys = slices.Clone(u.Keys)
		r.Action.Record = &u
	}
	if r.Update != nil {
		u := *r.Update
		u.Keys = slices.Clone(u.Keys)
		r.Update = &u
	}
	return r
}

// Equal reports whether two rules are the same statement.
func (r Rule) Equal(o Rule) bool { return r.String() == o.String() }

// ParseRule parses the output of Rule.Text back into a Rule. It accepts
// exactly the vocabulary String renders.
func ParseRule(s string) (Rule, error) {
	p := &parser{toks: strings.Fields(s)}
	var r Rule
	for !p.done() {
		switch t := p.peek(); t {
		case "counter":
			p.next()
			r.Counter = true
			continue
		case "accept", "drop", "reject", "return", "masquerade":
			p.next()
			r.Action = Action{Kind: ActionKind(t)}
			if t == "masquerade" && p.peek() == "fully-random" {
				p.next()
				r.Action.Kind = ActMasqueradeFullyRandom
			}
			if t == "reject" && p.peek() == "with" {
				if p.next() != "with" || p.next() != "tcp" || p.next() != "reset" {
					return Rule{}, fmt.Errorf("parse rule %q: want \"reject with tcp reset\"", s)
				}
				r.Action.Kind = ActRejectTCP
			}
			continue
		case "jump", "goto":
			p.next()
			r.Action = Action{Kind: ActionKind(t), Chain: p.next()}
			continue
		case "update":
			p.next()
			name, ok := strings.CutPrefix(p.next(), "@")
			if !ok || name == "" || p.next() != "{" {
				return Rule{}, fmt.Errorf("parse rule %q: want \"update @set { keys }\"", s)
			}
			keys, err := p.fields()
			if err != nil {
				return Rule{}, fmt.Errorf("parse rule %q: %w", s, err)
			}
			if p.next() != "}" {
				return Rule{}, fmt.Errorf("parse rule %q: want \"}\" after update keys", s)
			}
			r.Update = &SetUpdate{Set: name, Keys: keys}
			continue
		case "dnat":
			p.next()
			if p.next() != "ip" || p.next() != "to" {
				return Rule{}, fmt.Errorf("parse rule %q: want \"dnat ip to\"", s)
			}
			if _, err := netip.ParseAddr(strings.Split(p.peek(), ":")[0]); err != nil {
				a, err := p.dnatMap()
				if err != nil {
					return Rule{}, fmt.Errorf("parse rule %q: %w", s, err)
				}
				r.Action = a
				continue
			}
			a := Action{Kind: ActDNAT}
			addr := p.next()
			if h, port, ok := strings.Cut(addr, ":"); ok {
				n, err := strconv.ParseUint(port, 10, 16)
				if err != nil {
					return Rule{}, fmt.Errorf("parse rule %q: dnat port: %w", s, err)
				}
				addr, a.Port = h, uint16(n)
			}
			a.Addr = addr
			r.Action = a
			continue
		}
		if p.peek() == "meta" && p.peekAt(1) == "mark" && p.peekAt(2) == "set" {
			p.toks = p.toks[p.i+3:]
			p.i = 0
			if p.next() != "meta" || p.next() != "mark" || p.next() != "|" {
				return Rule{}, fmt.Errorf("parse rule %q: want \"meta mark set meta mark |\"", s)
			}
			v, err := strconv.ParseUint(p.next(), 0, 32)
			if err != nil {
				return Rule{}, fmt.Errorf("parse rule %q: mark: %w", s, err)
			}
			r.MarkOr = uint32(v)
			continue
		}
		keys, err := p.fields()
		if err != nil {
			return Rule{}, fmt.Errorf("parse rule %q: %w", s, err)
		}
		m := Match{Keys: keys}
		switch p.peek() {
		case "vmap":
			p.next()
			r.Action = Action{Kind: ActVMap, Keys: keys, Map: strings.TrimPrefix(p.next(), "@")}
			continue
		case "&":
			p.next()
			v, err := strconv.ParseUint(p.next(), 0, 32)
			if err != nil {
				return Rule{}, fmt.Errorf("parse rule %q: mask: %w", s, err)
			}
			m.Mask = uint32(v)
			if p.next() == "!=" {
				m.Neg = true
			}
		case "!=":
			p.next()
			m.Neg = true
		}
		v := p.next()
		if v == "" {
			return Rule{}, fmt.Errorf("parse rule %q: missing value after %s", s, joinFields(keys))
		}
		if name, ok := strings.CutPrefix(v, "@"); ok {
			m.Set = name
		} else if len(keys) == 1 && keys[0].quoted() {
			uq, err := strconv.Unquote(v)
			if err != nil {
				return Rule{}, fmt.Errorf("parse rule %q: %s value %s: %w", s, keys[0], v, err)
			}
			m.Value = uq
		} else {
			m.Value = v
		}
		r.Match = append(r.Match, m)
	}
	return r, nil
}

// dnatMap parses what follows "dnat ip to" in an ActDNATMap:
// "<keys> map @m [record @aff { <keys> }]".
func (p *parser) dnatMap() (Action, error) {
	keys, err := p.fields()
	if err != nil {
		return Action{}, err
	}
	name, ok := strings.CutPrefix(p.peekAt(1), "@")
	if p.peek() != "map" || !ok || name == "" {
		return Action{}, fmt.Errorf("want \"map @name\" after dnat keys")
	}
	p.i += 2
	a := Action{Kind: ActDNATMap, Keys: keys, Map: name}
	if p.peek() != "record" {
		return a, nil
	}
	p.next()
	rec, ok := strings.CutPrefix(p.next(), "@")
	if !ok || rec == "" || p.next() != "{" {
		return Action{}, fmt.Errorf("want \"record @map { keys }\"")
	}
	rkeys, err := p.fields()
	if err != nil {
		return Action{}, err
	}
	if p.next() != "}" {
		return Action{}, fmt.Errorf("want \"}\" after record keys")
	}
	a.Record = &SetUpdate{Set: rec, Keys: rkeys}
	return a, nil
}

type parser struct {
	toks []string
	i    int
}

func (p *parser) done() bool { return p.i >= len(p.toks) }
func (p *parser) peek() string {
	return p.peekAt(0)
}
func (p *parser) peekAt(k int) string {
	if p.i+k >= len(p.toks) {
		return ""
	}
	return p.toks[p.i+k]
}
func (p *parser) next() string { t := p.peek(); p.i++; return t }

// fields parses "f1 . f2 . f3".
func (p *parser) fields() ([]Field, error) {
	var out []Field
	for {
		f, err := p.field()
		if err != nil {
			return nil, err
		}
		out = append(out, f)
		if p.peek() != "." {
			return out, nil
		}
		p.next()
	}
}

func (p *parser) field() (Field, error) {
	if p.peek() == "numgen" && p.peekAt(1) == "random" && p.peekAt(2) == "mod" {
		f := Field(numgenPfx + p.peekAt(3))
		if _, ok := f.NumgenMod(); !ok {
			return "", fmt.Errorf("bad numgen modulus %q", p.peekAt(3))
		}
		p.i += 4
		return f, nil
	}
	if f := Field(p.peek()); f == IIFName || f == OIFName {
		p.i++
		return f, nil
	}
	if _, ok := Field(p.peek()).ConstValue(); ok {
		return Field(p.next()), nil
	}
	if f := Field(p.peek() + " " + p.peekAt(1) + " " + p.peekAt(2)); f == FibSaddrType || f == FibDaddrType {
		p.i += 3
		return f, nil
	}
	f := Field(p.peek() + " " + p.peekAt(1))
	if !slices.Contains(fields, f) {
		return "", fmt.Errorf("unknown field or statement %q", f)
	}
	p.i += 2
	return f, nil
}
