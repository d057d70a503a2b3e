// Package nft is Meridian's seam around nftables: a pure model of the one
// table Meridian owns (inet meridian), its nft text rendering, and Plan, which
// diffs two models into the smallest Transaction, and Syncer, which keeps
// the table at a desired state through a Conn. The kernel backend lives in
// daemon/nft/kernel; Fake in this package applies transactions in memory for
// other packages' unit tests. Nothing here imports netlink.
//
// Services and policy render into one Table each sync (their objects under
// distinct names); the sync loop calls Syncer.Sync(desired).
package nft

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Names of the objects Meridian owns. Base chains are named <type>-<hook>.
const (
	TableFamily = "inet"
	TableName   = "meridian"

	ChainNATPrerouting  = "nat-prerouting"
	ChainNATOutput      = "nat-output"
	ChainNATPostrouting = "nat-postrouting"
	ChainFilterForward  = "filter-forward"
	ChainFilterInput    = "filter-input"
	ChainFilterOutput   = "filter-output"
)

// Chain types and hooks, spelled as nft spells them.
const (
	TypeFilter = "filter"
	TypeNAT    = "nat"

	HookPrerouting  = "prerouting"
	HookInput       = "input"
	HookForward     = "forward"
	HookOutput      = "output"
	HookPostrouting = "postrouting"
)

// Standard priorities (nft's named priorities for the inet family).
// Meridian's base chains sit at these or at offsets from them.
const (
	PriorityDstNAT = -100
	PriorityFilter = 0
	PrioritySrcNAT = 100
)

// DataType is an nft set data type; concatenations are lists of them.
type DataType string

const (
	TypeIPv4Addr    DataType = "ipv4_addr"
	TypeInetProto   DataType = "inet_proto"
	TypeInetService DataType = "inet_service"
	TypeMark        DataType = "mark"
	TypeVerdict     DataType = "verdict"
)

// Table is the whole desired (or dumped) content of table inet meridian.
// Order of Chains, Sets and Maps does not matter; objects are identified by
// name. An empty Table means "Meridian owns nothing": Plan deletes the table.
type Table struct {
	Chains []Chain
	Sets   []Set
	Maps   []Map
}

// Empty reports whether the table holds no objects.
func (t Table) Empty() bool { return len(t.Chains) == 0 && len(t.Sets) == 0 && len(t.Maps) == 0 }

// Chain is a regular chain (Type == "") or a base chain attached to Hook.
// Base chains always have policy accept: Meridian's verdicts are explicit
// rules so that another table's chains on the same hook still see traffic.
type Chain struct {
	Name     string
	Type     string // "", TypeFilter or TypeNAT
	Hook     string
	Priority int
	Rules    []Rule
}

// Base reports whether the chain is attached to a hook.
func (c Chain) Base() bool { return c.Type != "" }

// Set is a named set. Elements are keys in canonical nft text (see Element).
//
// A Dynamic set is filled from the packet path by rules with an Update
// (Service session affinity: "update @aff { ip saddr }"), its elements
// expiring after Timeout (0: never). Meridian never lists, diffs or deletes
// the elements of a Dynamic set: Plan ignores its Elements and Dump returns
// none, so a sync keeps what the kernel learned. Changing Dynamic or
// Timeout recreates the set (and so forgets its elements).
type Set struct {
	Name     string
	KeyType  []DataType // more than one means a concatenation
	Interval bool       // elements are prefixes (single ipv4_addr keys only)
	Dynamic  bool
	Timeout  time.Duration // element lifetime, whole milliseconds
	Elements []Element
}

// flagsString is the set's flags as nft prints them, "" for none.
func (s Set) flagsString() string {
	var f []string
	if s.Dynamic {
		f = append(f, "dynamic")
	}
	if s.Interval {
		f = append(f, "interval")
	}
	if s.Timeout > 0 {
		f = append(f, "timeout")
	}
	return strings.Join(f, ",")
}

// timeoutString spells a timeout in seconds ("10800s"), or milliseconds
// when it is not whole seconds; nft reads both.
func timeoutString(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return fmt.Sprintf("%dms", d/time.Millisecond)
}

// Map is a named map: DataType TypeVerdict makes it a verdict map (values
// like "goto svc-x"), anything else a data map (values like "10.0.0.1 . 80").
//
// A Dynamic data map is filled from the packet path by a DNAT with a
// Record (Service session affinity: the endpoint each client was sent
// to), its elements expiring after Timeout. Like a Dynamic set, its
// elements are never listed, diffed or deleted by Meridian, and changing
// Dynamic or Timeout recreates it.
type Map struct {
	Name     string
	KeyType  []DataType
	DataType []DataType
	Dynamic  bool
	Timeout  time.Duration // element lifetime, whole milliseconds
	Elements []Element
}

// flagsString is the map's flags as nft prints them, "" for none.
func (m Map) flagsString() string { return Set{Dynamic: m.Dynamic, Timeout: m.Timeout}.flagsString() }

// Element is one set or map element in canonical nft text: the key parts
// joined by " . " ("10.96.0.10 . tcp . 80"), addresses in dotted quad,
// protocols by name, ports and marks in decimal, interval keys as prefixes
// ("10.0.0.0/8"); Value is empty for sets, a verdict ("goto svc-x", "drop")
// or data ("10.244.1.5 . 8080") for maps. Dump returns this form, so callers
// that build it the same way get stable diffs.
type Element struct {
	Key   string
	Value string
}

func (e Element) String() string {
	if e.Value == "" {
		return e.Key
	}
	return e.Key + " : " + e.Value
}

func typeString(ts []DataType) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = string(t)
	}
	return strings.Join(s, " . ")
}

func (c Chain) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\tchain %s {\n", c.Name)
	if c.Base() {
		fmt.Fprintf(&b, "\t\ttype %s hook %s priority %s; policy accept;\n", c.Type, c.Hook, priorityString(c.Hook, c.Priority))
	}
	for _, r := range c.Rules {
		fmt.Fprintf(&b, "\t\t%s\n", r)
	}
	b.WriteString("\t}\n")
	return b.String()
}

// priorityString spells a priority as nft prints it: by name where nft
// names it for the hook (dstnat only at prerouting, srcnat only at
// postrouting), as a number elsewhere.
func priorityString(hook string, p int) string {
	for _, n := range []struct {
		name string
		v    int
		ok   bool
	}{
		{"dstnat", PriorityDstNAT, hook == HookPrerouting},
		{"filter", PriorityFilter, true},
		{"srcnat", PrioritySrcNAT, hook == HookPostrouting},
	} {
		if !n.ok {
			continue
		}
		switch d := p - n.v; {
		case d == 0:
			return n.name
		case d > 0 && d <= 10:
			return fmt.Sprintf("%s + %d", n.name, d)
		case d < 0 && d >= -10:
			return fmt.Sprintf("%s - %d", n.name, -d)
		}
	}
	return fmt.Sprint(p)
}

func elementsString(es []Element) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.String()
	}
	slices.Sort(s)
	return strings.Join(s, ", ")
}

func (s Set) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", s.Name, typeString(s.KeyType))
	if f := s.flagsString(); f != "" {
		fmt.Fprintf(&b, "\t\tflags %s\n", f)
	}
	if s.Timeout > 0 {
		fmt.Fprintf(&b, "\t\ttimeout %s\n", timeoutString(s.Timeout))
	}
	if len(s.Elements) > 0 {
		fmt.Fprintf(&b, "\t\telements = { %s }\n", elementsString(s.Elements))
	}
	b.WriteString("\t}\n")
	return b.String()
}

func (m Map) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\tmap %s {\n\t\ttype %s : %s\n", m.Name, typeString(m.KeyType), typeString(m.DataType))
	if f := m.flagsString(); f != "" {
		fmt.Fprintf(&b, "\t\tflags %s\n", f)
	}
	if m.Timeout > 0 {
		fmt.Fprintf(&b, "\t\ttimeout %s\n", timeoutString(m.Timeout))
	}
	if len(m.Elements) > 0 {
		fmt.Fprintf(&b, "\t\telements = { %s }\n", elementsString(m.Elements))
	}
	b.WriteString("\t}\n")
	return b.String()
}

// String renders the table as `nft list table inet meridian` lays it out
// (sets, then maps, then chains, each sorted by name), for goldens and
// debug logs.
func (t Table) String() string {
	t = t.Sorted()
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", TableFamily, TableName)
	for _, s := range t.Sets {
		b.WriteString(s.String())
	}
	for _, m := range t.Maps {
		b.WriteString(m.String())
	}
	for _, c := range t.Chains {
		b.WriteString(c.String())
	}
	b.WriteString("}\n")
	return b.String()
}

// Sorted returns a deep copy with objects sorted by name and elements sorted
// by key, the canonical form used for comparisons.
func (t Table) Sorted() Table {
	out := Table{
		Chains: make([]Chain, len(t.Chains)),
		Sets:   make([]Set, len(t.Sets)),
		Maps:   make([]Map, len(t.Maps)),
	}
	for i, c := range t.Chains {
		c.Rules = slices.Clone(c.Rules)
		for j := range c.Rules {
			c.Rules[j] = c.Rules[j].clone()
		}
		out.Chains[i] = c
	}
	for i, s := range t.Sets {
		s.KeyType = slices.Clone(s.KeyType)
		s.Elements = sortedElements(s.Elements)
		out.Sets[i] = s
	}
	for i, m := range t.Maps {
		m.KeyType = slices.Clone(m.KeyType)
		m.DataType = slices.Clone(m.DataType)
		m.Elements = sortedElements(m.Elements)
		out.Maps[i] = m
	}
	slices.SortFunc(out.Chains, func(a, b Chain) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(out.Sets, func(a, b Set) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(out.Maps, func(a, b Map) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func sortedElements(es []Element) []Element {
	if len(es) == 0 {
		return nil
	}
	es = slices.Clone(es)
	slices.SortFunc(es, func(a, b Element) int { return strings.Compare(a.Key, b.Key) })
	return es
}
