package bgp

import (
	"slices"
	"testing"
)

func TestParseCommunity(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Community
		err  bool
	}{
		{in: "65000:100", want: Community{A: 65000, B: 100}},
		{in: "0:0", want: Community{}},
		{in: "65535:65281", want: Community{A: 65535, B: 65281}}, // NO_EXPORT (RFC 1997)
		{in: "64512:1:2", want: Community{Large: true, A: 64512, B: 1, C: 2}},
		{in: "4294967295:4294967295:4294967295", want: Community{Large: true, A: 4294967295, B: 4294967295, C: 4294967295}},
		{in: "65536:1", err: true}, // 4-octet ASN needs a large community
		{in: "1:65536", err: true},
		{in: "4294967296:1:1", err: true},
		{in: "1", err: true},
		{in: "1:2:3:4", err: true},
		{in: "a:b", err: true},
		{in: "+1:2", err: true},
		{in: "1:", err: true},
		{in: "", err: true},
	} {
		got, err := ParseCommunity(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("ParseCommunity(%q): err %v, want error %v", tc.in, err, tc.err)
			continue
		}
		if err != nil {
			continue
		}
		if got != tc.want {
			t.Errorf("ParseCommunity(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if got.String() != tc.in {
			t.Errorf("ParseCommunity(%q).String() = %q", tc.in, got.String())
		}
		if !got.Valid() {
			t.Errorf("ParseCommunity(%q) is not Valid", tc.in)
		}
	}
}

func TestStandardCommunityValue(t *testing.T) {
	c := Community{A: 65000, B: 100}
	if v := c.Value(); v != 65000<<16|100 {
		t.Fatalf("Value = %#x", v)
	}
	if back := StandardCommunity(c.Value()); back != c {
		t.Fatalf("StandardCommunity(Value) = %+v", back)
	}
	if (Community{A: 1 << 16}).Valid() || (Community{B: 1, C: 1}).Valid() {
		t.Fatal("standard community with out-of-range parts is Valid")
	}
}

func TestSortCommunities(t *testing.T) {
	in := []Community{
		{Large: true, A: 1, B: 2, C: 3},
		{A: 65000, B: 200},
		{A: 65000, B: 100},
		{Large: true, A: 1, B: 2, C: 3},
		{A: 1, B: 9},
	}
	want := []Community{{A: 1, B: 9}, {A: 65000, B: 100}, {A: 65000, B: 200}, {Large: true, A: 1, B: 2, C: 3}}
	if got := SortCommunities(in); !slices.Equal(got, want) {
		t.Fatalf("SortCommunities = %v, want %v", got, want)
	}
}

func TestAdvertisementEqual(t *testing.T) {
	lp1, lp2, lp3 := uint32(100), uint32(100), uint32(200)
	base := Advertisement{Communities: []Community{{A: 1, B: 2}}, LocalPref: &lp1}
	same := Advertisement{Communities: []Community{{A: 1, B: 2}}, LocalPref: &lp2}
	if !base.Equal(same) {
		t.Error("equal advertisements (distinct pointers and slices) differ")
	}
	for name, other := range map[string]Advertisement{
		"local pref":    {Communities: []Community{{A: 1, B: 2}}, LocalPref: &lp3},
		"no local pref": {Communities: []Community{{A: 1, B: 2}}},
		"communities":   {Communities: []Community{{A: 1, B: 3}}, LocalPref: &lp1},
		"none":          {LocalPref: &lp1},
	} {
		if base.Equal(other) || other.Equal(base) {
			t.Errorf("%s: advertisements compare equal", name)
		}
	}
}

// Whatever the string, ParseCommunity either refuses it or returns a
// community that fits its attribute and prints back to a string that
// parses to the same community.
func FuzzParseCommunity(f *testing.F) {
	for _, s := range []string{"65000:100", "64512:1:2", "65536:1", "1:2:3:4", "007:8", "4294967295:0:0", ":", "+1:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCommunity(s)
		if err != nil {
			return
		}
		if !c.Valid() {
			t.Fatalf("ParseCommunity(%q) = %+v is not Valid", s, c)
		}
		back, err := ParseCommunity(c.String())
		if err != nil || back != c {
			t.Fatalf("ParseCommunity(%q) = %+v prints as %q, which parses to %+v, %v", s, c, c.String(), back, err)
		}
		if !c.Large && StandardCommunity(c.Value()) != c {
			t.Fatalf("%+v does not survive its COMMUNITIES value %#x", c, c.Value())
		}
	})
}
