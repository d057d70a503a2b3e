// Package tunnel keeps the node's tunnel devices in step with the routes that
// need them: tunl0 for IPIP, Meridian's VXLAN device with its permanent
// neighbour and forwarding entries for VXLAN. Desired is pure; the Applier
// (applier_linux.go) is the only writer of those devices and entries.
//
// VXLAN runs without multicast and without learning, as Calico's does: each
// remote node's VTEP MAC is derived from its address (encap.VTEPMAC), its
// VTEP address is the network address of its pod CIDR, and both come from
// what BGP taught this node, so no shared store is needed.
package tunnel

import (
	"net"
	"net/netip"
	"slices"

	"github.com/meridian-net/meridian/daemon/encap"
	"github.com/meridian-net/meridian/daemon/routes"
)

// Config is the tunnel state a node should have.
type Config struct {
	// Type is the tunnel in use; empty means none: Meridian's VXLAN device
	// is deleted and tunl0 loses Address (and goes down if it has no other).
	Type encap.Type
	// NodeIP is this node's address: the VXLAN source address, and what
	// its VTEP MAC is derived from.
	NodeIP netip.Addr
	// Address is put on the device as a /32 (encap.TunnelAddress of the
	// node's pod CIDR), so traffic the node itself sends through the
	// tunnel has a pod-range source; invalid for none.
	Address netip.Addr
	// MTU of the tunnel device (encap.TunnelMTU).
	MTU int
	// Peers are the remote VTEPs (VXLAN only), sorted by VTEP address.
	Peers []Peer
}

// Peer is one remote VXLAN endpoint.
type Peer struct {
	// VTEP is the remote device's address, the gateway of the routes
	// through it; it resolves to MAC through a permanent neighbour entry.
	VTEP netip.Addr
	// MAC is the remote device's (encap.VTEPMAC of Endpoint); the
	// forwarding entry sends frames for it to Endpoint.
	MAC net.HardwareAddr
	// Endpoint is the remote node's address, the outer destination.
	Endpoint netip.Addr
}

// Desired computes the tunnel state for the routes Desired (routes package)
// chose. A tunnel device exists whenever the mode can encapsulate, even when
// no route needs it yet, so the first tunnelled route does not wait for it;
// VXLAN peers are exactly the endpoints of the routes through the VXLAN
// device.
func Desired(mode encap.Mode, typ encap.Type, nodeIP netip.Addr, podCIDRs []netip.Prefix, hostMTU int, rs []routes.Route) Config {
	c := Config{NodeIP: nodeIP.Unmap()}
	// The address is known even without a tunnel, so the Applier can take
	// exactly it off tunl0 when IPIP is turned off.
	for _, p := range podCIDRs {
		if a, ok := encap.TunnelAddress(p); ok {
			c.Address = a
			break
		}
	}
	if mode == "" || mode == encap.ModeNever {
		return c
	}
	if typ == "" {
		typ = encap.DefaultType
	}
	c.Type, c.MTU = typ, encap.TunnelMTU(hostMTU, typ)
	if typ != encap.TypeVXLAN {
		return c
	}
	seen := map[netip.Addr]bool{}
	for _, r := range rs {
		if r.Dev != encap.VXLANDevice || len(r.NextHops) != 1 || !r.Endpoint.IsValid() || seen[r.NextHops[0]] {
			continue
		}
		seen[r.NextHops[0]] = true
		c.Peers = append(c.Peers, Peer{VTEP: r.NextHops[0], MAC: encap.VTEPMAC(r.Endpoint), Endpoint: r.Endpoint.Unmap()})
	}
	slices.SortFunc(c.Peers, func(a, b Peer) int { return a.VTEP.Compare(b.VTEP) })
	return c
}
