package bgp

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Community is a BGP community a node attaches to the paths it originates:
// a standard community (RFC 1997, "ASN:value", two 16-bit halves carried
// in the COMMUNITIES attribute) or, with Large, a large community (RFC
// 8092, "global:local1:local2", three 32-bit parts carried in
// LARGE_COMMUNITY), which holds a 4-octet ASN (RFC 6793) that the
// standard form cannot.
type Community struct {
	Large bool
	// A and B are the two halves of a standard community (each at most
	// 65535); A, B and C the global administrator and the two local data
	// parts of a large one.
	A, B, C uint32
}

// ParseCommunity parses "65000:100" (standard) or "4200000000:1:2" (large).
func ParseCommunity(s string) (Community, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 2 && len(parts) != 3 {
		return Community{}, fmt.Errorf("community %q is neither ASN:value (RFC 1997) nor global:local1:local2 (RFC 8092)", s)
	}
	var v [3]uint32
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 32)
		switch {
		case errors.Is(err, strconv.ErrRange):
			return Community{}, fmt.Errorf("community %q: part %q is above 4294967295", s, p)
		case err != nil:
			return Community{}, fmt.Errorf("community %q: part %q is not a decimal number", s, p)
		}
		v[i] = uint32(n)
	}
	c := Community{Large: len(parts) == 3, A: v[0], B: v[1], C: v[2]}
	if !c.Large && (c.A > 0xffff || c.B > 0xffff) {
		return Community{}, fmt.Errorf("community %q: a standard community has two parts of at most 65535 (use global:local1:local2 for a 4-octet ASN)", s)
	}
	return c, nil
}

// StandardCommunity is the community of a COMMUNITIES attribute value.
func StandardCommunity(v uint32) Community {
	return Community{A: v >> 16, B: v & 0xffff}
}

// Value is the 32-bit COMMUNITIES value of a standard community.
func (c Community) Value() uint32 { return c.A<<16 | c.B&0xffff }

// Valid reports whether c can be put on the wire.
func (c Community) Valid() bool {
	return c.Large || (c.A <= 0xffff && c.B <= 0xffff && c.C == 0)
}

func (c Community) String() string {
	if c.Large {
		return fmt.Sprintf("%d:%d:%d", c.A, c.B, c.C)
	}
	return fmt.Sprintf("%d:%d", c.A, c.B)
}

// Compare orders standard communities before large ones, then by parts.
func (c Community) Compare(o Community) int {
	if c.Large != o.Large {
		if c.Large {
			return 1
		}
		return -1
	}
	return cmp.Or(cmp.Compare(c.A, o.A), cmp.Compare(c.B, o.B), cmp.Compare(c.C, o.C))
}

// SortCommunities sorts and deduplicates cs in place, returning the
// canonical list: the order a set of communities is compared and shown in.
func SortCommunities(cs []Community) []Community {
	slices.SortFunc(cs, Community.Compare)
	return slices.Compact(cs)
}
