package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	"github.com/meridian-net/meridian/bgp"
)

// Reasons an object is refused, for the Accepted=False condition and the
// Event. Stable strings.
const (
	ReasonInvalid           = "Invalid"
	ReasonSecretNotFound    = "SecretNotFound"
	ReasonSecretKeyNotFound = "SecretKeyNotFound"
	ReasonWrongName         = "WrongName"
	// ReasonAccepted is the reason of Accepted=True.
	ReasonAccepted = "Accepted"
)

// defaultPeerRestartTime is the restart time of a BGPPeer session with
// graceful restart on and no restartTime (the CRD's documented default).
const defaultPeerRestartTime = 120 * time.Second

// ObjectError is why one BGPConfiguration or BGPPeer cannot be used.
type ObjectError struct {
	Reason  string
	Message string
}

func (e *ObjectError) Error() string { return e.Reason + ": " + e.Message }

func invalid(format string, args ...any) *ObjectError {
	return &ObjectError{Reason: ReasonInvalid, Message: fmt.Sprintf(format, args...)}
}

// Settings is a validated BGPConfiguration.
type Settings struct {
	ASN            uint32
	NodeToNodeMesh bool
	// ClusterID is the reflectors' CLUSTER_ID; invalid means router ID.
	ClusterID netip.Addr
	// AcceptedPrefixes overrides the allowed set when not empty.
	AcceptedPrefixes []netip.Prefix
	// Services are the Service ranges this node advertises.
	Services ServiceBlocks
	// Communities go on every path the node originates (pod CIDRs and
	// Service addresses), sorted; LocalPref, when set, is their LOCAL_PREF
	// towards iBGP peers.
	Communities []bgp.Community
	LocalPref   *uint32
}

// WithAttributes puts the BGPConfiguration's communities and local
// preference on the paths a node originates; the speaker re-announces a
// path whose attributes changed.
func (s Settings) WithAttributes(ads []bgp.Advertisement) []bgp.Advertisement {
	out := make([]bgp.Advertisement, len(ads))
	for i, a := range ads {
		a.Communities = slices.Clone(s.Communities)
		a.LocalPref = nil
		if s.LocalPref != nil {
			lp := *s.LocalPref
			a.LocalPref = &lp
		}
		out[i] = a
	}
	return out
}

// DefaultSettings is what applies without a BGPConfiguration.
func DefaultSettings(defaultASN uint32) Settings {
	return Settings{ASN: defaultASN, NodeToNodeMesh: true}
}

// SettingsFrom validates a BGPConfiguration against what the schema cannot
// check. A nil object gives DefaultSettings(defaultASN).
func SettingsFrom(c *v1alpha1.BGPConfiguration, nodes []NodeInfo, defaultASN uint32) (Settings, error) {
	s := DefaultSettings(defaultASN)
	if c == nil {
		return s, nil
	}
	if c.Name != v1alpha1.BGPConfigurationName {
		return s, &ObjectError{Reason: ReasonWrongName, Message: fmt.Sprintf("only the BGPConfiguration named %q is used", v1alpha1.BGPConfigurationName)}
	}
	var errs []string
	if c.Spec.ASNumber != 0 {
		asn, err := asnFrom(c.Spec.ASNumber)
		if err != nil {
			errs = append(errs, "asNumber: "+err.Error())
		}
		s.ASN = asn
	}
	if c.Spec.NodeToNodeMesh != nil {
		s.NodeToNodeMesh = *c.Spec.NodeToNodeMesh
	}
	if c.Spec.RouteReflectorClusterID != "" {
		id, err := netip.ParseAddr(string(c.Spec.RouteReflectorClusterID))
		if err != nil || !id.Is4() {
			errs = append(errs, fmt.Sprintf("routeReflectorClusterID %q is not an IPv4 address", c.Spec.RouteReflectorClusterID))
		}
		s.ClusterID = id
	}
	for _, raw := range c.Spec.AcceptedPrefixes {
		p, err := netip.ParsePrefix(string(raw))
		switch {
		case err != nil:
			errs = append(errs, fmt.Sprintf("acceptedPrefixes: %q is not a CIDR", raw))
			continue
		case !p.Addr().Is4():
			errs = append(errs, fmt.Sprintf("acceptedPrefixes: %s is not IPv4 (only IPv4 unicast is routed)", p))
			continue
		case p.Bits() == 0:
			errs = append(errs, fmt.Sprintf("acceptedPrefixes: %s would accept a default route", p))
			continue
		}
		for _, n := range nodes {
			if n.InternalIP.IsValid() && p.Contains(n.InternalIP) {
				errs = append(errs, fmt.Sprintf("acceptedPrefixes: %s covers node %s's address %s", p, n.Name, n.InternalIP))
			}
		}
		s.AcceptedPrefixes = append(s.AcceptedPrefixes, p.Masked())
	}
	for _, raw := range c.Spec.Communities {
		// The schema's pattern and rule refuse these; an object stored
		// under an older CRD may still carry one.
		cm, err := bgp.ParseCommunity(string(raw))
		if err != nil {
			errs = append(errs, "communities: "+err.Error())
			continue
		}
		s.Communities = append(s.Communities, cm)
	}
	s.Communities = bgp.SortCommunities(s.Communities)
	if lp := c.Spec.LocalPreference; lp != nil {
		if *lp < 0 || *lp > 1<<32-1 {
			errs = append(errs, fmt.Sprintf("localPreference %d is outside 0..4294967295", *lp))
		} else {
			v := uint32(*lp)
			s.LocalPref = &v
		}
	}
	var blockErrs []string
	// A /0 of ClusterIPs would be a default route; a /0 of external or
	// LoadBalancer IPs only means "any of them", each still a /32.
	s.Services.ClusterIPs, blockErrs = serviceBlocksFrom("serviceClusterIPs", cidrsOf(c.Spec.ServiceClusterIPs), false)
	errs = append(errs, blockErrs...)
	s.Services.ExternalIPs, blockErrs = serviceBlocksFrom("serviceExternalIPs", cidrsOf(c.Spec.ServiceExternalIPs), true)
	errs = append(errs, blockErrs...)
	s.Services.LoadBalancerIPs, blockErrs = serviceBlocksFrom("serviceLoadBalancerIPs", cidrsOf(c.Spec.ServiceLoadBalancerIPs), true)
	errs = append(errs, blockErrs...)
	if len(errs) > 0 {
		return DefaultSettings(defaultASN), invalid("%s", joinMessages(errs))
	}
	return s, nil
}

func cidrsOf(blocks []v1alpha1.ServiceCIDRBlock) []string {
	out := make([]string, 0, len(blocks))
	for _, b := range blocks {
		out = append(out, string(b.CIDR))
	}
	return out
}

// Secrets holds the data of the Secrets BGPPeers refer to; a missing entry
// is a Secret that does not exist.
type Secrets map[types.NamespacedName]map[string][]byte

// PeerSpec is a validated BGPPeer: the session settings, and which nodes
// have it.
type PeerSpec struct {
	// Name is the BGPPeer's name.
	Name string
	// Node, when set, is the one node with this peer; otherwise Selector
	// picks the nodes (nil: all).
	Node     string
	Selector labels.Selector
	// Peer is the session with Name and every setting filled in.
	Peer bgp.Peer
}

// SecretRefs lists the Secrets a BGPPeer refers to.
func SecretRefs(p *v1alpha1.BGPPeer) []types.NamespacedName {
	if p.Spec.Password == nil {
		return nil
	}
	return []types.NamespacedName{{Namespace: p.Spec.Password.Namespace, Name: p.Spec.Password.Name}}
}

// PeerSpecFrom validates a BGPPeer against what the schema cannot check
// (selectors, Secrets) and translates it.
func PeerSpecFrom(p *v1alpha1.BGPPeer, secrets Secrets) (PeerSpec, error) {
	spec := PeerSpec{Name: p.Name, Node: p.Spec.Node}
	var errs []string
	addr, err := netip.ParseAddr(string(p.Spec.PeerIP))
	if err != nil || !addr.Is4() || addr.IsUnspecified() {
		errs = append(errs, fmt.Sprintf("peerIP %q is not a usable IPv4 address", p.Spec.PeerIP))
	}
	asn, err := asnFrom(p.Spec.ASNumber)
	if err != nil {
		errs = append(errs, "asNumber: "+err.Error())
	}
	if p.Spec.NodeSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.NodeSelector)
		if err != nil {
			errs = append(errs, "nodeSelector: "+err.Error())
		}
		spec.Selector = sel
	}
	peer := bgp.Peer{
		Name:    "bgppeer/" + p.Name,
		Address: addr,
		ASN:     asn,
		Passive: p.Spec.Passive,
	}
	if p.Spec.SourceAddress != "" {
		src, err := netip.ParseAddr(string(p.Spec.SourceAddress))
		if err != nil || !src.Is4() {
			errs = append(errs, fmt.Sprintf("sourceAddress %q is not an IPv4 address", p.Spec.SourceAddress))
		}
		peer.LocalAddress = src
	}
	if ttl := p.Spec.EBGPMultihop; ttl != nil {
		if *ttl < 1 || *ttl > 255 {
			errs = append(errs, fmt.Sprintf("ebgpMultihop %d is outside 1..255", *ttl))
		} else {
			peer.EBGPMultihopTTL = uint8(*ttl)
		}
	}
	if h := p.Spec.HoldTime; h != nil {
		peer.HoldTime = h.Duration
		if h.Duration != 0 && h.Duration < 3*time.Second {
			errs = append(errs, fmt.Sprintf("holdTime %s is neither 0 nor at least 3s", h.Duration))
		}
	}
	if k := p.Spec.KeepaliveTime; k != nil {
		peer.KeepaliveTime = k.Duration
	}
	gr := bgp.GracefulRestart{Enabled: true, RestartTime: defaultPeerRestartTime}
	if g := p.Spec.GracefulRestart; g != nil {
		if g.Enabled != nil {
			gr.Enabled = *g.Enabled
		}
		if g.RestartTime != nil {
			gr.RestartTime = g.RestartTime.Duration
			if gr.RestartTime < time.Second || gr.RestartTime > 4095*time.Second {
				errs = append(errs, fmt.Sprintf("gracefulRestart.restartTime %s is outside 1s..4095s", gr.RestartTime))
			}
		}
	}
	if !gr.Enabled {
		gr.RestartTime = 0
	}
	peer.GracefulRestart = &gr
	if m := p.Spec.MaxPrefixes; m != nil {
		if m.Limit < 1 || m.Limit > 1<<32-1 {
			errs = append(errs, fmt.Sprintf("maxPrefixes.limit %d is outside 1..4294967295", m.Limit))
		} else {
			peer.MaxPrefixes = uint32(m.Limit)
		}
		peer.MaxPrefixAction = bgp.MaxPrefixAction(cmp.Or(m.Action, v1alpha1.MaxPrefixRestart))
	}
	if len(errs) > 0 {
		return spec, invalid("%s", joinMessages(errs))
	}
	if pw := p.Spec.Password; pw != nil {
		data, ok := secrets[types.NamespacedName{Namespace: pw.Namespace, Name: pw.Name}]
		if !ok {
			return spec, &ObjectError{Reason: ReasonSecretNotFound, Message: fmt.Sprintf("password: Secret %s/%s not found", pw.Namespace, pw.Name)}
		}
		v, ok := data[pw.Key]
		if !ok || len(v) == 0 {
			return spec, &ObjectError{Reason: ReasonSecretKeyNotFound, Message: fmt.Sprintf("password: Secret %s/%s has no key %q", pw.Namespace, pw.Name, pw.Key)}
		}
		// Linux takes TCP MD5 keys of at most 80 bytes (TCP_MD5SIG_MAXKEYLEN).
		if len(v) > 80 {
			return spec, invalid("password: the key in Secret %s/%s is %d bytes; TCP MD5 keys are at most 80", pw.Namespace, pw.Name, len(v))
		}
		peer.Password = string(v)
	}
	spec.Peer = peer
	return spec, nil
}

func asnFrom(v int64) (uint32, error) {
	if v < 0 || v > 1<<32-1 {
		return 0, fmt.Errorf("ASN %d is outside 1..4294967294", v)
	}
	if err := ValidateASN(uint32(v)); err != nil {
		return 0, err
	}
	return uint32(v), nil
}

func joinMessages(msgs []string) string {
	var b []byte
	for i, m := range msgs {
		if i > 0 {
			b = append(b, "; "...)
		}
		b = append(b, m...)
	}
	return string(b)
}

// Plan is what the speaker of one node should do.
type Plan struct {
	// ASN is the node's own ASN.
	ASN uint32
	// Peers are the node mesh or reflector sessions and the BGPPeers
	// selecting this node, sorted by address.
	Peers []bgp.Peer
	// Policy is the import policy.
	Policy bgp.ImportPolicy
	// Skipped explains BGPPeers selecting this node that were left out.
	Skipped []PeerSkip
}

// PeerSkip is a BGPPeer that selects a node but cannot be configured there.
type PeerSkip struct {
	Name   string
	Reason string
}

// Reasons for PeerSkip.
const (
	// SkipAddressIsNode: the peer's address is a node, which the mesh or
	// the reflectors already peer with.
	SkipAddressIsNode = "peerAddressIsNode"
	// SkipDuplicateAddress: another BGPPeer (earlier by name) selecting the
	// node has the same address.
	SkipDuplicateAddress = "duplicatePeerAddress"
)

// Desired computes one node's BGP plan from the cluster: its ASN, the
// sessions to the other nodes (full mesh, or reflectors and clients when
// the mesh is off), the BGPPeers that select it, and the import policy.
// clusterCIDRs bound the accepted prefixes when the BGPConfiguration names
// none; without either, the nodes' pod CIDRs are the allowed set.
func Desired(self NodeInfo, nodes []NodeInfo, s Settings, peers []PeerSpec, clusterCIDRs []netip.Prefix) Plan {
	plan := Plan{ASN: EffectiveASN(self, s.ASN)}
	nodeAddrs := map[netip.Addr]bool{}
	var addrs []netip.Addr
	for _, n := range nodes {
		if n.InternalIP.IsValid() && !nodeAddrs[n.InternalIP] {
			nodeAddrs[n.InternalIP] = true
			addrs = append(addrs, n.InternalIP)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)

	if s.NodeToNodeMesh {
		plan.Peers = Peers(self, nodes, s.ASN)
	} else {
		plan.Peers = reflectorPeers(self, nodes, s)
	}

	taken := map[netip.Addr]bool{}
	sorted := slices.Clone(peers)
	slices.SortFunc(sorted, func(a, b PeerSpec) int { return cmp.Compare(a.Name, b.Name) })
	maxDrop := map[netip.Addr]uint32{}
	for _, ps := range sorted {
		if !ps.selects(self) {
			continue
		}
		p := ps.Peer
		switch {
		case nodeAddrs[p.Address]:
			plan.Skipped = append(plan.Skipped, PeerSkip{Name: ps.Name, Reason: SkipAddressIsNode})
			continue
		case taken[p.Address]:
			plan.Skipped = append(plan.Skipped, PeerSkip{Name: ps.Name, Reason: SkipDuplicateAddress})
			continue
		}
		taken[p.Address] = true
		// Not a node: like Calico, a node exports to it only the routes it
		// originates, so the peer reaches each pod CIDR and Local Service
		// through the node that owns it.
		p.External = true
		if p.MaxPrefixAction == bgp.MaxPrefixDrop && p.MaxPrefixes > 0 {
			maxDrop[p.Address] = p.MaxPrefixes
		}
		plan.Peers = append(plan.Peers, p)
	}
	slices.SortFunc(plan.Peers, func(a, b bgp.Peer) int { return a.Address.Compare(b.Address) })

	allowed := s.AcceptedPrefixes
	if len(allowed) == 0 {
		allowed = clusterCIDRs
	}
	if len(allowed) == 0 {
		for _, n := range nodes {
			allowed = append(allowed, n.PodCIDRs...)
		}
	}
	var fabric []netip.Addr
	for _, p := range plan.Peers {
		if p.External {
			fabric = append(fabric, p.Address)
		}
	}
	plan.Policy = bgp.ImportPolicy{
		Allowed:       slices.Clone(allowed),
		OwnPodCIDRs:   slices.Clone(self.PodCIDRs),
		PodCIDROwners: PodCIDROwners(nodes),
		NodeAddresses: addrs,
		FabricPeers:   fabric,
	}
	if len(maxDrop) > 0 {
		plan.Policy.MaxPrefixes = maxDrop
	}
	return plan
}

func (ps PeerSpec) selects(n NodeInfo) bool {
	if ps.Node != "" {
		return ps.Node == n.Name
	}
	return ps.Selector == nil || ps.Selector.Matches(labels.Set(n.Labels))
}

// reflectorPeers are a node's sessions with the mesh off: a reflector
// peers with every other node (its clients, and the other reflectors as
// non-clients sharing the cluster ID), a client only with the reflectors.
// Route reflection is iBGP only (RFC 4456): a node in another AS is a plain
// eBGP neighbour of the reflector.
func reflectorPeers(self NodeInfo, nodes []NodeInfo, s Settings) []bgp.Peer {
	selfASN := EffectiveASN(self, s.ASN)
	var out []bgp.Peer
	for _, p := range Peers(self, nodes, s.ASN) {
		other := nodeByName(nodes, p.Name)
		switch {
		case self.RouteReflector && !other.RouteReflector:
			p.RouteReflectorClient = p.ASN == selfASN
			if p.RouteReflectorClient {
				p.RouteReflectorClusterID = s.ClusterID
			}
		case self.RouteReflector, other.RouteReflector:
		default:
			continue
		}
		out = append(out, p)
	}
	return out
}

func nodeByName(nodes []NodeInfo, name string) NodeInfo {
	for _, n := range nodes {
		if n.Name == name {
			return n
		}
	}
	return NodeInfo{}
}

// IsObjectError reports whether err is an *ObjectError and returns it.
func IsObjectError(err error) (*ObjectError, bool) {
	var oe *ObjectError
	ok := errors.As(err, &oe)
	return oe, ok
}
