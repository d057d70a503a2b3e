// Package cluster turns Kubernetes Node objects into what the routing layer
// needs: who this node is, which nodes to peer with and what to advertise.
// Everything here is pure: values in, values out, no API calls.
package cluster

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/meridian-net/meridian/bgp"
)

// ASNAnnotation overrides the ASN for one node (eBGP designs with one ASN
// per rack or per node put it here, as Calico's per-node ASN does).
const ASNAnnotation = "meridian.io/asn"

// RouteReflectorLabel=true makes a node a route reflector (RFC 4456): with
// the node-to-node mesh off, reflectors peer with every node and reflect
// between their clients; other nodes peer with the reflectors only. A
// label rather than an annotation, so BGPPeer node selectors can pick
// reflectors too.
const RouteReflectorLabel = "meridian.io/route-reflector"

// Reasons a node cannot be used yet. They are stable strings: logs,
// events and tests key on them.
var (
	ErrNoInternalIP = errors.New("node has no InternalIP address")
	ErrNoPodCIDR    = errors.New("node has no pod CIDR yet (is kube-controller-manager running with --allocate-node-cidrs?)")
)

// NodeInfo is the part of a Node that routing depends on.
type NodeInfo struct {
	Name       string
	InternalIP netip.Addr
	PodCIDRs   []netip.Prefix
	// ASN is the node's own ASN from its annotation; 0 means the default.
	ASN uint32
	// Labels are the Node's labels, which BGPPeer node selectors match.
	Labels map[string]string
	// RouteReflector is set by the label RouteReflectorLabel=true.
	RouteReflector bool
}

// FromNode extracts a NodeInfo and reports why the node is not usable.
// A node without a pod CIDR still yields its name and address, so peers can
// be set up before the controller manager allocated the CIDR.
func FromNode(n *corev1.Node) (NodeInfo, error) {
	info := NodeInfo{Name: n.Name, Labels: n.Labels, RouteReflector: n.Labels[RouteReflectorLabel] == "true"}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil || !ip.Is4() {
			continue
		}
		info.InternalIP = ip
		break
	}
	var errs []error
	if v, ok := n.Annotations[ASNAnnotation]; ok {
		asn, err := ParseASN(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("annotation %s: %w", ASNAnnotation, err))
		}
		info.ASN = asn
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			errs = append(errs, fmt.Errorf("pod CIDR %q: %w", c, err))
			continue
		}
		if p.Addr().Is4() {
			info.PodCIDRs = append(info.PodCIDRs, p.Masked())
		}
	}
	if !info.InternalIP.IsValid() {
		errs = append(errs, ErrNoInternalIP)
	}
	if len(info.PodCIDRs) == 0 {
		errs = append(errs, ErrNoPodCIDR)
	}
	return info, errors.Join(errs...)
}

// ParseASN accepts a plain 32-bit ASN ("64512") or asdot ("1.10").
// 0 and AS_TRANS (23456, RFC 6793) are not usable as a speaker's ASN.
func ParseASN(s string) (uint32, error) {
	s = strings.TrimSpace(s)
	var asn uint64
	if hi, lo, ok := strings.Cut(s, "."); ok {
		h, err1 := strconv.ParseUint(hi, 10, 16)
		l, err2 := strconv.ParseUint(lo, 10, 16)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("invalid ASN %q: asdot needs two numbers up to 65535", s)
		}
		asn = h<<16 | l
	} else {
		v, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("invalid ASN %q: want a number from 1 to 4294967294", s)
		}
		asn = v
	}
	if err := ValidateASN(uint32(asn)); err != nil {
		return 0, err
	}
	return uint32(asn), nil
}

// ValidateASN rejects the ASNs no speaker may use.
func ValidateASN(asn uint32) error {
	switch asn {
	case 0:
		return fmt.Errorf("invalid ASN 0: reserved (RFC 7607)")
	case 23456:
		return fmt.Errorf("invalid ASN 23456: AS_TRANS is reserved (RFC 6793)")
	case 4294967295:
		return fmt.Errorf("invalid ASN 4294967295: reserved (RFC 7300)")
	}
	return nil
}

// EffectiveASN is the node's ASN: its annotation, else the default.
func EffectiveASN(self NodeInfo, defaultASN uint32) uint32 {
	if self.ASN != 0 {
		return self.ASN
	}
	return defaultASN
}

// Peers is the node-to-node full mesh: every other node with an address
// becomes a peer, with its own ASN when it has one (iBGP otherwise).
// Nodes without a pod CIDR are peered anyway: the session is up by the
// time their CIDR is allocated.
func Peers(self NodeInfo, nodes []NodeInfo, defaultASN uint32) []bgp.Peer {
	var peers []bgp.Peer
	for _, n := range nodes {
		if n.Name == self.Name || !n.InternalIP.IsValid() || n.InternalIP == self.InternalIP {
			continue
		}
		peers = append(peers, bgp.Peer{
			Name:    n.Name,
			Address: n.InternalIP,
			ASN:     EffectiveASN(n, defaultASN),
			// Two GoBGP speakers that both dial collide after a restart
			// and back off for seconds; the lower address dials, the
			// higher one waits.
			Passive: n.InternalIP.Less(self.InternalIP),
		})
	}
	slices.SortFunc(peers, func(a, b bgp.Peer) int { return a.Address.Compare(b.Address) })
	return peers
}

// Advertisements is what this node originates: its pod CIDRs with itself
// as next hop.
func Advertisements(self NodeInfo) []bgp.Advertisement {
	var ads []bgp.Advertisement
	if !self.InternalIP.IsValid() {
		return nil
	}
	for _, p := range self.PodCIDRs {
		ads = append(ads, bgp.Advertisement{Prefix: p, NextHop: self.InternalIP})
	}
	return ads
}

// RemotePodCIDRs are the pod CIDRs of every other node: the only prefixes
// the node mesh may teach this node for now.
func RemotePodCIDRs(self NodeInfo, nodes []NodeInfo) []netip.Prefix {
	var out []netip.Prefix
	for _, n := range nodes {
		if n.Name == self.Name {
			continue
		}
		out = append(out, n.PodCIDRs...)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// PodCIDROwners maps every node's pod CIDR to the node's InternalIP: the
// only next hop a path for that CIDR may have.
func PodCIDROwners(nodes []NodeInfo) map[netip.Prefix]netip.Addr {
	owners := map[netip.Prefix]netip.Addr{}
	for _, n := range nodes {
		if !n.InternalIP.IsValid() {
			continue
		}
		for _, p := range n.PodCIDRs {
			owners[p] = n.InternalIP
		}
	}
	return owners
}
