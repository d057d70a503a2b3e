package policy

import (
	"net/netip"
	"slices"
)

// lastAddr is the highest address of p (p must be masked).
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range a {
		// Set every bit at position >= bits.
		lo := i * 8
		switch {
		case lo >= bits:
			a[i] = 0xff
		case lo+8 > bits:
			a[i] |= 0xff >> (bits - lo)
		}
	}
	out, _ := netip.AddrFromSlice(a)
	return out
}

// subtractRanges is cidr minus excepts as sorted, non-overlapping inclusive
// ranges. Excepts must be masked, of cidr's family and inside it (the
// compiler validates that first); they may overlap each other.
func subtractRanges(cidr netip.Prefix, excepts []netip.Prefix) []Range {
	holes := make([]Range, 0, len(excepts))
	for _, e := range excepts {
		holes = append(holes, Range{From: e.Addr(), To: lastAddr(e)})
	}
	slices.SortFunc(holes, func(a, b Range) int { return a.From.Compare(b.From) })

	var out []Range
	next := cidr.Addr() // lowest address not yet emitted or excluded
	end := lastAddr(cidr)
	done := false
	for _, h := range holes {
		if done {
			break
		}
		if h.To.Less(next) {
			continue // inside an earlier, larger hole
		}
		if next.Less(h.From) {
			out = append(out, Range{From: next, To: h.From.Prev()})
		}
		if h.To == end {
			done = true
			break
		}
		next = h.To.Next()
	}
	if !done {
		out = append(out, Range{From: next, To: end})
	}
	return out
}
