package bench

import (
	"fmt"
	"net/netip"
	"slices"
)

// The BGP benchmark (issue #4 §6): a GoBGP injector announces N prefixes to
// one meridiand and, in the same run, to BIRD 2 with its kernel protocol;
// each is timed from its session reaching Established at the injector
// until its namespace's main table holds all N, and its peak RSS is read.
// Separately, a bench node's meridiand withdraws its pod CIDR and the time
// until the route is gone is measured on the lab's nodes and on a BIRD that
// peers with the same node.

// BGPBenchRange holds the injected prefixes: shared address space (RFC
// 6598), used nowhere in the lab (nodes 198.18.0.0/24, pods 10.244.0.0/16,
// Services 10.96.0.0/12). The bench meridiand gets it as a second cluster
// CIDR, which puts it in its allowed set without touching the cluster's
// BGPConfiguration.
var BGPBenchRange = netip.MustParsePrefix("100.64.0.0/10")

// BGPBenchPrefixBits is the length of each injected prefix: /28s, so that
// 100k fit in the range (a /10 holds 262144 of them).
const BGPBenchPrefixBits = 28

// MaxBenchPrefixes is how many prefixes BenchPrefixes can return.
const MaxBenchPrefixes = 1 << (BGPBenchPrefixBits - 10)

// BenchPrefixes returns the first n /28s of BGPBenchRange in address order:
// the same n prefixes for every speaker and every run.
func BenchPrefixes(n int) ([]netip.Prefix, error) {
	if n < 0 || n > MaxBenchPrefixes {
		return nil, fmt.Errorf("%d prefixes: between 0 and %d fit in %s as /%d", n, MaxBenchPrefixes, BGPBenchRange, BGPBenchPrefixBits)
	}
	base := BGPBenchRange.Addr().As4()
	start := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	step := uint32(1) << (32 - BGPBenchPrefixBits)
	out := make([]netip.Prefix, n)
	for i := range n {
		a := start + uint32(i)*step
		out[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), BGPBenchPrefixBits)
	}
	return out, nil
}

// Speakers as BGPRun and the figures name them.
const (
	SpeakerMeridiand = "meridiand"
	SpeakerBIRD      = "bird"
)

// BGPRun is what one speaker showed learning and installing N prefixes.
type BGPRun struct {
	Speaker  string `json:"speaker"`
	Prefixes int    `json:"prefixes"`
	// Established is the time from the speaker's start to its session
	// being Established at the injector (not part of Install).
	Established float64 `json:"established_s"`
	// Install is the time from Established until the main table of the
	// speaker's namespace held all N prefixes.
	Install float64 `json:"install_s"`
	// PeakRSS is the process's VmHWM once all N were installed.
	PeakRSS float64 `json:"peak_rss_mib"`
}

// WithdrawSample is one withdrawal of the bench node's pod CIDR: the time
// from the SIGTERM of its meridiand until the route was gone on each
// receiver, in milliseconds.
type WithdrawSample struct {
	// Nodes is the slowest of the lab nodes (their meridiands).
	Nodes float64 `json:"nodes_ms"`
	// PerNode is each lab node's time.
	PerNode map[string]float64 `json:"per_node_ms"`
	// BIRD is BIRD's kernel protocol removing the same route.
	BIRD float64 `json:"bird_ms"`
}

// BGPFigures turns runs and withdraw samples into figures: meridiand
// against BIRD at each prefix count, and the withdraw times.
func BGPFigures(runs []BGPRun, withdraws []WithdrawSample) []Figure {
	by := map[string]map[int]BGPRun{}
	var sizes []int
	for _, r := range runs {
		if by[r.Speaker] == nil {
			by[r.Speaker] = map[int]BGPRun{}
		}
		by[r.Speaker][r.Prefixes] = r
		if !slices.Contains(sizes, r.Prefixes) {
			sizes = append(sizes, r.Prefixes)
		}
	}
	slices.Sort(sizes)
	const against = "BIRD 2 (bgp + kernel protocol)"
	var out []Figure
	for _, n := range sizes {
		m, okM := by[SpeakerMeridiand][n]
		b, okB := by[SpeakerBIRD][n]
		if !okM || !okB {
			continue
		}
		out = append(out,
			Figure{
				Name: fmt.Sprintf("%s learned prefixes in the FIB (meridiand)", prefixCount(n)), Value: m.Install, Unit: "s",
				Against: against, Baseline: b.Install, Ratio: ratio(m.Install, b.Install),
				Note: "session Established at the injector until the netns main table holds all; GoBGP injector, paths loaded before the session",
			},
			Figure{
				Name: fmt.Sprintf("peak RSS, %s learned prefixes (meridiand)", prefixCount(n)), Value: m.PeakRSS, Unit: "MiB",
				Against: against, Baseline: b.PeakRSS, Ratio: ratio(m.PeakRSS, b.PeakRSS),
				Note: "VmHWM once all prefixes were installed",
			},
		)
	}
	if len(withdraws) > 0 {
		var nodes, bird []float64
		for _, w := range withdraws {
			nodes = append(nodes, w.Nodes)
			bird = append(bird, w.BIRD)
		}
		out = append(out, Figure{
			Name: "pod CIDR withdrawn to route gone on the other nodes, median", Value: medianF(nodes), Unit: "ms",
			Against: "BIRD kernel protocol, same withdrawal", Baseline: medianF(bird), Ratio: ratio(medianF(nodes), medianF(bird)),
			Note: fmt.Sprintf("SIGTERM of the node's meridiand (--withdraw-on-stop) until the slowest lab node's kernel lost the route; n=%d", len(withdraws)),
		})
	}
	return out
}

// prefixCount prints a prefix count the way the flags take it: 100k, 10k, 2500.
func prefixCount(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}
