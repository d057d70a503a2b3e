package plumbing

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Check verifies that an attachment is still wired as Setup left it: the pod
// interface with its /32, MTU, default route and gateway neighbour; the host
// veth as its peer with the /32 route of RouteProtocol and the pod's
// neighbour entry. MACs in want are compared when set. Every mismatch is
// reported, joined.
func Check(hostNS, podNS ns.NetNS, s Spec, want Wired) error {
	hostH, err := handleAt(hostNS)
	if err != nil {
		return err
	}
	defer hostH.Close()
	podH, err := handleAt(podNS)
	if err != nil {
		return err
	}
	defer podH.Close()

	podLink, err := podH.LinkByName(s.IfName)
	if err != nil {
		return fmt.Errorf("pod interface %q: %w", s.IfName, err)
	}
	hostLink, err := hostH.LinkByName(s.HostVeth)
	if err != nil {
		return fmt.Errorf("host veth %q: %w", s.HostVeth, err)
	}
	pa, ha := podLink.Attrs(), hostLink.Attrs()

	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if podLink.Type() != "veth" {
		fail("pod interface %s is a %s, not a veth", s.IfName, podLink.Type())
	}
	if pa.ParentIndex != ha.Index {
		fail("pod interface %s is not paired with host veth %s", s.IfName, s.HostVeth)
	}
	for _, l := range []struct {
		side  string
		attrs *netlink.LinkAttrs
		mac   net.HardwareAddr
	}{{"pod", pa, want.Pod.MAC}, {"host", ha, want.Host.MAC}} {
		if l.mac != nil && !bytes.Equal(l.attrs.HardwareAddr, l.mac) {
			fail("%s interface %s has MAC %s, want %s", l.side, l.attrs.Name, l.attrs.HardwareAddr, l.mac)
		}
		if l.attrs.MTU != s.MTU {
			fail("%s interface %s has MTU %d, want %d", l.side, l.attrs.Name, l.attrs.MTU, s.MTU)
		}
		if l.attrs.Flags&net.FlagUp == 0 {
			fail("%s interface %s is down", l.side, l.attrs.Name)
		}
	}

	// Pod: exactly its /32 (IPv6 link-locals aside).
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return podH.AddrList(podLink, unix.AF_INET) })
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list pod addresses: %w", err))...)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != prefix32(s.PodIP).String() {
		fail("pod interface %s has IPv4 addresses %v, want only %s/32", s.IfName, addrs, s.PodIP)
	}

	routes, err := retryDump(func() ([]netlink.Route, error) { return podH.RouteList(podLink, unix.AF_INET) })
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list pod routes: %w", err))...)
	}
	if !hasRoute(routes, func(r netlink.Route) bool {
		return (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.Equal(Gateway.AsSlice()) &&
			r.Flags&int(netlink.FLAG_ONLINK) != 0
	}) {
		fail("pod has no default route via %s onlink dev %s", Gateway, s.IfName)
	}
	if err := checkNeigh(podH, pa.Index, Gateway, ha.HardwareAddr); err != nil {
		errs = append(errs, fmt.Errorf("pod gateway neighbour: %w", err))
	}

	// Host: the /32 route of our protocol and the pod's neighbour entry.
	hroutes, err := retryDump(func() ([]netlink.Route, error) { return hostH.RouteList(hostLink, unix.AF_INET) })
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list host routes: %w", err))...)
	}
	if !hasRoute(hroutes, func(r netlink.Route) bool {
		return r.Dst != nil && r.Dst.String() == prefix32(s.PodIP).String() &&
			r.Protocol == RouteProtocol && r.Scope == netlink.SCOPE_LINK
	}) {
		fail("host has no route %s/32 dev %s scope link proto %d", s.PodIP, s.HostVeth, RouteProtocol)
	}
	if err := checkNeigh(hostH, ha.Index, s.PodIP, pa.HardwareAddr); err != nil {
		errs = append(errs, fmt.Errorf("host pod neighbour: %w", err))
	}
	return errors.Join(errs...)
}

func hasRoute(rs []netlink.Route, match func(netlink.Route) bool) bool {
	for _, r := range rs {
		if match(r) {
			return true
		}
	}
	return false
}

func checkNeigh(h *netlink.Handle, linkIndex int, ip netip.Addr, mac net.HardwareAddr) error {
	neighs, err := retryDump(func() ([]netlink.Neigh, error) { return h.NeighList(linkIndex, unix.AF_INET) })
	if err != nil {
		return fmt.Errorf("list neighbours: %w", err)
	}
	for _, n := range neighs {
		if !n.IP.Equal(ip.AsSlice()) {
			continue
		}
		if n.State&netlink.NUD_PERMANENT == 0 {
			return fmt.Errorf("%s is in state %s, want PERMANENT (0x80)", ip, fmt.Sprintf("%#x", n.State))
		}
		if !bytes.Equal(n.HardwareAddr, mac) {
			return fmt.Errorf("%s maps to %s, want %s", ip, n.HardwareAddr, mac)
		}
		return nil
	}
	return fmt.Errorf("no entry for %s", ip)
}
