package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/daemon/encap"
)

// Applier programs the tunnel devices in the network namespace of its
// handle. It owns Meridian's VXLAN device (by name) with every address,
// neighbour and forwarding entry on it, and, while IPIP is in use, tunl0's
// addresses, MTU and state, as Calico does; tunl0 itself belongs to the ipip
// module and is never deleted.
type Applier struct {
	h   *netlink.Handle
	log *slog.Logger
	mu  sync.Mutex
}

// NewApplier returns an Applier working through h. A nil log discards.
func NewApplier(h *netlink.Handle, log *slog.Logger) *Applier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Applier{h: h, log: log.With("subsys", "tunnel")}
}

// Apply makes the tunnel devices match c. It is idempotent: a second Apply
// of the same Config changes nothing. Errors are joined; what could be
// applied is.
func (a *Applier) Apply(c Config) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	if c.Type != encap.TypeVXLAN {
		errs = append(errs, a.removeVXLAN())
	}
	if c.Type != encap.TypeIPIP {
		errs = append(errs, a.releaseIPIP(c.Address))
	}
	switch c.Type {
	case encap.TypeIPIP:
		errs = append(errs, a.ensureIPIP(c))
	case encap.TypeVXLAN:
		errs = append(errs, a.ensureVXLAN(c))
	}
	return errors.Join(errs...)
}

func (a *Applier) ensureIPIP(c Config) error {
	l, err := a.h.LinkByName(encap.IPIPDevice)
	if err != nil {
		// The ipip module creates tunl0 in every namespace as it loads
		// (unless net.core.fb_tunnels_only_for_init_net says otherwise);
		// adding an ipip link loads the module if it can be.
		if err := a.h.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: encap.IPIPDevice}}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create %s (is the ipip kernel module available?): %w", encap.IPIPDevice, err)
		}
		if l, err = a.h.LinkByName(encap.IPIPDevice); err != nil {
			return fmt.Errorf("find %s: %w", encap.IPIPDevice, err)
		}
		a.log.Info("created tunnel device", "device", encap.IPIPDevice)
	}
	if _, ok := l.(*netlink.Iptun); !ok {
		return fmt.Errorf("%s is a %s link, not ipip", encap.IPIPDevice, l.Type())
	}
	return a.ensureLink(l, c)
}

// releaseIPIP takes Meridian's address off tunl0 and sets it down when
// nothing else is configured on it.
func (a *Applier) releaseIPIP(addr netip.Addr) error {
	l, err := a.h.LinkByName(encap.IPIPDevice)
	if err != nil {
		return nil // no ipip module: nothing to release
	}
	addrs, err := a.h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", encap.IPIPDevice, err)
	}
	left := 0
	for _, ad := range addrs {
		if addr.IsValid() && ad.IP.Equal(addr.AsSlice()) {
			if err := a.h.AddrDel(l, &ad); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("remove %s from %s: %w", ad.IPNet, encap.IPIPDevice, err)
			}
			a.log.Info("released tunnel device", "device", encap.IPIPDevice, "address", ad.IPNet.String())
			continue
		}
		left++
	}
	if left == 0 && l.Attrs().Flags&net.FlagUp != 0 {
		if err := a.h.LinkSetDown(l); err != nil {
			return fmt.Errorf("set %s down: %w", encap.IPIPDevice, err)
		}
	}
	return nil
}

func (a *Applier) removeVXLAN() error {
	l, err := a.h.LinkByName(encap.VXLANDevice)
	if err != nil {
		return nil
	}
	if err := a.h.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", encap.VXLANDevice, err)
	}
	a.log.Info("deleted tunnel device", "device", encap.VXLANDevice)
	return nil
}

func (a *Applier) ensureVXLAN(c Config) error {
	if !c.NodeIP.Is4() {
		return fmt.Errorf("%s: node address %s is not IPv4", encap.VXLANDevice, c.NodeIP)
	}
	mac := encap.VTEPMAC(c.NodeIP)
	want := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: encap.VXLANDevice, MTU: c.MTU, HardwareAddr: mac},
		VxlanId:   encap.VXLANVNI,
		SrcAddr:   c.NodeIP.AsSlice(),
		Port:      encap.VXLANPort,
		// Forwarding entries come from BGP only: the kernel must neither
		// learn source MACs from received frames nor flood unknown ones.
		Learning: false,
	}
	l, err := a.h.LinkByName(encap.VXLANDevice)
	if err == nil {
		v, ok := l.(*netlink.Vxlan)
		if !ok || v.VxlanId != want.VxlanId || v.Port != want.Port || !v.SrcAddr.Equal(want.SrcAddr) || v.Learning {
			// Not changeable in place: recreate.
			a.log.Info("recreating tunnel device with other parameters", "device", encap.VXLANDevice)
			if err := a.h.LinkDel(l); err != nil {
				return fmt.Errorf("delete %s: %w", encap.VXLANDevice, err)
			}
			l = nil
		}
	} else {
		l = nil
	}
	if l == nil {
		if err := a.h.LinkAdd(want); err != nil {
			return fmt.Errorf("create %s: %w", encap.VXLANDevice, err)
		}
		if l, err = a.h.LinkByName(encap.VXLANDevice); err != nil {
			return fmt.Errorf("find %s: %w", encap.VXLANDevice, err)
		}
		a.log.Info("created tunnel device", "device", encap.VXLANDevice, "vni", encap.VXLANVNI, "port", encap.VXLANPort, "mac", mac.String())
	}
	if !bytes.Equal(l.Attrs().HardwareAddr, mac) {
		if err := a.h.LinkSetHardwareAddr(l, mac); err != nil {
			return fmt.Errorf("set %s MAC: %w", encap.VXLANDevice, err)
		}
	}
	if err := a.ensureLink(l, c); err != nil {
		return err
	}
	return errors.Join(a.syncNeighbours(l.Attrs().Index, c.Peers), a.syncFDB(l.Attrs().Index, c.Peers))
}

// ensureLink sets the MTU, the one address and up.
func (a *Applier) ensureLink(l netlink.Link, c Config) error {
	name := l.Attrs().Name
	if c.MTU > 0 && l.Attrs().MTU != c.MTU {
		if err := a.h.LinkSetMTU(l, c.MTU); err != nil {
			return fmt.Errorf("set %s MTU %d: %w", name, c.MTU, err)
		}
	}
	addrs, err := a.h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", name, err)
	}
	have := false
	for _, ad := range addrs {
		ones, _ := ad.Mask.Size()
		if c.Address.IsValid() && ad.IP.Equal(c.Address.AsSlice()) && ones == 32 {
			have = true
			continue
		}
		if err := a.h.AddrDel(l, &ad); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove %s from %s: %w", ad.IPNet, name, err)
		}
	}
	if !have && c.Address.IsValid() {
		ad := &netlink.Addr{IPNet: &net.IPNet{IP: c.Address.AsSlice(), Mask: net.CIDRMask(32, 32)}}
		if err := a.h.AddrReplace(l, ad); err != nil {
			return fmt.Errorf("add %s to %s: %w", ad.IPNet, name, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := a.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", name, err)
		}
	}
	return nil
}

// syncNeighbours makes the permanent ARP entries of the VXLAN device map
// each peer's VTEP address to its MAC, and removes every other entry on it.
func (a *Applier) syncNeighbours(link int, peers []Peer) error {
	want := map[netip.Addr]net.HardwareAddr{}
	for _, p := range peers {
		want[p.VTEP] = p.MAC
	}
	have, err := a.h.NeighList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", encap.VXLANDevice, err)
	}
	var errs []error
	ok := map[netip.Addr]bool{}
	for _, n := range have {
		ip, _ := netip.AddrFromSlice(n.IP)
		ip = ip.Unmap()
		if mac, wanted := want[ip]; wanted && bytes.Equal(n.HardwareAddr, mac) && n.State == netlink.NUD_PERMANENT {
			ok[ip] = true
			continue
		}
		if _, wanted := want[ip]; wanted {
			continue // replaced below
		}
		if err := a.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove neighbour %s from %s: %w", n.IP, encap.VXLANDevice, err))
		}
	}
	for _, p := range peers {
		if ok[p.VTEP] {
			continue
		}
		n := &netlink.Neigh{LinkIndex: link, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
			IP: p.VTEP.AsSlice(), HardwareAddr: p.MAC}
		if err := a.h.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("set neighbour %s lladdr %s on %s: %w", p.VTEP, p.MAC, encap.VXLANDevice, err))
			continue
		}
		a.log.Debug("set VXLAN neighbour", "vtep", p.VTEP, "mac", p.MAC.String())
	}
	return errors.Join(errs...)
}

// syncFDB makes the VXLAN device's forwarding database send each peer's MAC
// to its node (one permanent entry per MAC), and removes every other entry.
func (a *Applier) syncFDB(link int, peers []Peer) error {
	want := map[string]netip.Addr{}
	for _, p := range peers {
		want[p.MAC.String()] = p.Endpoint
	}
	have, err := a.h.NeighList(link, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("list forwarding entries of %s: %w", encap.VXLANDevice, err)
	}
	var errs []error
	ok := map[string]bool{}
	for _, n := range have {
		if n.LinkIndex != link {
			continue
		}
		mac := n.HardwareAddr.String()
		ip, _ := netip.AddrFromSlice(n.IP)
		if dst, wanted := want[mac]; wanted && ip.Unmap() == dst && n.State&netlink.NUD_PERMANENT != 0 && !ok[mac] {
			ok[mac] = true
			continue
		}
		del := &netlink.Neigh{LinkIndex: link, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, HardwareAddr: n.HardwareAddr, IP: n.IP}
		if err := a.h.NeighDel(del); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove forwarding entry %s dst %s from %s: %w", mac, n.IP, encap.VXLANDevice, err))
		}
	}
	for _, p := range peers {
		if ok[p.MAC.String()] {
			continue
		}
		n := &netlink.Neigh{LinkIndex: link, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT,
			IP: p.Endpoint.AsSlice(), HardwareAddr: p.MAC}
		if err := a.h.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("set forwarding entry %s dst %s on %s: %w", p.MAC, p.Endpoint, encap.VXLANDevice, err))
			continue
		}
		a.log.Debug("set VXLAN forwarding entry", "mac", p.MAC.String(), "endpoint", p.Endpoint)
	}
	return errors.Join(errs...)
}

// Connected lists the IPv4 subnets of the links in h's namespace: where a
// next hop is one hop away. Host-scope addresses (loopback) and lone /32s
// (the tunnel devices' own addresses) connect nothing and are left out; a
// point-to-point address counts with its peer.
func Connected(h *netlink.Handle) ([]netip.Prefix, error) {
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var out []netip.Prefix
	for _, ad := range addrs {
		if ad.Scope == int(netlink.SCOPE_HOST) || ad.IPNet == nil {
			continue
		}
		n := ad.IPNet
		if ad.Peer != nil {
			n = ad.Peer
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		ones, bits := n.Mask.Size()
		if !ok || bits != 32 || (ones == 32 && ad.Peer == nil) {
			continue
		}
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones).Masked())
	}
	return out, nil
}

// LinkMTU returns the MTU of the link that holds addr (the node's address):
// the tunnels' packets leave through it.
func LinkMTU(h *netlink.Handle, addr netip.Addr) (int, error) {
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return 0, fmt.Errorf("list addresses: %w", err)
	}
	for _, ad := range addrs {
		if ad.IPNet != nil && ad.IP.Equal(addr.AsSlice()) {
			l, err := h.LinkByIndex(ad.LinkIndex)
			if err != nil {
				return 0, fmt.Errorf("link of %s: %w", addr, err)
			}
			return l.Attrs().MTU, nil
		}
	}
	return 0, fmt.Errorf("no link holds %s", addr)
}

// Connected lists the connected subnets of the Applier's namespace (see
// Connected).
func (a *Applier) Connected() ([]netip.Prefix, error) { return Connected(a.h) }

// LinkMTU returns the MTU of the link holding addr in the Applier's
// namespace (see LinkMTU).
func (a *Applier) LinkMTU(addr netip.Addr) (int, error) { return LinkMTU(a.h, addr) }
