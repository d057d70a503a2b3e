package dataplane

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/daemon/services"
)

// Conntrack deletes conntrack entries of UDP flows that a sync made stale.
type Conntrack interface {
	DeleteUDP(flows []services.StaleFlow) (deleted uint, err error)
}

// NetlinkConntrack deletes entries through a netlink handle bound to the
// node's network namespace.
type NetlinkConntrack struct {
	Handle *netlink.Handle
}

// DeleteUDP removes, in one pass over the table, every UDP entry whose
// original destination is a stale flow's frontend and, when the flow names
// an endpoint, whose reply comes from that endpoint.
func (c NetlinkConntrack) DeleteUDP(flows []services.StaleFlow) (uint, error) {
	if len(flows) == 0 {
		return 0, nil
	}
	filters := make([]netlink.CustomConntrackFilter, 0, len(flows))
	for _, f := range flows {
		filter, err := staleFilter(f)
		if err != nil {
			return 0, err
		}
		filters = append(filters, filter)
	}
	n, err := c.Handle.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filters...)
	if err != nil {
		return n, fmt.Errorf("delete stale UDP conntrack entries (%d flows): %w", len(flows), err)
	}
	return n, nil
}

func staleFilter(f services.StaleFlow) (*netlink.ConntrackFilter, error) {
	filter := &netlink.ConntrackFilter{}
	if err := filter.AddProtocol(unix.IPPROTO_UDP); err != nil {
		return nil, err
	}
	if err := filter.AddIP(netlink.ConntrackOrigDstIP, net.IP(f.Frontend.Addr().AsSlice())); err != nil {
		return nil, fmt.Errorf("conntrack filter for %s: %w", f.Frontend, err)
	}
	if err := filter.AddPort(netlink.ConntrackOrigDstPort, f.Frontend.Port()); err != nil {
		return nil, fmt.Errorf("conntrack filter for %s: %w", f.Frontend, err)
	}
	if f.Endpoint.IsValid() {
		// After DNAT the reply comes from the endpoint. netlink filters
		// cannot match the reply port, so a removed endpoint also clears
		// entries of another endpoint on the same address and frontend;
		// those clients just get a fresh choice, which is harmless.
		if err := filter.AddIP(netlink.ConntrackReplySrcIP, net.IP(f.Endpoint.Addr().AsSlice())); err != nil {
			return nil, fmt.Errorf("conntrack filter for %s via %s: %w", f.Frontend, f.Endpoint, err)
		}
	}
	return filter, nil
}
