package bench

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/integration/lab"
)

func TestBenchPrefixes(t *testing.T) {
	a, err := BenchPrefixes(100_000)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := BenchPrefixes(100_000)
	if !slices.Equal(a, b) {
		t.Fatal("two calls gave different prefixes")
	}
	small, _ := BenchPrefixes(10_000)
	if !slices.Equal(small, a[:10_000]) {
		t.Fatal("the first 10k are not the start of the 100k: the injector adds only the difference")
	}
	if a[0] != netip.MustParsePrefix("100.64.0.0/28") || a[1] != netip.MustParsePrefix("100.64.0.16/28") || a[16] != netip.MustParsePrefix("100.64.1.0/28") {
		t.Fatalf("first prefixes %v %v %v", a[0], a[1], a[16])
	}
	seen := map[netip.Prefix]bool{}
	for _, p := range a {
		if seen[p] {
			t.Fatalf("%s twice", p)
		}
		seen[p] = true
		if p.Bits() != BGPBenchPrefixBits || p.Masked() != p || !BGPBenchRange.Contains(p.Addr()) {
			t.Fatalf("%s is not a /%d inside %s", p, BGPBenchPrefixBits, BGPBenchRange)
		}
	}
	all, err := BenchPrefixes(MaxBenchPrefixes)
	if err != nil {
		t.Fatal(err)
	}
	if last := all[len(all)-1]; last != netip.MustParsePrefix("100.127.255.240/28") {
		t.Fatalf("last prefix %s", last)
	}
	if _, err := BenchPrefixes(MaxBenchPrefixes + 1); err == nil {
		t.Fatal("more prefixes than the range holds: no error")
	}
	if _, err := BenchPrefixes(-1); err == nil {
		t.Fatal("negative count: no error")
	}
}

// TestBenchPrefixesAccepted runs the prefixes through meridiand's import
// policy as the bench meridiand has it (the bench range as a second
// cluster CIDR, the lab's nodes and pod CIDRs): every one is accepted,
// so a count short of N would be meridiand's, not the generator's.
func TestBenchPrefixesAccepted(t *testing.T) {
	owners := map[netip.Prefix]netip.Addr{}
	var nodes []netip.Addr
	for i := 1; i <= 3; i++ {
		a := netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)})
		owners[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)] = a
		nodes = append(nodes, a)
	}
	nodes = append(nodes, bgpNodeNet.addr)
	pol := bgp.ImportPolicy{
		Allowed:       []netip.Prefix{lab.ClusterCIDR, BGPBenchRange},
		OwnPodCIDRs:   []netip.Prefix{netip.MustParsePrefix("10.244.9.0/24")},
		PodCIDROwners: owners,
		NodeAddresses: nodes,
		FabricPeers:   []netip.Addr{bgpInjectorNet.addr},
	}
	ps, _ := BenchPrefixes(100_000)
	for _, p := range ps {
		if why := pol.Check(bgp.Path{Prefix: p, NextHop: bgpInjectorNet.addr, PeerAddress: bgpInjectorNet.addr}); why != "" {
			t.Fatalf("%s refused: %s", p, why)
		}
	}
	// And the range collides with nothing the lab uses.
	for _, used := range []netip.Prefix{lab.LabSubnet, lab.ClusterCIDR, netip.MustParsePrefix("10.96.0.0/12")} {
		if used.Overlaps(BGPBenchRange) {
			t.Fatalf("%s overlaps the lab's %s", BGPBenchRange, used)
		}
	}
	for _, s := range []speakerNet{bgpNodeNet, bgpBIRDNet, bgpInjectorNet} {
		if !lab.LabSubnet.Contains(s.addr) {
			t.Fatalf("%s at %s is not on the lab segment %s", s.name, s.addr, lab.LabSubnet)
		}
	}
}

func TestAcceptedCoversBench(t *testing.T) {
	for _, tc := range []struct {
		accepted []string
		ok       bool
	}{
		{nil, true},
		{[]string{"100.64.0.0/10"}, true},
		{[]string{"10.244.0.0/16", "100.0.0.0/8"}, true},
		{[]string{"10.244.0.0/16"}, false},
		{[]string{"100.64.0.0/11"}, false}, // half the range
		{[]string{"garbage"}, false},
	} {
		if err := AcceptedCoversBench(tc.accepted); (err == nil) != tc.ok {
			t.Errorf("AcceptedCoversBench(%v) = %v, want ok=%v", tc.accepted, err, tc.ok)
		}
	}
}

func TestBGPFigures(t *testing.T) {
	runs := []BGPRun{
		{Speaker: SpeakerBIRD, Prefixes: 100_000, Install: 4, PeakRSS: 40},
		{Speaker: SpeakerMeridiand, Prefixes: 10_000, Install: 1, PeakRSS: 60},
		{Speaker: SpeakerBIRD, Prefixes: 10_000, Install: 0.5, PeakRSS: 10},
		{Speaker: SpeakerMeridiand, Prefixes: 100_000, Install: 6, PeakRSS: 200},
		// No BIRD run at this size: no figure.
		{Speaker: SpeakerMeridiand, Prefixes: 2500, Install: 1, PeakRSS: 50},
	}
	withdraws := []WithdrawSample{{Nodes: 30, BIRD: 10}, {Nodes: 10, BIRD: 20}, {Nodes: 20, BIRD: 40}}
	figs := BGPFigures(runs, withdraws)
	if len(figs) != 5 {
		t.Fatalf("%d figures, want 5: %+v", len(figs), figs)
	}
	want := []struct {
		name                   string
		value, baseline, ratio float64
	}{
		{"10k learned prefixes in the FIB (meridiand)", 1, 0.5, 2},
		{"peak RSS, 10k learned prefixes (meridiand)", 60, 10, 6},
		{"100k learned prefixes in the FIB (meridiand)", 6, 4, 1.5},
		{"peak RSS, 100k learned prefixes (meridiand)", 200, 40, 5},
		{"pod CIDR withdrawn to route gone on the other nodes, median", 20, 20, 1},
	}
	for i, w := range want {
		f := figs[i]
		if f.Name != w.name || f.Value != w.value || f.Baseline != w.baseline || f.Ratio != w.ratio || f.Against == "" {
			t.Errorf("figure %d = %+v, want %+v", i, f, w)
		}
	}
	if !strings.Contains(figs[4].Note, "n=3") {
		t.Errorf("withdraw note %q does not say how many samples", figs[4].Note)
	}
	if got := BGPFigures(runs, nil); len(got) != 4 {
		t.Errorf("without withdraw samples: %d figures, want 4", len(got))
	}
}

func TestBIRDConfig(t *testing.T) {
	conf := BIRDConfig(netip.MustParseAddr("198.18.0.244"), netip.MustParseAddr("198.18.0.245"), injectorASN, BGPBenchRange)
	for _, want := range []string{
		"router id 198.18.0.244;",
		"local 198.18.0.244 as 64513;",
		"neighbor 198.18.0.245 as 64600;",
		"import where net ~ [ 100.64.0.0/10{10,32} ];",
		"ipv4 { import none; export all; };",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("BIRD configuration lacks %q:\n%s", want, conf)
		}
	}
}
