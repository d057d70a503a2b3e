// Package servicenft renders the pure Service model (services.Model) into
// Meridian's nftables model (nft.Table), in place of kube-proxy's nftables
// mode. Render is pure and deterministic: equal models give equal tables, so
// a restarted meridiand computes the table already in the kernel and the
// Syncer adopts it without sending anything.
//
// The result is a fragment of table inet meridian: every object it names
// starts with "services" or "svc-", so it merges (nft.Merge) with the
// policy fragment, whose names start with "pol".
//
// # Layout
//
// The number of sets and maps is constant as Services grow (per-Service
// sets made kube-proxy's full sync grow with the square of the Service
// count, /work/shared/notes/nftables-scale.md): 64 endpoint maps (see
// EndpointsMap) and one map per distinct affinity timeout beyond the fixed
// ones.
//
//	chain services-nat-prerouting  { type nat hook prerouting priority dstnat; jump services }
//	chain services-nat-output      { type nat hook output priority -100; jump services }
//	chain services {
//	    ip daddr . meta l4proto . th dport @services-masq-always mark |= 0x4000
//	    ip daddr . meta l4proto . th dport @services-masq-offcluster ip saddr != @services-cluster-cidrs mark |= 0x4000
//	    ip daddr . meta l4proto . th dport vmap @services-frontends }
//	map services-frontends { ipv4_addr . inet_proto . inet_service : verdict }
//	    ClusterIPs, externalIPs, load balancer IPs, NodePorts on node addresses:
//	    goto svc-<id> (or svc-ext-<id> for externalTrafficPolicy Local)
//	chain svc-ext-<id> { ip saddr @services-cluster-cidrs goto svc-<cluster id>
//	                     fib saddr type local mark |= 0x4000 goto svc-<cluster id>
//	                     goto svc-<local id> }
//	chain svc-<id>     { [meta l4proto <p> dnat ip to <id> . <epoch> . ip saddr map @services-affinity-<s>
//	                          record @services-affinity-<s> { <id> . <epoch> . ip saddr }]
//	                     meta l4proto <p> dnat ip to <id> . numgen random mod <N> map @services-endpoints-<id % 64>
//	                          [record @services-affinity-<s> { <id> . <epoch> . ip saddr }] }
//	map services-endpoints-00 .. -3f { mark . mark : ipv4_addr . inet_service }
//	    <id> . <bucket 0..N-1> : <endpoint address> . <target port>, in map id % 64
//	map services-affinity-<s> { mark . mark . ipv4_addr : ipv4_addr . inet_service;
//	                            flags dynamic,timeout; timeout <s>s }
//	    filled by the packet path: (target id . endpoints epoch . client) : endpoint
//	set services-hairpin { ipv4_addr . ipv4_addr }
//	    <endpoint> . <endpoint> for every endpoint
//	chain services-filter-prerouting { type filter hook prerouting priority dstnat + 10;
//	                                   ct state new ip daddr . meta l4proto . th dport vmap @services-no-endpoints }
//	chain services-filter-output     { type filter hook output priority -90; (the same rule) }
//	map services-no-endpoints { ipv4_addr . inet_proto . inet_service : verdict }
//	    frontends of targets without endpoints: goto services-reject, or drop
//	    for a Local policy left without local endpoints
//	chain services-reject { meta l4proto tcp reject with tcp reset; reject }
//	chain services-nat-postrouting { type nat hook postrouting priority srcnat;
//	    meta mark & 0x4000 == 0x4000 masquerade fully-random
//	    ip saddr . ip daddr @services-hairpin masquerade fully-random
//	    ip saddr @services-nat-outgoing ip daddr != @services-nat-outgoing masquerade fully-random }
//
// Endpoints are data, not chains: a target's chain looks (target id,
// random bucket) up in a shared map and translates to the address and
// port found. The kernel validates the whole table (every chain reachable
// from a base chain, every element of the verdict maps on the way) when a
// transaction adds a jump or goto, or a rule with a NAT; elements of a
// data map are neither. So an endpoint change sends only elements of
// services-endpoints-* and services-hairpin, plus the target's chain when its
// number of endpoints (the numgen modulus) changes or it has session
// affinity. Per-endpoint chains reached by goto made one change at 10k
// Services cost 2.9 s of validation.
//
// Hairpin: an endpoint reaching itself through a Service must be
// masqueraded, or it answers itself from its own address and the client
// drops the reply. Nat postrouting sees the translated destination, so a
// packet from an endpoint to itself matches (saddr . daddr) in
// services-hairpin.
//
// Session affinity is kube-proxy's ClientIP: a client's first connection
// picks an endpoint and records it in the dynamic map of the Service's
// timeout, keyed (target id . epoch . client); later connections are sent
// there and refresh the timeout, so it expires after the client has been
// idle for it. The epoch is a hash of the target's endpoints: when they
// change, every client picks again (kube-proxy keeps the clients of the
// endpoints that remain) but none is ever sent to an endpoint that is
// gone; the old epoch's elements expire. The record rule has no nft
// syntax (see nft.Action.Record), and nft 1.0.6 aborts listing a chain
// that holds one (netlink_parse_concat_expr: the lookup's result has no
// length for it); the kernel runs it.
//
// Rejects live in filter chains (nft refuses reject in nat chains), right
// after the nat chains of the same hooks (dstnat + 10): a packet that was
// translated (an endpoint chosen, or pods and the node short-circuited
// past an empty Local target) no longer carries the frontend address, so
// the no-endpoints map sees only what nat left alone. The check is in
// prerouting rather than forward and input (kube-proxy's place) because a
// routed client whose route back leaves by the interface the packet came
// in gets an ICMP redirect from the forward path first, and that uses up
// the per-host ICMP rate limit: the port unreachable that follows is never
// sent (IcmpOutRateLimitHost), and a UDP client waits for its timeout.
// Rejecting in prerouting happens before routing, so no redirect.
//
// Frontends whose target has no endpoint are left out of
// services-frontends (nothing to translate) and listed in
// services-no-endpoints instead.
//
// IPv4 only for now: IPv6 Service ports, node addresses and cluster CIDRs
// are skipped (the nft model has no ipv6_addr yet); target ids already
// count IPv6 targets so that adding them will not move IPv4 ids.
//
// Target ids name the chains and key the maps. They come from a 32-bit
// FNV-1a hash of the TargetKey, so they do not depend on the order of
// Services or on a counter kept across restarts: one endpoint change
// rewrites only that target's elements (and chain, see above).
package servicenft

import (
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/services"
)

// Names of the fixed objects of the services fragment.
const (
	ChainNATPrerouting    = "services-nat-prerouting"
	ChainNATOutput        = "services-nat-output"
	ChainNATPostrouting   = "services-nat-postrouting"
	ChainFilterPrerouting = "services-filter-prerouting"
	ChainFilterOutput     = "services-filter-output"
	// ChainServices dispatches by destination in both nat base chains.
	ChainServices = "services"
	// ChainReject answers a connection to a Service without endpoints.
	ChainReject = "services-reject"

	MapFrontends = "services-frontends"
	// EndpointShards is the number of endpoint maps (see EndpointsMap).
	EndpointShards = 64
	// SetHairpin holds (endpoint . endpoint) for every endpoint.
	SetHairpin      = "services-hairpin"
	MapNoEndpoints  = "services-no-endpoints"
	SetMasqAlways   = "services-masq-always"
	SetMasqOffClust = "services-masq-offcluster"
	SetClusterCIDRs = "services-cluster-cidrs"
	SetNATOutgoing  = "services-nat-outgoing"
)

// PriorityCheck is the priority of the no-endpoints checks: right after
// Meridian's nat chains of the same hook.
const PriorityCheck = nft.PriorityDstNAT + 10

// Config is what the table needs beyond the model.
type Config struct {
	// MasqueradeMark is the packet mark bit that asks nat postrouting to
	// masquerade (kube-proxy's 0x4000). It must not overlap bits other
	// parts of the node use.
	MasqueradeMark uint32
}

// DefaultConfig is kube-proxy's mark.
func DefaultConfig() Config { return Config{MasqueradeMark: 0x4000} }

var frontendKey = []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetProto, nft.TypeInetService}
var frontendFields = []nft.Field{nft.IPDaddr, nft.L4Proto, nft.THDport}

// TargetIDs assigns every key a stable 32-bit id: its FNV-1a hash, unless
// another key hashes to the same value. Keys whose hash no other key
// shares always keep it; within a colliding group the smallest key keeps
// the hash and the others, in sorted order, take the next id no key owns
// (linear probing), so ids depend only on the set of keys.
func TargetIDs(keys []services.TargetKey) map[services.TargetKey]uint32 {
	return assignIDs(keys, func(k services.TargetKey) uint32 {
		h := fnv.New32a()
		h.Write([]byte(k))
		return h.Sum32()
	})
}

func assignIDs(keys []services.TargetKey, hashOf func(services.TargetKey) uint32) map[services.TargetKey]uint32 {
	keys = slices.Clone(keys)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	hash := make(map[services.TargetKey]uint32, len(keys))
	owners := make(map[uint32]int, len(keys))
	for _, k := range keys {
		hash[k] = hashOf(k)
		owners[hash[k]]++
	}
	ids := make(map[services.TargetKey]uint32, len(keys))
	used := make(map[uint32]bool, len(keys))
	// First every key's own hash (the smallest key of a colliding group
	// comes first in sorted order), then the rest probe.
	var probe []services.TargetKey
	for _, k := range keys {
		if used[hash[k]] {
			probe = append(probe, k)
			continue
		}
		ids[k], used[hash[k]] = hash[k], true
	}
	for _, k := range probe {
		id := hash[k] + 1
		for used[id] || owners[id] > 0 {
			id++
		}
		ids[k], used[id] = id, true
	}
	return ids
}

// TargetChain names the chain of target id.
func TargetChain(id uint32) string { return fmt.Sprintf("svc-%08x", id) }

// ExtChain names the chain that short-circuits pods and the node for an
// externalTrafficPolicy Local target id.
func ExtChain(id uint32) string { return fmt.Sprintf("svc-ext-%08x", id) }

// EndpointsMap names the map that holds target id's endpoints: (target
// id . bucket) to address . port. The endpoints are spread over
// EndpointShards maps by id because the kernel checks every element added
// to a map against every rule that looks the map up (and a rule that
// starts looking it up walks every element): one map for all would cost
// elements × targets per full sync (10k Services × 10 endpoints: 1e9
// checks, 30 s); 64 maps divide that by 64 and still do not grow with
// the Service count.
func EndpointsMap(id uint32) string {
	return fmt.Sprintf("services-endpoints-%02x", id%EndpointShards)
}

// AffinityMap names the dynamic map of clients pinned to endpoints for
// Services whose affinity timeout is timeoutSeconds.
func AffinityMap(timeoutSeconds int32) string {
	return fmt.Sprintf("services-affinity-%d", timeoutSeconds)
}

// affinityEpoch identifies a target's endpoints: a client's recorded
// endpoint is only looked up under the epoch it was recorded in.
func affinityEpoch(eps []services.Endpoint) uint32 {
	h := fnv.New32a()
	for _, e := range eps {
		fmt.Fprintf(h, "%s:%d,", e.Addr, e.Port)
	}
	return h.Sum32()
}

func protoName(p services.Protocol) string { return nft.ProtoName(byte(p)) }

func frontendElem(f services.Frontend) string {
	return fmt.Sprintf("%s . %s . %d", f.Addr, protoName(f.Protocol), f.Port)
}

// Render computes the services fragment of table inet meridian for m.
// IPv6 Service ports, node addresses and CIDRs are left out: the nft model
// is IPv4-only for now.
func Render(m *services.Model, cfg Config) nft.Table {
	return NewRenderer(cfg).Render(m)
}

// Renderer is Render with memory: it keeps the element text it built for
// each target's endpoints and for the hairpin set, and reuses it while the
// endpoints are the same. A sync after one endpoint change then builds the
// strings of that target only instead of one per endpoint of the node.
// Its output equals Render's for the same model. Not safe for concurrent
// use: one sync loop owns it.
type Renderer struct {
	cfg Config
	// eps caches per target id; gen marks the entries the last Render used,
	// so targets that went away are dropped.
	eps     map[uint32]*endpointCache
	gen     uint64
	hairpin hairpinCache
}

type endpointCache struct {
	gen   uint64
	addrs []netip.AddrPort
	elems []nft.Element
}

type hairpinCache struct {
	addrs []netip.Addr
	elems []nft.Element
}

// NewRenderer returns a Renderer for cfg (a zero MasqueradeMark takes the
// default).
func NewRenderer(cfg Config) *Renderer {
	if cfg.MasqueradeMark == 0 {
		cfg.MasqueradeMark = DefaultConfig().MasqueradeMark
	}
	return &Renderer{cfg: cfg, eps: map[uint32]*endpointCache{}}
}

// Render computes the table for m, as the package function does.
func (rr *Renderer) Render(m *services.Model) nft.Table {
	rr.gen++
	r := renderer{cfg: rr.cfg, cache: rr}
	r.index(m)
	t := r.table(m)
	for id, c := range rr.eps {
		if c.gen != rr.gen {
			delete(rr.eps, id)
		}
	}
	return t
}

type renderer struct {
	cfg     Config
	cache   *Renderer
	ids     map[services.TargetKey]uint32
	targets map[services.TargetKey]*services.Target
}

// endpointElems returns the endpoint map elements of target id, from the
// cache when its endpoints' addresses and ports are unchanged.
func (rr *Renderer) endpointElems(id uint32, eps []services.Endpoint) []nft.Element {
	c := rr.eps[id]
	if c != nil && len(c.addrs) == len(eps) && slices.EqualFunc(c.addrs, eps, func(a netip.AddrPort, e services.Endpoint) bool {
		return a == e.AddrPort()
	}) {
		c.gen = rr.gen
		return c.elems
	}
	c = &endpointCache{gen: rr.gen, addrs: make([]netip.AddrPort, len(eps)), elems: make([]nft.Element, len(eps))}
	for b, e := range eps {
		c.addrs[b] = e.AddrPort()
		c.elems[b] = endpointElem(id, b, e)
	}
	rr.eps[id] = c
	return c.elems
}

func v4(p services.ServicePort) bool { return p.Family == services.IPv4 }

func (r *renderer) index(m *services.Model) {
	r.targets = map[services.TargetKey]*services.Target{}
	var keys []services.TargetKey
	for i := range m.Services {
		for j := range m.Services[i].Ports {
			p := &m.Services[i].Ports[j]
			for k := range p.Targets {
				t := &p.Targets[k]
				// Ids count IPv6 targets too, so that rendering them
				// later moves no IPv4 target's id.
				keys = append(keys, t.Key)
				if v4(*p) {
					r.targets[t.Key] = t
				}
			}
		}
	}
	r.ids = TargetIDs(keys)
}

// dnat reports whether key names a target that translates.
func (r *renderer) dnat(key services.TargetKey) bool {
	t, ok := r.targets[key]
	return ok && t.Verdict == services.VerdictDNAT && len(t.Endpoints) > 0
}

func (r *renderer) table(m *services.Model) nft.Table {
	mark := r.cfg.MasqueradeMark
	nTargets := len(r.targets)
	var (
		chains              = make([]nft.Chain, 0, 8+nTargets)
		frontends, noEps    []nft.Element
		masqAlways, masqOff []nft.Element
		endpoints           [EndpointShards][]nft.Element
		hairpin             []netip.Addr
		affinity            = map[int32]bool{}
	)
	// Sized up front: appending 100k elements into 64 growing slices
	// was most of a render's garbage.
	var perShard [EndpointShards]int
	for key, t := range r.targets {
		if r.dnat(key) {
			perShard[r.ids[key]%EndpointShards] += len(t.Endpoints)
		}
	}
	for i, n := range perShard {
		endpoints[i] = make([]nft.Element, 0, n)
	}
	extDone := map[uint32]bool{}
	for i := range m.Services {
		for _, p := range m.Services[i].Ports {
			if !v4(p) {
				continue
			}
			for _, f := range p.Frontends {
				key := frontendElem(f)
				switch f.Masquerade {
				case services.MasqueradeAlways:
					masqAlways = append(masqAlways, nft.Element{Key: key})
				case services.MasqueradeOffCluster:
					masqOff = append(masqOff, nft.Element{Key: key})
				}
				if t := r.targets[f.Target]; t != nil && !r.dnat(f.Target) {
					v := "goto " + ChainReject
					if t.Verdict == services.VerdictDrop {
						v = "drop"
					}
					noEps = append(noEps, nft.Element{Key: key, Value: v})
				}
				switch {
				case f.PodTarget != "" && r.dnat(f.PodTarget):
					id := r.ids[f.Target]
					frontends = append(frontends, nft.Element{Key: key, Value: "goto " + ExtChain(id)})
					if !extDone[id] {
						extDone[id] = true
						chains = append(chains, r.extChain(f))
					}
				case r.dnat(f.Target):
					frontends = append(frontends, nft.Element{Key: key, Value: "goto " + TargetChain(r.ids[f.Target])})
				}
			}
			for _, t := range p.Targets {
				if !r.dnat(t.Key) {
					continue
				}
				id := r.ids[t.Key]
				endpoints[id%EndpointShards] = append(endpoints[id%EndpointShards], r.cache.endpointElems(id, t.Endpoints)...)
				for _, e := range t.Endpoints {
					if e.Addr.Is4() {
						hairpin = append(hairpin, e.Addr)
					}
				}
				chains = append(chains, targetChain(id, p.Protocol, t, affinity))
			}
		}
	}

	markRule := func(ms ...nft.Match) nft.Rule { return nft.Rule{Match: ms, MarkOr: mark} }
	check := []nft.Rule{{
		Match:  []nft.Match{{Keys: []nft.Field{nft.CTState}, Value: "new"}},
		Action: nft.Action{Kind: nft.ActVMap, Keys: frontendFields, Map: MapNoEndpoints},
	}}
	jumpServices := []nft.Rule{{Action: nft.Action{Kind: nft.ActJump, Chain: ChainServices}}}
	chains = append(chains,
		nft.Chain{Name: ChainNATPrerouting, Type: nft.TypeNAT, Hook: nft.HookPrerouting, Priority: nft.PriorityDstNAT, Rules: jumpServices},
		nft.Chain{Name: ChainNATOutput, Type: nft.TypeNAT, Hook: nft.HookOutput, Priority: nft.PriorityDstNAT, Rules: jumpServices},
		nft.Chain{Name: ChainServices, Rules: []nft.Rule{
			markRule(nft.Match{Keys: frontendFields, Set: SetMasqAlways}),
			markRule(nft.Match{Keys: frontendFields, Set: SetMasqOffClust}, nft.Match{Keys: []nft.Field{nft.IPSaddr}, Neg: true, Set: SetClusterCIDRs}),
			{Action: nft.Action{Kind: nft.ActVMap, Keys: frontendFields, Map: MapFrontends}},
		}},
		nft.Chain{Name: ChainNATPostrouting, Type: nft.TypeNAT, Hook: nft.HookPostrouting, Priority: nft.PrioritySrcNAT, Rules: []nft.Rule{
			{Match: []nft.Match{{Keys: []nft.Field{nft.MetaMark}, Mask: mark, Value: fmt.Sprintf("0x%08x", mark)}}, Action: nft.Action{Kind: nft.ActMasqueradeFullyRandom}},
			{Match: []nft.Match{{Keys: []nft.Field{nft.IPSaddr, nft.IPDaddr}, Set: SetHairpin}}, Action: nft.Action{Kind: nft.ActMasqueradeFullyRandom}},
			// NATOutgoing: pods reaching beyond the cluster leave with the
			// node's address. An empty set disables it.
			{Match: []nft.Match{{Keys: []nft.Field{nft.IPSaddr}, Set: SetNATOutgoing}, {Keys: []nft.Field{nft.IPDaddr}, Neg: true, Set: SetNATOutgoing}}, Action: nft.Action{Kind: nft.ActMasqueradeFullyRandom}},
		}},
		nft.Chain{Name: ChainFilterPrerouting, Type: nft.TypeFilter, Hook: nft.HookPrerouting, Priority: PriorityCheck, Rules: check},
		nft.Chain{Name: ChainFilterOutput, Type: nft.TypeFilter, Hook: nft.HookOutput, Priority: PriorityCheck, Rules: check},
		nft.Chain{Name: ChainReject, Rules: []nft.Rule{
			{Match: []nft.Match{{Keys: []nft.Field{nft.L4Proto}, Value: "tcp"}}, Action: nft.Action{Kind: nft.ActRejectTCP}},
			{Action: nft.Action{Kind: nft.ActReject}},
		}},
	)

	sets := []nft.Set{
		{Name: SetMasqAlways, KeyType: frontendKey, Elements: masqAlways},
		{Name: SetMasqOffClust, KeyType: frontendKey, Elements: masqOff},
		{Name: SetClusterCIDRs, KeyType: []nft.DataType{nft.TypeIPv4Addr}, Interval: true, Elements: prefixElems(m.ClusterCIDRs)},
		{Name: SetNATOutgoing, KeyType: []nft.DataType{nft.TypeIPv4Addr}, Interval: true, Elements: prefixElems(m.NATOutgoing)},
		{Name: SetHairpin, KeyType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeIPv4Addr}, Elements: r.cache.hairpinElems(hairpin)},
	}
	verdict := []nft.DataType{nft.TypeVerdict}
	nftMaps := []nft.Map{
		{Name: MapFrontends, KeyType: frontendKey, DataType: verdict, Elements: frontends},
		{Name: MapNoEndpoints, KeyType: frontendKey, DataType: verdict, Elements: noEps},
	}
	for i, els := range endpoints {
		nftMaps = append(nftMaps, nft.Map{Name: EndpointsMap(uint32(i)), KeyType: []nft.DataType{nft.TypeMark, nft.TypeMark}, DataType: endpointData, Elements: els})
	}
	for _, secs := range slices.Sorted(maps.Keys(affinity)) {
		// kube-proxy's timeout: an idle client forgets its endpoint after
		// sessionAffinityConfig.clientIP.timeoutSeconds.
		nftMaps = append(nftMaps, nft.Map{Name: AffinityMap(secs), KeyType: affinityKey, DataType: endpointData, Dynamic: true, Timeout: time.Duration(secs) * time.Second})
	}
	return nft.Table{Chains: chains, Sets: sets, Maps: nftMaps}
}

var (
	endpointData = []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetService}
	affinityKey  = []nft.DataType{nft.TypeMark, nft.TypeMark, nft.TypeIPv4Addr}
)

// targetChain is svc-<id>: with affinity, first the client's recorded
// endpoint (refreshing its timeout), then a random one, recorded. Each
// endpoint gets 1/N of new clients: numgen random mod N picks the bucket.
func targetChain(id uint32, proto services.Protocol, t services.Target, affinity map[int32]bool) nft.Chain {
	l4 := []nft.Match{{Keys: []nft.Field{nft.L4Proto}, Value: protoName(proto)}}
	pick := nft.Action{Kind: nft.ActDNATMap, Keys: []nft.Field{nft.Const(id), nft.Numgen(uint32(len(t.Endpoints)))}, Map: EndpointsMap(id)}
	c := nft.Chain{Name: TargetChain(id)}
	if a := t.Affinity; a != nil {
		affinity[a.TimeoutSeconds] = true
		am := AffinityMap(a.TimeoutSeconds)
		client := []nft.Field{nft.Const(id), nft.Const(affinityEpoch(t.Endpoints)), nft.IPSaddr}
		c.Rules = append(c.Rules, nft.Rule{Match: l4, Action: nft.Action{Kind: nft.ActDNATMap, Keys: client, Map: am, Record: &nft.SetUpdate{Set: am, Keys: client}}})
		pick.Record = &nft.SetUpdate{Set: am, Keys: client}
	}
	c.Rules = append(c.Rules, nft.Rule{Match: l4, Action: pick})
	return c
}

// endpointElem is bucket b of target id: "id . b : addr . port". Built
// with strconv rather than fmt: a full render formats one per endpoint.
func endpointElem(id uint32, b int, e services.Endpoint) nft.Element {
	k := strconv.AppendUint(make([]byte, 0, 16), uint64(id), 10)
	k = append(k, " . "...)
	k = strconv.AppendInt(k, int64(b), 10)
	v := e.Addr.AppendTo(make([]byte, 0, 24))
	v = append(v, " . "...)
	v = strconv.AppendUint(v, uint64(e.Port), 10)
	return nft.Element{Key: string(k), Value: string(v)}
}

// hairpinElems lists (a . a) for every endpoint address a (addrs may
// repeat), in address order, stable from one render to the next, which
// Plan relies on to skip unchanged runs cheaply. Elements of addresses the
// last render had are reused, found by walking both sorted lists.
func (rr *Renderer) hairpinElems(addrs []netip.Addr) []nft.Element {
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	prev := rr.hairpin
	if slices.Equal(prev.addrs, addrs) {
		return prev.elems
	}
	out := make([]nft.Element, len(addrs))
	j := 0
	for i, a := range addrs {
		for j < len(prev.addrs) && prev.addrs[j].Less(a) {
			j++
		}
		if j < len(prev.addrs) && prev.addrs[j] == a {
			out[i] = prev.elems[j]
			continue
		}
		b := a.AppendTo(make([]byte, 0, 34))
		b = append(b, " . "...)
		b = a.AppendTo(b)
		out[i] = nft.Element{Key: string(b)}
	}
	rr.hairpin = hairpinCache{addrs: addrs, elems: out}
	return out
}

// extChain is kube-proxy's short-circuit for externalTrafficPolicy Local:
// pods and the node itself are served by the cluster target as if their
// packet had gone out to the load balancer and come back; the rest by the
// local target (or, when that has no endpoint, by the drop check in filter).
func (r *renderer) extChain(f services.Frontend) nft.Chain {
	pod := TargetChain(r.ids[f.PodTarget])
	node := nft.Rule{Match: []nft.Match{{Keys: []nft.Field{nft.FibSaddrType}, Value: "local"}}, Action: nft.Action{Kind: nft.ActGoto, Chain: pod}}
	if f.Masquerade == services.MasqueradeNodeSource {
		// The node's own address as source would reach a remote endpoint
		// that routes its reply straight back to the node; masquerading
		// picks the outgoing interface's address instead.
		node.MarkOr = r.cfg.MasqueradeMark
	}
	c := nft.Chain{Name: ExtChain(r.ids[f.Target]), Rules: []nft.Rule{
		{Match: []nft.Match{{Keys: []nft.Field{nft.IPSaddr}, Set: SetClusterCIDRs}}, Action: nft.Action{Kind: nft.ActGoto, Chain: pod}},
		node,
	}}
	if r.dnat(f.Target) {
		c.Rules = append(c.Rules, nft.Rule{Action: nft.Action{Kind: nft.ActGoto, Chain: TargetChain(r.ids[f.Target])}})
	}
	return c
}

// prefixElems lists the IPv4 prefixes of ps as interval set elements,
// leaving out those inside another (the kernel refuses overlapping
// intervals), a /32 as its address (as the kernel dump spells it).
func prefixElems(ps []netip.Prefix) []nft.Element {
	var v4 []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() {
			v4 = append(v4, p.Masked())
		}
	}
	var out []nft.Element
	for i, p := range v4 {
		if slices.ContainsFunc(v4, func(o netip.Prefix) bool {
			return o != p && o.Bits() <= p.Bits() && o.Contains(p.Addr())
		}) || slices.Index(v4, p) != i {
			continue
		}
		k := p.String()
		if p.IsSingleIP() {
			k = p.Addr().String()
		}
		out = append(out, nft.Element{Key: k})
	}
	return out
}
