package policynft

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	"github.com/meridian-net/meridian/daemon/nft"
)

// DropCount is what one pod chain counted: the packets its last rule
// dropped (default deny, or fail closed) and the hits of each allow rule.
type DropCount struct {
	Chain     string
	Pod       string // namespace/name ("~" marks a name cut for length)
	Direction string // Ingress or Egress
	// FailedClosed is set when the chain is a fail-closed drop: the pod's
	// rules could not be programmed.
	FailedClosed bool
	// Policies are the isolating policies (namespace/name) the drop is
	// attributed to; MorePolicies counts those the rule comment had no room
	// for.
	Policies       []string
	MorePolicies   int
	Packets, Bytes uint64 // dropped
	Allowed        []RuleHits
}

// RuleHits is what one allow rule of a policy let through for one pod,
// summed over the nft rules it renders to (one per peer and port).
type RuleHits struct {
	Policy         string // namespace/name
	Index          int
	Packets, Bytes uint64
}

// Drops reads the per-pod chains' counters (as kernel.Conn.Counters returns
// them for the merged table) back into per-pod drop and allow counts,
// sorted by pod and direction. Counters of other chains are ignored.
func Drops(counters []nft.RuleCounter) []DropCount {
	byChain := map[string]*DropCount{}
	var out []*DropCount
	get := func(chain string) *DropCount {
		d, ok := byChain[chain]
		if !ok {
			d = &DropCount{Chain: chain}
			switch {
			case strings.HasPrefix(chain, ChainIngressPrefix):
				d.Direction = Ingress
			case strings.HasPrefix(chain, ChainEgressPrefix):
				d.Direction = Egress
			}
			byChain[chain] = d
			out = append(out, d)
		}
		return d
	}
	for _, c := range counters {
		if !strings.HasPrefix(c.Chain, ChainIngressPrefix) && !strings.HasPrefix(c.Chain, ChainEgressPrefix) {
			continue
		}
		d := get(c.Chain)
		f := strings.Fields(c.Comment)
		switch {
		case len(f) >= 3 && f[1] == d.Direction && f[2] == "drop:":
			d.Pod, d.Packets, d.Bytes = f[0], d.Packets+c.Packets, d.Bytes+c.Bytes
			ns, _, _ := strings.Cut(f[0], "/")
			for _, p := range f[3:] {
				if n, ok := strings.CutPrefix(p, "+"); ok {
					d.MorePolicies, _ = strconv.Atoi(n)
					continue
				}
				d.Policies = append(d.Policies, ns+"/"+p)
			}
		case len(f) == 4 && f[1] == d.Direction && f[2] == "failed" && f[3] == "closed":
			d.Pod, d.FailedClosed = f[0], true
			d.Packets, d.Bytes = d.Packets+c.Packets, d.Bytes+c.Bytes
		case len(f) == 2:
			dir, idx, ok := strings.Cut(strings.TrimSuffix(f[1], "]"), "[")
			i, err := strconv.Atoi(idx)
			if !ok || err != nil || dir != d.Direction {
				continue
			}
			hit := slices.IndexFunc(d.Allowed, func(h RuleHits) bool { return h.Policy == f[0] && h.Index == i })
			if hit < 0 {
				d.Allowed = append(d.Allowed, RuleHits{Policy: f[0], Index: i})
				hit = len(d.Allowed) - 1
			}
			d.Allowed[hit].Packets += c.Packets
			d.Allowed[hit].Bytes += c.Bytes
		}
	}
	res := make([]DropCount, 0, len(out))
	for _, d := range out {
		slices.SortFunc(d.Allowed, func(a, b RuleHits) int {
			return cmp.Or(cmp.Compare(a.Policy, b.Policy), cmp.Compare(a.Index, b.Index))
		})
		res = append(res, *d)
	}
	slices.SortFunc(res, func(a, b DropCount) int {
		return cmp.Or(cmp.Compare(a.Pod, b.Pod), cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Chain, b.Chain))
	})
	return res
}

// PolicyCount is one policy's share of the counters on this node.
type PolicyCount struct {
	Policy string // namespace/name
	// Dropped is what the default-deny rules of the pods the policy
	// isolates dropped. A pod isolated by several policies has its drops
	// counted for each of them: nothing tells which one "meant" the drop.
	DroppedPackets, DroppedBytes uint64
	// Allowed is what the policy's own allow rules let through.
	AllowedPackets, AllowedBytes uint64
}

// ByPolicy sums DropCounts per policy, sorted by policy.
func ByPolicy(ds []DropCount) []PolicyCount {
	m := map[string]*PolicyCount{}
	get := func(p string) *PolicyCount {
		if m[p] == nil {
			m[p] = &PolicyCount{Policy: p}
		}
		return m[p]
	}
	for _, d := range ds {
		for _, p := range d.Policies {
			pc := get(p)
			pc.DroppedPackets += d.Packets
			pc.DroppedBytes += d.Bytes
		}
		for _, h := range d.Allowed {
			pc := get(h.Policy)
			pc.AllowedPackets += h.Packets
			pc.AllowedBytes += h.Bytes
		}
	}
	out := make([]PolicyCount, 0, len(m))
	for _, pc := range m {
		out = append(out, *pc)
	}
	slices.SortFunc(out, func(a, b PolicyCount) int { return cmp.Compare(a.Policy, b.Policy) })
	return out
}
