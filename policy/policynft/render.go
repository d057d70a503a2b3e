package policynft

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/policy"
)

// Names of the fixed objects of the policy fragment. Every name the
// fragment uses starts with Prefix so it never meets the Services
// fragment's names in the merged table.
const (
	Prefix = "pol"

	ChainForward = "pol-filter-forward"
	ChainInput   = "pol-filter-input"
	MapIngress   = "pol-ingress"
	MapEgress    = "pol-egress"
	SetSelf      = "pol-self"

	// Per-pod chains are these prefixes plus 16 hex digits of the hash of
	// the pod's namespace/name.
	ChainIngressPrefix = "pol-in-"
	ChainEgressPrefix  = "pol-out-"
)

// Directions as rule comments and DropCount spell them.
const (
	Ingress = "ingress"
	Egress  = "egress"
)

// maxComment bounds a rule comment: nft refuses longer ones, and the kernel
// keeps at most 256 bytes of userdata per rule, which also hold the rule's
// text (see daemon/nft/kernel).
const maxComment = 128

// RenderOptions changes how Render treats some pods.
type RenderOptions struct {
	// FailClosed lists pods (namespace/name) whose enforcement could not be
	// programmed: each of their isolated directions becomes a chain with a
	// single counted drop, so they lose every allow rule but keep their
	// isolation, and every other pod's chains are rendered as usual.
	FailClosed []string
}

// Render is node m.Node's policy enforcement as a table fragment.
func Render(m *policy.Model) nft.Table {
	return RenderWith(m, RenderOptions{})
}

// RenderWith is Render with options.
func RenderWith(m *policy.Model, opts RenderOptions) nft.Table {
	failed := map[string]bool{}
	for _, k := range opts.FailClosed {
		failed[k] = true
	}
	var t nft.Table
	ingressMap := nft.Map{Name: MapIngress, KeyType: []nft.DataType{nft.TypeIPv4Addr}, DataType: []nft.DataType{nft.TypeVerdict}}
	egressMap := nft.Map{Name: MapEgress, KeyType: []nft.DataType{nft.TypeIPv4Addr}, DataType: []nft.DataType{nft.TypeVerdict}}
	self := nft.Set{Name: SetSelf, KeyType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeIPv4Addr}}
	used := map[string]bool{}
	for i := range m.Pods {
		p := &m.Pods[i]
		v4 := ipv4s(p.IPs)
		if len(v4) == 0 {
			continue
		}
		for _, a := range v4 {
			self.Elements = append(self.Elements, nft.Element{Key: a + " . " + a})
		}
		for _, d := range []struct {
			dir  string
			d    *policy.Direction
			peer nft.Field
			vmap *nft.Map
		}{
			{Ingress, &p.Ingress, nft.IPSaddr, &ingressMap},
			{Egress, &p.Egress, nft.IPDaddr, &egressMap},
		} {
			if !d.d.Isolated {
				continue
			}
			c := podChain(p, d.dir, d.d, d.peer, failed[p.Key()])
			for _, r := range c.Rules {
				for _, m := range r.Match {
					if m.Set != "" {
						used[m.Set] = true
					}
				}
			}
			t.Chains = append(t.Chains, c)
			for _, a := range v4 {
				d.vmap.Elements = append(d.vmap.Elements, nft.Element{Key: a, Value: "jump " + c.Name})
			}
		}
	}

	// Sets only pods that failed closed referred to are left out: nothing
	// would use them, and one of them may be what the kernel refused.
	for _, s := range m.SelectorSets {
		if name := setName(s.Name); used[name] {
			set := nft.Set{Name: name, KeyType: []nft.DataType{nft.TypeIPv4Addr}}
			for _, a := range ipv4s(s.Members) {
				set.Elements = append(set.Elements, nft.Element{Key: a})
			}
			t.Sets = append(t.Sets, set)
		}
	}
	for _, s := range m.BlockSets {
		if name := setName(s.Name); used[name] {
			set := nft.Set{Name: name, KeyType: []nft.DataType{nft.TypeIPv4Addr}, Interval: true}
			for _, r := range s.Ranges {
				for _, pfx := range rangePrefixes(r) {
					set.Elements = append(set.Elements, nft.Element{Key: prefixKey(pfx)})
				}
			}
			t.Sets = append(t.Sets, set)
		}
	}
	for _, s := range m.PortSets {
		if name := setName(s.Name); used[name] {
			set := nft.Set{Name: name, KeyType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetService}}
			for _, e := range s.Members {
				if e.Addr.Is4() {
					set.Elements = append(set.Elements, nft.Element{Key: fmt.Sprintf("%s . %d", e.Addr, e.Port)})
				}
			}
			t.Sets = append(t.Sets, set)
		}
	}
	t.Sets = append(t.Sets, self)
	t.Maps = append(t.Maps, ingressMap, egressMap)

	accept := nft.Action{Kind: nft.ActAccept}
	established := nft.Rule{Match: []nft.Match{{Keys: []nft.Field{nft.CTState}, Value: "established,related"}}, Action: accept}
	egress := nft.Rule{Action: nft.Action{Kind: nft.ActVMap, Keys: []nft.Field{nft.IPSaddr}, Map: MapEgress}}
	ingress := nft.Rule{Action: nft.Action{Kind: nft.ActVMap, Keys: []nft.Field{nft.IPDaddr}, Map: MapIngress}}
	t.Chains = append(t.Chains,
		// Runs after nat prerouting (dstnat), so a Service's traffic is
		// judged with its endpoint as destination.
		nft.Chain{Name: ChainForward, Type: nft.TypeFilter, Hook: nft.HookForward, Priority: nft.PriorityFilter, Rules: []nft.Rule{
			established,
			// A pod reaching itself through a Service comes back through
			// the node; policy never restricts a pod's traffic to itself.
			{Match: []nft.Match{{Keys: []nft.Field{nft.IPSaddr, nft.IPDaddr}, Set: SetSelf}}, Action: accept},
			egress,
			ingress,
		}},
		// A local pod reaching the node's own addresses: egress only.
		nft.Chain{Name: ChainInput, Type: nft.TypeFilter, Hook: nft.HookInput, Priority: nft.PriorityFilter, Rules: []nft.Rule{
			established,
			egress,
		}},
	)
	return t
}

// PodChain is the name of a pod's chain for direction (Ingress or Egress).
func PodChain(podKey, direction string) string {
	if direction == Ingress {
		return ChainIngressPrefix + shortHash(podKey)
	}
	return ChainEgressPrefix + shortHash(podKey)
}

func podChain(p *policy.PodPolicy, dir string, d *policy.Direction, peerField nft.Field, failClosed bool) nft.Chain {
	c := nft.Chain{Name: PodChain(p.Key(), dir)}
	if failClosed {
		c.Rules = []nft.Rule{{Counter: true, Action: nft.Action{Kind: nft.ActDrop}, Comment: failComment(p.Key(), dir)}}
		return c
	}
	for _, r := range d.Rules {
		var peer []nft.Match
		switch r.Peer {
		case policy.PeerSelector, policy.PeerBlock:
			peer = []nft.Match{{Keys: []nft.Field{peerField}, Set: setName(r.Set)}}
		}
		comment := allowComment(r.Policy, dir, r.Index)
		if len(r.Ports) == 0 {
			c.Rules = append(c.Rules, nft.Rule{Match: peer, Counter: true, Action: nft.Action{Kind: nft.ActReturn}, Comment: comment})
			continue
		}
		seen := map[string]bool{}
		for _, pm := range r.Ports {
			ms := append(slices.Clone(peer), nft.Match{Keys: []nft.Field{nft.L4Proto}, Value: protoName(pm.Protocol)})
			switch {
			case pm.PortSet != "":
				ms = append(ms, nft.Match{Keys: []nft.Field{nft.IPDaddr, nft.THDport}, Set: setName(pm.PortSet)})
			case pm.From == 0 && pm.To == 65535:
				// The protocol alone.
			case pm.From == pm.To:
				ms = append(ms, nft.Match{Keys: []nft.Field{nft.THDport}, Value: fmt.Sprint(pm.From)})
			default:
				ms = append(ms, nft.Match{Keys: []nft.Field{nft.THDport}, Value: fmt.Sprintf("%d-%d", pm.From, pm.To)})
			}
			rule := nft.Rule{Match: ms, Counter: true, Action: nft.Action{Kind: nft.ActReturn}, Comment: comment}
			// A named port resolving to a number the rule also lists needs
			// no second rule.
			if !seen[rule.Text()] {
				seen[rule.Text()] = true
				c.Rules = append(c.Rules, rule)
			}
		}
	}
	c.Rules = append(c.Rules, nft.Rule{Counter: true, Action: nft.Action{Kind: nft.ActDrop}, Comment: dropComment(p.Namespace, p.Key(), dir, d.Policies)})
	return c
}

func protoName(p corev1.Protocol) string { return strings.ToLower(string(p)) }

// setName maps a model set name (sel-…, cidr-…, np-…) into the fragment's
// namespace.
func setName(model string) string { return Prefix + "-" + model }

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

func ipv4s(as []netip.Addr) []string {
	var out []string
	for _, a := range as {
		if a.Is4() {
			out = append(out, a.String())
		}
	}
	return out
}

// rangePrefixes splits an inclusive IPv4 range into the fewest prefixes,
// the element form of the model's interval sets. IPv6 ranges give nothing.
func rangePrefixes(r policy.Range) []netip.Prefix {
	if !r.From.Is4() || !r.To.Is4() {
		return nil
	}
	lo := uint64(binary.BigEndian.Uint32(r.From.AsSlice()))
	hi := uint64(binary.BigEndian.Uint32(r.To.AsSlice()))
	var out []netip.Prefix
	for lo <= hi {
		// The largest block aligned at lo that stays within hi.
		size := uint64(1) << 32
		if lo != 0 {
			size = uint64(1) << bits.TrailingZeros64(lo)
		}
		for size > hi-lo+1 {
			size >>= 1
		}
		a := netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, uint32(lo))))
		out = append(out, netip.PrefixFrom(a, 32-bits.TrailingZeros64(size)))
		lo += size
	}
	return out
}

// prefixKey is an interval element as nft.Dump spells it: a host as an
// address, anything wider as a prefix.
func prefixKey(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// Rule comments. Policy and pod names are DNS labels or subdomains, without
// spaces, so the fields parse back by splitting on spaces; a comment too long
// for the kernel is shortened, keeping what Drops needs in front.

func allowComment(policyKey, dir string, index int) string {
	suffix := fmt.Sprintf(" %s[%d]", dir, index)
	return truncate(policyKey, maxComment-len(suffix)) + suffix
}

func dropComment(namespace, podKey, dir string, policies []string) string {
	s := truncate(podKey, maxComment/2) + " " + dir + " drop:"
	for i, p := range policies {
		name := strings.TrimPrefix(p, namespace+"/")
		reserve := 0
		if rest := len(policies) - i - 1; rest > 0 {
			reserve = len(fmt.Sprintf(" +%d", rest))
		}
		if len(s)+1+len(name)+reserve > maxComment {
			// The previous round reserved room for this mark.
			return s + fmt.Sprintf(" +%d", len(policies)-i)
		}
		s += " " + name
	}
	return s
}

func failComment(podKey, dir string) string {
	return truncate(podKey, maxComment/2) + " " + dir + " failed closed"
}

// truncate shortens s to n bytes, marking the cut with "~", which no
// Kubernetes name contains.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "~"
}
