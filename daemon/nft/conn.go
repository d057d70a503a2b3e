package nft

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Conn programs table inet meridian. Apply sends a transaction atomically
// (all of it or none); Dump reads the table back (an empty Table when it
// does not exist). Implementations: kernel.Conn over netlink, Fake in memory.
type Conn interface {
	Apply(tx Transaction) error
	Dump() (Table, error)
}

// Fake is a semantic in-memory Conn for unit tests of packages that render
// into this model. It applies a transaction to a copy and keeps the copy
// only if every step is valid, rejecting what the kernel rejects: adding
// elements that do not match the set type, rules or map elements that refer
// to missing chains or sets, deleting what is missing or still referenced.
type Fake struct {
	mu      sync.Mutex
	exists  bool
	table   Table
	applied int
}

// NewFake returns a Fake with no table.
func NewFake() *Fake { return &Fake{} }

var _ Conn = (*Fake)(nil)

// Dump returns the current table.
func (f *Fake) Dump() (Table, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.table.Sorted(), nil
}

// Applied counts the transactions that succeeded.
func (f *Fake) Applied() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// ErrNotFound and ErrBusy classify the Fake's refusals like the kernel's
// ENOENT and EBUSY.
var (
	ErrNotFound = errors.New("not found")
	ErrBusy     = errors.New("busy")
	ErrInvalid  = errors.New("invalid")
)

// Apply applies tx all-or-nothing.
func (f *Fake) Apply(tx Transaction) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := &fakeState{exists: f.exists, t: f.table.Sorted()}
	if err := st.apply(tx); err != nil {
		return fmt.Errorf("apply nft transaction: %w", err)
	}
	f.exists, f.table = st.exists, st.t
	f.applied++
	return nil
}

type fakeState struct {
	exists bool
	t      Table
}

func (s *fakeState) chain(name string) int {
	return slices.IndexFunc(s.t.Chains, func(c Chain) bool { return c.Name == name })
}
func (s *fakeState) set(name string) int {
	return slices.IndexFunc(s.t.Sets, func(c Set) bool { return c.Name == name })
}
func (s *fakeState) mapIdx(name string) int {
	return slices.IndexFunc(s.t.Maps, func(c Map) bool { return c.Name == name })
}

func (s *fakeState) apply(tx Transaction) error {
	if tx.DeleteTable {
		if !s.exists {
			return fmt.Errorf("delete table: %w", ErrNotFound)
		}
		s.exists, s.t = false, Table{}
	}
	if tx.OnlyDeletesTable() {
		return nil
	}
	s.exists = true
	for _, c := range tx.AddChains {
		if i := s.chain(c.Name); i >= 0 {
			if o := s.t.Chains[i]; o.Type != c.Type || o.Hook != c.Hook || o.Priority != c.Priority {
				return fmt.Errorf("add chain %s: exists with another hook: %w", c.Name, ErrInvalid)
			}
			continue
		}
		if c.Base() && (c.Hook == "" || (c.Type != TypeNAT && c.Type != TypeFilter)) {
			return fmt.Errorf("add chain %s: bad base chain: %w", c.Name, ErrInvalid)
		}
		c.Rules = nil
		s.t.Chains = append(s.t.Chains, c)
	}
	for _, op := range tx.DeleteElements {
		els, err := s.elements(op)
		if err != nil {
			return fmt.Errorf("delete element: %w", err)
		}
		for _, e := range op.Elements {
			i := slices.IndexFunc(*els, func(x Element) bool { return x.Key == e.Key })
			if i < 0 {
				return fmt.Errorf("delete element %s { %s }: %w", op.Name, e.Key, ErrNotFound)
			}
			*els = slices.Delete(*els, i, i+1)
		}
	}
	for _, name := range tx.FlushChains {
		i := s.chain(name)
		if i < 0 {
			return fmt.Errorf("flush chain %s: %w", name, ErrNotFound)
		}
		s.t.Chains[i].Rules = nil
	}
	for _, name := range tx.DeleteSets {
		if s.referenced(name) {
			return fmt.Errorf("delete set %s: %w", name, ErrBusy)
		}
		if i := s.set(name); i >= 0 {
			s.t.Sets = slices.Delete(s.t.Sets, i, i+1)
		} else if i := s.mapIdx(name); i >= 0 {
			s.t.Maps = slices.Delete(s.t.Maps, i, i+1)
		} else {
			return fmt.Errorf("delete set %s: %w", name, ErrNotFound)
		}
	}
	for _, set := range tx.AddSets {
		if s.set(set.Name) >= 0 || s.mapIdx(set.Name) >= 0 {
			return fmt.Errorf("add set %s: exists: %w", set.Name, ErrInvalid)
		}
		els := set.Elements
		if set.Dynamic {
			// Only the packet path fills a dynamic set; see Set.
			els = nil
		}
		set.Elements = nil
		s.t.Sets = append(s.t.Sets, set)
		if err := s.addElements(ElementOp{Name: set.Name, KeyType: set.KeyType, Interval: set.Interval, Elements: els}); err != nil {
			return err
		}
	}
	for _, m := range tx.AddMaps {
		if s.set(m.Name) >= 0 || s.mapIdx(m.Name) >= 0 {
			return fmt.Errorf("add map %s: exists: %w", m.Name, ErrInvalid)
		}
		if len(m.DataType) == 0 {
			return fmt.Errorf("add map %s: no data type: %w", m.Name, ErrInvalid)
		}
		if m.Dynamic && slices.Equal(m.DataType, []DataType{TypeVerdict}) {
			return fmt.Errorf("add map %s: a dynamic map holds data, not verdicts: %w", m.Name, ErrInvalid)
		}
		els := m.Elements
		if m.Dynamic {
			els = nil // only the packet path fills it; see Map
		}
		m.Elements = nil
		s.t.Maps = append(s.t.Maps, m)
		if err := s.addElements(ElementOp{Name: m.Name, KeyType: m.KeyType, DataType: m.DataType, Elements: els}); err != nil {
			return err
		}
	}
	for _, op := range tx.AddElements {
		if err := s.addElements(op); err != nil {
			return err
		}
	}
	for _, c := range tx.FillChains {
		i := s.chain(c.Name)
		if i < 0 {
			return fmt.Errorf("add rule %s: %w", c.Name, ErrNotFound)
		}
		for _, r := range c.Rules {
			if err := s.checkRule(r); err != nil {
				return fmt.Errorf("add rule %s %s: %w", c.Name, r, err)
			}
			s.t.Chains[i].Rules = append(s.t.Chains[i].Rules, r.clone())
		}
	}
	for _, name := range tx.DeleteChains {
		i := s.chain(name)
		if i < 0 {
			return fmt.Errorf("delete chain %s: %w", name, ErrNotFound)
		}
		if len(s.t.Chains[i].Rules) > 0 || s.chainReferenced(name) {
			return fmt.Errorf("delete chain %s: %w", name, ErrBusy)
		}
		s.t.Chains = slices.Delete(s.t.Chains, i, i+1)
	}
	s.t = s.t.Sorted()
	return nil
}

func (s *fakeState) elements(op ElementOp) (*[]Element, error) {
	if i := s.set(op.Name); i >= 0 && !op.IsMap() {
		return &s.t.Sets[i].Elements, nil
	}
	if i := s.mapIdx(op.Name); i >= 0 && op.IsMap() {
		return &s.t.Maps[i].Elements, nil
	}
	return nil, fmt.Errorf("%s: %w", op.Name, ErrNotFound)
}

func (s *fakeState) addElements(op ElementOp) error {
	els, err := s.elements(op)
	if err != nil {
		return fmt.Errorf("add element: %w", err)
	}
	var kt, dt []DataType
	interval := false
	if i := s.set(op.Name); i >= 0 {
		kt, interval = s.t.Sets[i].KeyType, s.t.Sets[i].Interval
	} else {
		i := s.mapIdx(op.Name)
		kt, dt = s.t.Maps[i].KeyType, s.t.Maps[i].DataType
	}
	for _, e := range op.Elements {
		if err := s.checkElement(kt, dt, interval, e); err != nil {
			return fmt.Errorf("add element %s { %s }: %w", op.Name, e, err)
		}
		if j := slices.IndexFunc(*els, func(x Element) bool { return x.Key == e.Key }); j >= 0 {
			if (*els)[j].Value != e.Value {
				return fmt.Errorf("add element %s { %s }: exists with another value: %w", op.Name, e, ErrInvalid)
			}
			continue
		}
		*els = append(*els, e)
	}
	return nil
}

func (s *fakeState) checkElement(kt, dt []DataType, interval bool, e Element) error {
	if interval {
		if _, _, _, err := IntervalBounds(e.Key); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	} else if _, err := EncodeKey(kt, e.Key); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	switch {
	case len(dt) == 0:
		if e.Value != "" {
			return fmt.Errorf("value in a set: %w", ErrInvalid)
		}
	case len(dt) == 1 && dt[0] == TypeVerdict:
		kind, chain, _ := strings.Cut(e.Value, " ")
		switch kind {
		case "accept", "drop", "return":
		case "jump", "goto":
			if s.chain(chain) < 0 {
				return fmt.Errorf("verdict %q: chain %w", e.Value, ErrNotFound)
			}
		default:
			return fmt.Errorf("bad verdict %q: %w", e.Value, ErrInvalid)
		}
	default:
		if _, err := EncodeKey(dt, e.Value); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	}
	return nil
}

func (s *fakeState) checkRule(r Rule) error {
	for _, n := range r.references() {
		if s.set(n) < 0 && s.mapIdx(n) < 0 {
			return fmt.Errorf("set %s: %w", n, ErrNotFound)
		}
	}
	for _, m := range r.Match {
		if err := checkMatch(m); err != nil {
			return fmt.Errorf("match %q: %w", m, err)
		}
	}
	if u := r.Update; u != nil {
		i := s.set(u.Set)
		if i < 0 || !s.t.Sets[i].Dynamic {
			return fmt.Errorf("update @%s: not a dynamic set: %w", u.Set, ErrInvalid)
		}
		if err := checkKeys(u.Keys, s.t.Sets[i].KeyType); err != nil {
			return fmt.Errorf("update @%s: %w", u.Set, err)
		}
	}
	if k := r.Action.Kind; k == ActJump || k == ActGoto {
		if s.chain(r.Action.Chain) < 0 {
			return fmt.Errorf("chain %s: %w", r.Action.Chain, ErrNotFound)
		}
	}
	if r.Action.Kind == ActVMap {
		if i := s.mapIdx(r.Action.Map); i < 0 || !slices.Equal(s.t.Maps[i].DataType, []DataType{TypeVerdict}) {
			return fmt.Errorf("vmap @%s is not a verdict map: %w", r.Action.Map, ErrInvalid)
		}
	}
	if r.Action.Kind == ActDNATMap {
		return s.checkDNATMap(r.Action)
	}
	if r.Action.Record != nil {
		return fmt.Errorf("record without dnat map: %w", ErrInvalid)
	}
	return nil
}

// natDataTypes are the data types a DNAT map may hold: an address and
// port (the kernel backend translates both).
var natDataTypes = [][]DataType{{TypeIPv4Addr, TypeInetService}}

func (s *fakeState) checkDNATMap(a Action) error {
	i := s.mapIdx(a.Map)
	if i < 0 {
		return fmt.Errorf("dnat map @%s: %w", a.Map, ErrNotFound)
	}
	m := s.t.Maps[i]
	if !slices.ContainsFunc(natDataTypes, func(d []DataType) bool { return slices.Equal(d, m.DataType) }) {
		return fmt.Errorf("dnat map @%s holds %s, not NAT data: %w", a.Map, typeString(m.DataType), ErrInvalid)
	}
	if err := checkKeys(a.Keys, m.KeyType); err != nil {
		return fmt.Errorf("dnat map @%s: %w", a.Map, err)
	}
	if rec := a.Record; rec != nil {
		j := s.mapIdx(rec.Set)
		if j < 0 || !s.t.Maps[j].Dynamic {
			return fmt.Errorf("record @%s: not a dynamic map: %w", rec.Set, ErrInvalid)
		}
		if !slices.Equal(s.t.Maps[j].DataType, m.DataType) {
			return fmt.Errorf("record @%s holds %s, the lookup gives %s: %w", rec.Set, typeString(s.t.Maps[j].DataType), typeString(m.DataType), ErrInvalid)
		}
		if err := checkKeys(rec.Keys, s.t.Maps[j].KeyType); err != nil {
			return fmt.Errorf("record @%s: %w", rec.Set, err)
		}
	}
	return nil
}

func (s *fakeState) referenced(set string) bool {
	for _, c := range s.t.Chains {
		for _, r := range c.Rules {
			if slices.Contains(r.references(), set) {
				return true
			}
		}
	}
	return false
}

func (s *fakeState) chainReferenced(chain string) bool {
	for _, c := range s.t.Chains {
		for _, r := range c.Rules {
			if k := r.Action.Kind; (k == ActJump || k == ActGoto) && r.Action.Chain == chain {
				return true
			}
		}
	}
	for _, m := range s.t.Maps {
		for _, e := range m.Elements {
			if e.Value == "jump "+chain || e.Value == "goto "+chain {
				return true
			}
		}
	}
	return false
}

// checkKeys reports whether fields can be looked up in (or added to) a set
// keyed types, as the kernel would refuse a key of another length.
func checkKeys(keys []Field, types []DataType) error {
	if len(keys) != len(types) {
		return fmt.Errorf("%d key fields for type %s: %w", len(keys), typeString(types), ErrInvalid)
	}
	for i, k := range keys {
		t, ok := k.DataType()
		if !ok {
			return fmt.Errorf("field %q cannot be a set key: %w", k, ErrInvalid)
		}
		if t.Len() != types[i].Len() {
			return fmt.Errorf("field %q is no %s: %w", k, types[i], ErrInvalid)
		}
	}
	return nil
}

// checkMatch refuses what the kernel backend cannot render: fields that
// are no set keys looked up in a set, and values a field cannot hold.
func checkMatch(m Match) error {
	if m.Set != "" {
		for _, k := range m.Keys {
			if _, ok := k.DataType(); !ok {
				return fmt.Errorf("field %q cannot be a set key: %w", k, ErrInvalid)
			}
		}
		return nil
	}
	if len(m.Keys) != 1 {
		return fmt.Errorf("a value match takes one field: %w", ErrInvalid)
	}
	switch f := m.Keys[0]; f {
	case FibSaddrType, FibDaddrType:
		if !slices.Contains(FibAddrTypes, m.Value) {
			return fmt.Errorf("unknown address type %q: %w", m.Value, ErrInvalid)
		}
	case IIFName, OIFName:
		if err := CheckIfname(m.Value); err != nil {
			return fmt.Errorf("%w: %w", err, ErrInvalid)
		}
	default:
		if _, ok := f.ConstValue(); ok {
			return fmt.Errorf("constant %s compared with a value: %w", f, ErrInvalid)
		}
		if _, ok := f.NumgenMod(); ok {
			return fmt.Errorf("numgen compared with a value: %w", ErrInvalid)
		}
	}
	return nil
}

// CheckIfname validates an iifname/oifname match value: an interface name
// (at most 15 bytes, the kernel's IFNAMSIZ less its NUL) or a non-empty
// prefix of one followed by "*".
func CheckIfname(v string) error {
	name, _ := strings.CutSuffix(v, "*")
	switch {
	case name == "":
		return fmt.Errorf("empty interface name %q", v)
	case len(name) > 15:
		return fmt.Errorf("interface name %q longer than 15 bytes", v)
	case strings.ContainsAny(name, "*\"\\\x00 /"):
		return fmt.Errorf("bad interface name %q", v)
	}
	return nil
}

// RuleCounter is what a rule's counter has seen: the rule is the Index-th
// (from 0) of Chain, and Comment its model comment.
type RuleCounter struct {
	Chain   string
	Index   int
	Comment string
	Packets uint64
	Bytes   uint64
}

// Counters returns a zero RuleCounter for every rule with Counter, in
// chain name order, like kernel.Conn.Counters before any packet.
func (f *Fake) Counters() ([]RuleCounter, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []RuleCounter
	for _, c := range f.table.Sorted().Chains {
		for i, r := range c.Rules {
			if r.Counter {
				out = append(out, RuleCounter{Chain: c.Name, Index: i, Comment: r.Comment})
			}
		}
	}
	return out, nil
}
