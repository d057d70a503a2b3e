package policynft

import (
	"slices"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/policy"
)

// Suspects lists the pods (namespace/name, sorted) whose rendered chains
// are missing from applied or differ from it: the only pods whose
// enforcement a transaction from applied to Render(m) rewrites, so the only
// ones whose new rules can be what the kernel refused.
//
// How the dataplane uses it when the kernel refuses a sync (a transaction
// is one netlink batch, so the refused one left the table as it was):
//
//	desired := Render(m)
//	if err := sync(merge(services, desired)); err != nil {
//		fb := RenderWith(m, RenderOptions{FailClosed: Suspects(m, lastApplied)})
//		err = sync(merge(services, fb)) // the suspects drop everything; every other
//		                                // pod's chain is unchanged, so Plan leaves it alone
//	}
//
// where lastApplied is the policy fragment of the last table the kernel
// accepted. If the fallback is refused too (the failure lies in a set
// element or outside the pod chains), the table stays at the last accepted
// state and the next sync tries again. Suspects over-approximates: a pod
// whose chain changed in the same sync for an unrelated reason fails closed
// with the culprit until a sync succeeds.
func Suspects(m *policy.Model, applied nft.Table) []string {
	have := map[string]nft.Chain{}
	for _, c := range applied.Chains {
		have[c.Name] = c
	}
	var out []string
	want := Render(m)
	wantChains := map[string]nft.Chain{}
	for _, c := range want.Chains {
		wantChains[c.Name] = c
	}
	for i := range m.Pods {
		p := &m.Pods[i]
		for _, dir := range []string{Ingress, Egress} {
			c, ok := wantChains[PodChain(p.Key(), dir)]
			if !ok {
				continue
			}
			old, ok := have[c.Name]
			if !ok || !slices.EqualFunc(old.Rules, c.Rules, nft.Rule.Equal) {
				out = append(out, p.Key())
				break
			}
		}
	}
	slices.Sort(out)
	return out
}
