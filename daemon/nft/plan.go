package nft

import (
	"fmt"
	"slices"
	"strings"
)

// ElementOp adds or deletes elements of one set or map. It carries the
// types so a backend can encode the elements without reading the set back.
type ElementOp struct {
	Name     string
	KeyType  []DataType
	DataType []DataType // nil for sets
	Interval bool
	Elements []Element
}

// IsMap reports whether the op targets a map.
func (o ElementOp) IsMap() bool { return len(o.DataType) > 0 }

// Transaction is a set of changes to table inet meridian, applied as one
// netlink batch in this order, chosen so that nothing is deleted while still
// referenced and nothing is referenced before it exists:
//
//  1. DeleteTable (a full rebuild or Plan to empty), then create the table
//     unless the transaction only deletes it;
//  2. AddChains (empty);
//  3. DeleteElements;
//  4. FlushChains (every chain whose rules change or that goes away);
//  5. DeleteSets (sets and maps, including ones whose type changed);
//  6. AddSets with their elements, AddMaps (empty);
//  7. FillChains (append the listed rules to flushed or new chains);
//  8. AddElements and the elements of AddMaps (after the rules: the kernel
//     checks each map element against every rule looking the map up, which
//     is cheaper than each new lookup rule walking every element);
//  9. DeleteChains.
type Transaction struct {
	DeleteTable    bool
	AddChains      []Chain // rules ignored; see FillChains
	DeleteElements []ElementOp
	FlushChains    []string
	DeleteSets     []string
	AddSets        []Set
	AddMaps        []Map
	AddElements    []ElementOp
	FillChains     []Chain
	DeleteChains   []string
}

// OnlyDeletesTable reports whether the transaction just removes the table.
func (tx Transaction) OnlyDeletesTable() bool {
	return tx.DeleteTable && len(tx.AddChains) == 0 && len(tx.AddSets) == 0 && len(tx.AddMaps) == 0 && len(tx.FillChains) == 0
}

// Empty reports whether the transaction changes nothing.
func (tx Transaction) Empty() bool { return tx.Ops() == 0 }

// Ops counts the object-level operations (one per chain, set, element or
// rule), a measure of how much a sync sends.
func (tx Transaction) Ops() int {
	n := len(tx.AddChains) + len(tx.FlushChains) + len(tx.DeleteSets) + len(tx.DeleteChains)
	if tx.DeleteTable {
		n++
	}
	for _, s := range tx.AddSets {
		n += 1 + len(s.Elements)
	}
	for _, m := range tx.AddMaps {
		n += 1 + len(m.Elements)
	}
	for _, o := range tx.DeleteElements {
		n += len(o.Elements)
	}
	for _, o := range tx.AddElements {
		n += len(o.Elements)
	}
	for _, c := range tx.FillChains {
		n += len(c.Rules)
	}
	return n
}

// String renders the transaction like an `nft -f` script, for debug logs.
func (tx Transaction) String() string {
	if tx.Empty() {
		return ""
	}
	var b strings.Builder
	tbl := TableFamily + " " + TableName
	if tx.DeleteTable {
		fmt.Fprintf(&b, "delete table %s\n", tbl)
	}
	if tx.OnlyDeletesTable() {
		return b.String()
	}
	fmt.Fprintf(&b, "add table %s\n", tbl)
	for _, c := range tx.AddChains {
		if c.Base() {
			fmt.Fprintf(&b, "add chain %s %s { type %s hook %s priority %s; policy accept; }\n", tbl, c.Name, c.Type, c.Hook, priorityString(c.Hook, c.Priority))
		} else {
			fmt.Fprintf(&b, "add chain %s %s\n", tbl, c.Name)
		}
	}
	for _, o := range tx.DeleteElements {
		fmt.Fprintf(&b, "delete element %s %s { %s }\n", tbl, o.Name, keysString(o.Elements))
	}
	for _, c := range tx.FlushChains {
		fmt.Fprintf(&b, "flush chain %s %s\n", tbl, c)
	}
	for _, s := range tx.DeleteSets {
		fmt.Fprintf(&b, "delete set %s %s\n", tbl, s)
	}
	for _, s := range tx.AddSets {
		flags := ""
		if f := s.flagsString(); f != "" {
			flags = " flags " + f + ";"
		}
		if s.Timeout > 0 {
			flags += " timeout " + timeoutString(s.Timeout) + ";"
		}
		fmt.Fprintf(&b, "add set %s %s { type %s;%s }\n", tbl, s.Name, typeString(s.KeyType), flags)
		if len(s.Elements) > 0 {
			fmt.Fprintf(&b, "add element %s %s { %s }\n", tbl, s.Name, elementsString(s.Elements))
		}
	}
	for _, m := range tx.AddMaps {
		flags := ""
		if f := m.flagsString(); f != "" {
			flags = " flags " + f + ";"
		}
		if m.Timeout > 0 {
			flags += " timeout " + timeoutString(m.Timeout) + ";"
		}
		fmt.Fprintf(&b, "add map %s %s { type %s : %s;%s }\n", tbl, m.Name, typeString(m.KeyType), typeString(m.DataType), flags)
		if len(m.Elements) > 0 {
			fmt.Fprintf(&b, "add element %s %s { %s }\n", tbl, m.Name, elementsString(m.Elements))
		}
	}
	for _, o := range tx.AddElements {
		fmt.Fprintf(&b, "add element %s %s { %s }\n", tbl, o.Name, elementsString(o.Elements))
	}
	for _, c := range tx.FillChains {
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "add rule %s %s %s\n", tbl, c.Name, r)
		}
	}
	for _, c := range tx.DeleteChains {
		fmt.Fprintf(&b, "delete chain %s %s\n", tbl, c)
	}
	return b.String()
}

func keysString(es []Element) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Key
	}
	return strings.Join(s, ", ")
}

// Plan computes the smallest transaction that turns current (what Dump
// returned, or what the last successful Apply reached) into desired:
// chains are added or deleted, only chains whose rules differ are flushed
// and refilled, sets and maps keep their identity while their type is
// unchanged and only their elements move. Plan(current, Table{}) deletes the
// table; a change of a base chain's hook, type or priority rebuilds the whole
// table in the same batch (nft cannot alter a hook in place).
func Plan(current, desired Table) Transaction {
	if desired.Empty() {
		if current.Empty() {
			return Transaction{}
		}
		return Transaction{DeleteTable: true}
	}
	// Objects are matched by name and the transaction's lists are sorted
	// at the end, so neither table is copied or sorted here: at 10k
	// Services that copy cost more than the diff itself.
	cur, des := current, desired
	curChains := byName(cur.Chains, func(c Chain) string { return c.Name })
	for _, c := range des.Chains {
		if old, ok := curChains[c.Name]; ok && (old.Type != c.Type || old.Hook != c.Hook || old.Priority != c.Priority) {
			return Full(desired, !current.Empty())
		}
	}

	var tx Transaction
	recreated := map[string]bool{}

	curSets := byName(cur.Sets, func(s Set) string { return s.Name })
	curMaps := byName(cur.Maps, func(m Map) string { return m.Name })
	desSets := byName(des.Sets, func(s Set) string { return s.Name })
	desMaps := byName(des.Maps, func(m Map) string { return m.Name })
	for _, s := range des.Sets {
		old, ok := curSets[s.Name]
		if _, wasMap := curMaps[s.Name]; wasMap || (ok && (!slices.Equal(old.KeyType, s.KeyType) || old.Interval != s.Interval ||
			old.Dynamic != s.Dynamic || old.Timeout != s.Timeout)) {
			tx.DeleteSets = append(tx.DeleteSets, s.Name)
			recreated[s.Name] = true
			ok = false
		}
		if !ok {
			if s.Dynamic {
				s.Elements = nil
			}
			tx.AddSets = append(tx.AddSets, s)
			continue
		}
		if s.Dynamic {
			// Its elements are the kernel's (learned from packets): never
			// planned, so a sync does not wipe them.
			continue
		}
		elementOps(&tx, ElementOp{Name: s.Name, KeyType: s.KeyType, Interval: s.Interval}, old.Elements, s.Elements)
	}
	for _, m := range des.Maps {
		old, ok := curMaps[m.Name]
		if _, wasSet := curSets[m.Name]; wasSet || (ok && (!slices.Equal(old.KeyType, m.KeyType) || !slices.Equal(old.DataType, m.DataType) ||
			old.Dynamic != m.Dynamic || old.Timeout != m.Timeout)) {
			tx.DeleteSets = append(tx.DeleteSets, m.Name)
			recreated[m.Name] = true
			ok = false
		}
		if !ok {
			if m.Dynamic {
				m.Elements = nil
			}
			tx.AddMaps = append(tx.AddMaps, m)
			continue
		}
		if m.Dynamic {
			continue // the kernel's, as for dynamic sets
		}
		elementOps(&tx, ElementOp{Name: m.Name, KeyType: m.KeyType, DataType: m.DataType}, old.Elements, m.Elements)
	}
	for _, s := range cur.Sets {
		if _, ok := desSets[s.Name]; !ok {
			if _, ok := desMaps[s.Name]; !ok {
				tx.DeleteSets = append(tx.DeleteSets, s.Name)
				recreated[s.Name] = true
			}
		}
	}
	for _, m := range cur.Maps {
		if _, ok := desMaps[m.Name]; !ok {
			if _, ok := desSets[m.Name]; !ok {
				tx.DeleteSets = append(tx.DeleteSets, m.Name)
				recreated[m.Name] = true
			}
		}
	}

	desChains := byName(des.Chains, func(c Chain) string { return c.Name })
	for _, c := range des.Chains {
		old, ok := curChains[c.Name]
		switch {
		case !ok:
			tx.AddChains = append(tx.AddChains, Chain{Name: c.Name, Type: c.Type, Hook: c.Hook, Priority: c.Priority})
			if len(c.Rules) > 0 {
				tx.FillChains = append(tx.FillChains, c)
			}
		case !rulesEqual(old.Rules, c.Rules) || referencesAny(old.Rules, recreated):
			// A rule referencing a set that is deleted must go before the
			// set does, so such chains are refilled even if unchanged.
			if len(old.Rules) > 0 {
				tx.FlushChains = append(tx.FlushChains, c.Name)
			}
			if len(c.Rules) > 0 {
				tx.FillChains = append(tx.FillChains, c)
			}
		}
	}
	for _, c := range cur.Chains {
		if _, ok := desChains[c.Name]; !ok {
			if len(c.Rules) > 0 {
				tx.FlushChains = append(tx.FlushChains, c.Name)
			}
			tx.DeleteChains = append(tx.DeleteChains, c.Name)
		}
	}
	tx.sort()
	return tx
}

// sort orders every list of the transaction by name and every element op
// by key, so that a plan does not depend on the order of its inputs.
func (tx *Transaction) sort() {
	byChain := func(a, b Chain) int { return strings.Compare(a.Name, b.Name) }
	byOp := func(a, b ElementOp) int { return strings.Compare(a.Name, b.Name) }
	slices.SortFunc(tx.AddChains, byChain)
	slices.SortFunc(tx.FillChains, byChain)
	slices.Sort(tx.FlushChains)
	slices.Sort(tx.DeleteChains)
	slices.Sort(tx.DeleteSets)
	tx.DeleteSets = slices.Compact(tx.DeleteSets)
	slices.SortFunc(tx.AddSets, func(a, b Set) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(tx.AddMaps, func(a, b Map) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(tx.DeleteElements, byOp)
	slices.SortFunc(tx.AddElements, byOp)
	for _, ops := range [][]ElementOp{tx.DeleteElements, tx.AddElements} {
		for _, op := range ops {
			slices.SortFunc(op.Elements, func(a, b Element) int { return strings.Compare(a.Key, b.Key) })
		}
	}
}

// Full is the transaction that rebuilds the table from scratch in one batch:
// the fallback after a failed partial sync. exists says whether the table
// is there to delete first.
func Full(desired Table, exists bool) Transaction {
	d := desired.Sorted()
	tx := Transaction{DeleteTable: exists, AddSets: withoutDynamicElements(d.Sets), AddMaps: withoutDynamicMapElements(d.Maps)}
	for _, c := range d.Chains {
		tx.AddChains = append(tx.AddChains, Chain{Name: c.Name, Type: c.Type, Hook: c.Hook, Priority: c.Priority})
		if len(c.Rules) > 0 {
			tx.FillChains = append(tx.FillChains, c)
		}
	}
	return tx
}

// withoutDynamicElements drops the elements of Dynamic sets, which only
// the kernel adds.
func withoutDynamicElements(sets []Set) []Set {
	for i := range sets {
		if sets[i].Dynamic {
			sets[i].Elements = nil
		}
	}
	return sets
}

// withoutDynamicMapElements drops the elements of Dynamic maps, which only
// the kernel adds.
func withoutDynamicMapElements(maps []Map) []Map {
	for i := range maps {
		if maps[i].Dynamic {
			maps[i].Elements = nil
		}
	}
	return maps
}

func byName[T any](xs []T, name func(T) string) map[string]T {
	m := make(map[string]T, len(xs))
	for _, x := range xs {
		m[name(x)] = x
	}
	return m
}

func rulesEqual(a, b []Rule) bool {
	return slices.EqualFunc(a, b, func(x, y Rule) bool { return x.String() == y.String() })
}

func referencesAny(rules []Rule, names map[string]bool) bool {
	for _, r := range rules {
		for _, n := range r.references() {
			if names[n] {
				return true
			}
		}
	}
	return false
}

// references lists the sets and maps a rule looks up.
func (r Rule) references() []string {
	var out []string
	for _, m := range r.Match {
		if m.Set != "" {
			out = append(out, m.Set)
		}
	}
	if r.Update != nil {
		out = append(out, r.Update.Set)
	}
	if r.Action.Kind == ActVMap || r.Action.Kind == ActDNATMap {
		out = append(out, r.Action.Map)
	}
	if r.Action.Record != nil {
		out = append(out, r.Action.Record.Set)
	}
	return out
}

// diffElements returns the elements to delete and to add. A map element
// whose value changed is deleted and re-added (nft has no in-place update).
// Renderers emit elements in a stable order, so the common head and tail of
// the two lists are skipped pairwise and only the middle, where a change
// is, pays for the lookup maps: an endpoint change in one Service then costs
// a compare of the other Services' elements, not two maps of all of them.
func diffElements(cur, des []Element) (del, add []Element) {
	head := 0
	for head < len(cur) && head < len(des) && cur[head] == des[head] {
		head++
	}
	tail := 0
	for tail < len(cur)-head && tail < len(des)-head && cur[len(cur)-1-tail] == des[len(des)-1-tail] {
		tail++
	}
	cur, des = cur[head:len(cur)-tail], des[head:len(des)-tail]
	if len(cur) == 0 && len(des) == 0 {
		return nil, nil
	}
	have := make(map[string]string, len(cur))
	for _, e := range cur {
		have[e.Key] = e.Value
	}
	want := make(map[string]string, len(des))
	for _, e := range des {
		want[e.Key] = e.Value
		if v, ok := have[e.Key]; !ok || v != e.Value {
			add = append(add, e)
		}
	}
	for _, e := range cur {
		if v, ok := want[e.Key]; !ok || v != e.Value {
			del = append(del, e)
		}
	}
	return del, add
}

// elementOps queues on tx the element deletions and additions that turn cur into
// des for the set or map op describes.
func elementOps(tx *Transaction, op ElementOp, cur, des []Element) {
	del, add := diffElements(cur, des)
	if len(del) > 0 {
		d := op
		d.Elements = del
		tx.DeleteElements = append(tx.DeleteElements, d)
	}
	if len(add) > 0 {
		a := op
		a.Elements = add
		tx.AddElements = append(tx.AddElements, a)
	}
}
