// Package encap decides whether traffic to another node's pods is routed
// natively or through a tunnel (IPIP or VXLAN), and derives what the tunnels
// need: the pod MTU, the tunnel devices' addresses and the VXLAN VTEP MACs.
//
// Everything here is pure: values in, values out, no netlink. The routes
// package turns the decisions into kernel routes and the tunnel package
// programs the devices and forwarding entries.
package encap

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// Mode says when pod traffic between nodes is encapsulated. The values are
// those of the BGPConfiguration field spec.encapsulation.
type Mode string

const (
	// ModeNever routes natively; the fabric must route the pod CIDRs.
	ModeNever Mode = "Never"
	// ModeCrossSubnet tunnels only to nodes the fabric cannot reach
	// natively: next hop on no connected subnet and no ToR path.
	ModeCrossSubnet Mode = "CrossSubnet"
	// ModeAlways tunnels to every node.
	ModeAlways Mode = "Always"
)

// Type is the tunnel used when a route is encapsulated. The values are those
// of the BGPConfiguration field spec.encapsulationType.
type Type string

const (
	// TypeIPIP is IP in IP (RFC 2003, IP protocol 4) through tunl0.
	TypeIPIP Type = "IPIP"
	// TypeVXLAN is VXLAN (RFC 7348) for networks that drop protocol 4.
	TypeVXLAN Type = "VXLAN"
)

// DefaultMode and DefaultType are what a cluster without configuration uses,
// as Calico does.
const (
	DefaultMode = ModeCrossSubnet
	DefaultType = TypeIPIP
)

// ParseMode accepts the BGPConfiguration spelling; "" is DefaultMode.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case "":
		return DefaultMode, nil
	case ModeNever, ModeCrossSubnet, ModeAlways:
		return m, nil
	}
	return "", fmt.Errorf("encapsulation mode %q: want Never, CrossSubnet or Always", s)
}

// ParseType accepts the BGPConfiguration spelling; "" is DefaultType.
func ParseType(s string) (Type, error) {
	switch t := Type(s); t {
	case "":
		return DefaultType, nil
	case TypeIPIP, TypeVXLAN:
		return t, nil
	}
	return "", fmt.Errorf("encapsulation type %q: want IPIP or VXLAN", s)
}

// Devices and VXLAN parameters. tunl0 is the IPIP fallback device the ipip
// module creates in every namespace: a packet routed through it with an
// onlink gateway is sent to that gateway (ip_tunnel_xmit takes the outer
// destination from the route's next hop when the tunnel has no remote).
// The VXLAN device name cannot start with the pod veths' "mer" prefix.
const (
	IPIPDevice  = "tunl0"
	VXLANDevice = "vxlan.meridian"
	// VXLANPort is the IANA port (RFC 7348 section 5), not Linux's
	// historical default 8472; VXLANVNI is Calico's, so captures read alike.
	VXLANPort = 4789
	VXLANVNI  = 4096
)

// Overheads of each encapsulation on the path MTU: an outer IPv4 header for
// IPIP; outer IPv4, UDP, VXLAN and inner Ethernet headers for VXLAN.
const (
	IPIPOverhead  = 20
	VXLANOverhead = 50
)

// Overhead is the number of bytes t adds to every packet.
func Overhead(t Type) int {
	if t == TypeVXLAN {
		return VXLANOverhead
	}
	return IPIPOverhead
}

// MinMTU is the smallest MTU PodMTU returns: every IPv4 host must accept
// 576-byte datagrams (RFC 791).
const MinMTU = 576

// PodMTU is the MTU for pod interfaces: override when set (>0), else the host
// link's MTU minus the tunnel overhead whenever the mode can encapsulate, so
// a pod's full-size packet still fits the wire once wrapped. Never leaves the
// host MTU. A result below MinMTU is raised to it.
func PodMTU(hostMTU int, mode Mode, t Type, override int) int {
	if override > 0 {
		return override
	}
	mtu := hostMTU
	if mode != ModeNever {
		mtu -= Overhead(t)
	}
	return max(mtu, MinMTU)
}

// TunnelMTU is the MTU of the tunnel device itself: the host link's minus the
// overhead, so the kernel fragments or reports PMTU before the outer packet
// would exceed the link.
func TunnelMTU(hostMTU int, t Type) int { return max(hostMTU-Overhead(t), MinMTU) }

// TunnelAddress is the address a node gives its tunnel device (and, for
// VXLAN, its VTEP address): the network address of its pod CIDR. IPAM never
// hands it out, so it collides with no pod; locally originated traffic
// through the tunnel then has a pod-range source that the remote node
// routes back through its tunnel, as Calico and flannel do. False for a
// pod CIDR too small to have a network address to spare (/31, /32).
func TunnelAddress(podCIDR netip.Prefix) (netip.Addr, bool) {
	if !podCIDR.IsValid() || !podCIDR.Addr().Is4() || podCIDR.Bits() > 30 || podCIDR.Bits() == 0 {
		return netip.Addr{}, false
	}
	return podCIDR.Masked().Addr(), true
}

// VTEPMAC is the MAC of a node's VXLAN device, derived from its address so
// every node can compute every other node's without a shared store:
// 0e:4d (locally administered, unicast) followed by the four address bytes.
func VTEPMAC(nodeIP netip.Addr) net.HardwareAddr {
	b := nodeIP.Unmap().As4()
	return net.HardwareAddr{0x0e, 0x4d, b[0], b[1], b[2], b[3]}
}

// Reasons a route is native or encapsulated. They are stable: logs, metrics,
// meridianctl and tests use them verbatim.
const (
	// ReasonModeNever: encapsulation is off.
	ReasonModeNever = "modeNever"
	// ReasonModeAlways: every route to another node's pods is tunnelled.
	ReasonModeAlways = "modeAlways"
	// ReasonFabricHasPrefix: a ToR peer announced the prefix; the fabric
	// routes it natively, so the route goes through the ToR.
	ReasonFabricHasPrefix = "fabricHasPrefix"
	// ReasonNextHopConnected: the next hops are on connected subnets.
	ReasonNextHopConnected = "nextHopConnected"
	// ReasonNextHopNotConnected: a next hop is beyond a router that does
	// not know the prefix; only a tunnel reaches it.
	ReasonNextHopNotConnected = "nextHopNotConnected"
	// ReasonNoTunnelEndpoint: the prefix is not a node's pod CIDR, so no
	// node would decapsulate; it is routed natively.
	ReasonNoTunnelEndpoint = "noTunnelEndpoint"
)

// Input is what Decide needs to know about one learned prefix.
type Input struct {
	Mode Mode
	// NextHops are the next hops of the prefix's best paths.
	NextHops []netip.Addr
	// FabricPeers are the addresses of the external peers (ToRs) that sent
	// an accepted path for the prefix: the fabric routes it.
	FabricPeers []netip.Addr
	// Endpoint is the node that owns the prefix (its pod CIDR), where a
	// tunnel ends; invalid when no node owns it.
	Endpoint netip.Addr
	// Connected are the subnets of this node's links.
	Connected []netip.Prefix
}

// Decision is how one prefix leaves the node.
type Decision struct {
	// Encapsulate sends the prefix through the tunnel to Endpoint;
	// otherwise it is routed natively over NextHops.
	Encapsulate bool
	Endpoint    netip.Addr
	// NextHops are the native gateways, sorted and unique.
	NextHops []netip.Addr
	Reason   string
}

// Decide chooses native or encapsulated for one prefix. Unless the mode is
// Always, native through the fabric wins whenever a connected ToR announced
// the prefix: a ToR path's next hop is the owning node (the import policy
// refuses any other), which the kernel cannot use as a gateway on another
// subnet, so the ToR's own address is the gateway that works. Otherwise the
// best paths' next hops are used natively when every one is on a connected
// subnet, and the tunnel to the owning node carries the rest.
func Decide(in Input) Decision {
	native := sortedUnique(in.NextHops)
	var fabric []netip.Addr
	for _, p := range sortedUnique(in.FabricPeers) {
		if connected(p, in.Connected) {
			fabric = append(fabric, p)
		}
	}
	switch in.Mode {
	case ModeNever:
		if len(fabric) > 0 {
			return Decision{NextHops: fabric, Reason: ReasonFabricHasPrefix}
		}
		return Decision{NextHops: native, Reason: ReasonModeNever}
	case ModeAlways:
		if !in.Endpoint.IsValid() {
			return Decision{NextHops: native, Reason: ReasonNoTunnelEndpoint}
		}
		return Decision{Encapsulate: true, Endpoint: in.Endpoint.Unmap(), Reason: ReasonModeAlways}
	}
	// CrossSubnet, also for an unknown mode: it is the default.
	if len(fabric) > 0 {
		return Decision{NextHops: fabric, Reason: ReasonFabricHasPrefix}
	}
	if len(native) > 0 && !slices.ContainsFunc(native, func(a netip.Addr) bool { return !connected(a, in.Connected) }) {
		return Decision{NextHops: native, Reason: ReasonNextHopConnected}
	}
	if !in.Endpoint.IsValid() {
		return Decision{NextHops: native, Reason: ReasonNoTunnelEndpoint}
	}
	return Decision{Encapsulate: true, Endpoint: in.Endpoint.Unmap(), Reason: ReasonNextHopNotConnected}
}

// connected reports whether a is inside one of the subnets. A /0 never
// counts: "connected" must mean one hop away on a link.
func connected(a netip.Addr, subnets []netip.Prefix) bool {
	a = a.Unmap()
	for _, s := range subnets {
		if s.IsValid() && s.Bits() > 0 && s.Addr().Is4() && s.Masked().Contains(a) {
			return true
		}
	}
	return false
}

func sortedUnique(as []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if a.IsValid() {
			out = append(out, a.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	out = slices.Compact(out)
	if len(out) == 0 {
		return nil
	}
	return out
}
