package nft

import (
	"fmt"
	"slices"
	"strings"
)

// Merge unions tables rendered separately into the one table Meridian
// owns (services and policy each render their part). Objects are matched
// by name: the same chain, set or map defined identically in two parts is
// kept once; defined differently (or a set in one part and a map of the
// same name in another) is an error naming it, since one of the renderers
// would silently lose its object.
func Merge(parts ...Table) (Table, error) {
	var out Table
	chains := map[string]Chain{}
	sets := map[string]Set{}
	maps := map[string]Map{}
	// Parts need no sorting of their own: sets and maps compare by their
	// text, which lists elements sorted. Only the object lists are sorted
	// at the end; elements and rules are shared with the parts, not
	// copied (Plan finds elements by key, in any order).
	for _, p := range parts {
		for _, c := range p.Chains {
			if old, ok := chains[c.Name]; ok {
				if !chainsEqual(old, c) {
					return Table{}, fmt.Errorf("merge nft tables: chain %s defined twice, differently", c.Name)
				}
				continue
			}
			chains[c.Name] = c
			out.Chains = append(out.Chains, c)
		}
		for _, s := range p.Sets {
			if _, ok := maps[s.Name]; ok {
				return Table{}, fmt.Errorf("merge nft tables: %s is both a set and a map", s.Name)
			}
			if old, ok := sets[s.Name]; ok {
				if old.String() != s.String() {
					return Table{}, fmt.Errorf("merge nft tables: set %s defined twice, differently", s.Name)
				}
				continue
			}
			sets[s.Name] = s
			out.Sets = append(out.Sets, s)
		}
		for _, m := range p.Maps {
			if _, ok := sets[m.Name]; ok {
				return Table{}, fmt.Errorf("merge nft tables: %s is both a set and a map", m.Name)
			}
			if old, ok := maps[m.Name]; ok {
				if old.String() != m.String() {
					return Table{}, fmt.Errorf("merge nft tables: map %s defined twice, differently", m.Name)
				}
				continue
			}
			maps[m.Name] = m
			out.Maps = append(out.Maps, m)
		}
	}
	slices.SortFunc(out.Chains, func(a, b Chain) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(out.Sets, func(a, b Set) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(out.Maps, func(a, b Map) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// chainsEqual compares hooks and rules, comments included.
func chainsEqual(a, b Chain) bool {
	return a.Type == b.Type && a.Hook == b.Hook && a.Priority == b.Priority &&
		slices.EqualFunc(a.Rules, b.Rules, func(x, y Rule) bool { return x.String() == y.String() })
}
