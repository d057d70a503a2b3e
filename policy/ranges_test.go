package policy

import (
	"net/netip"
	"slices"
	"testing"
)

func TestSubtractRanges(t *testing.T) {
	r := func(a, b string) Range { return Range{netip.MustParseAddr(a), netip.MustParseAddr(b)} }
	cases := []struct {
		name   string
		cidr   string
		except []string
		want   []Range
	}{
		{"no except", "10.0.0.0/24", nil, []Range{r("10.0.0.0", "10.0.0.255")}},
		{"hole in the middle", "10.0.0.0/24", []string{"10.0.0.16/28"}, []Range{r("10.0.0.0", "10.0.0.15"), r("10.0.0.32", "10.0.0.255")}},
		{"hole at both ends", "10.0.0.0/24", []string{"10.0.0.0/25", "10.0.0.254/31"}, []Range{r("10.0.0.128", "10.0.0.253")}},
		{"nested and overlapping holes", "10.0.0.0/16", []string{"10.0.4.0/22", "10.0.5.0/24", "10.0.6.0/23"}, []Range{r("10.0.0.0", "10.0.3.255"), r("10.0.8.0", "10.0.255.255")}},
		{"adjacent holes", "10.0.0.0/24", []string{"10.0.0.0/26", "10.0.0.64/26", "10.0.0.192/26"}, []Range{r("10.0.0.128", "10.0.0.191")}},
		{"everything excepted", "10.0.0.0/24", []string{"10.0.0.0/25", "10.0.0.128/25"}, nil},
		{"whole IPv4 space", "0.0.0.0/0", []string{"10.0.0.0/8"}, []Range{r("0.0.0.0", "9.255.255.255"), r("11.0.0.0", "255.255.255.255")}},
		{"IPv6", "2001:db8::/32", []string{"2001:db8::/48"}, []Range{r("2001:db8:1::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")}},
		{"host route", "192.0.2.1/32", nil, []Range{r("192.0.2.1", "192.0.2.1")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ex []netip.Prefix
			for _, e := range tc.except {
				ex = append(ex, netip.MustParsePrefix(e))
			}
			got := subtractRanges(netip.MustParsePrefix(tc.cidr), ex)
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
