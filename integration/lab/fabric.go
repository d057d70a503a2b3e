package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// netlinkHandle returns a netlink handle bound to the named namespace, so no
// thread ever has to switch namespaces to program it.
func netlinkHandle(name string) (*netlink.Handle, error) {
	ns, err := openNetns(name)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink handle for %s: %w", name, err)
	}
	return h, nil
}

// hostNetns opens the namespace the lab is driven from: the calling
// thread's, on a locked thread. Every thread of this process is in it, as
// createNetns returns threads to their namespace; /proc/PID/ns/net is not
// used because it shows only the main thread's.
func hostNetns() (netns.NsHandle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	h, err := netns.Get()
	if err != nil {
		return netns.None(), fmt.Errorf("open host netns: %w", err)
	}
	return h, nil
}

// hostHandle opens the host namespace and a netlink handle bound to it;
// close releases both.
func hostHandle() (netns.NsHandle, *netlink.Handle, func(), error) {
	ns, err := hostNetns()
	if err != nil {
		return netns.None(), nil, nil, err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return netns.None(), nil, nil, fmt.Errorf("netlink handle for host: %w", err)
	}
	return ns, h, func() { h.Close(); ns.Close() }, nil
}

// setLoopbackUp brings lo up in a namespace; etcd and the components'
// health endpoints listen on 127.0.0.1.
func setLoopbackUp(h *netlink.Handle) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// createFabric makes the fabric namespace with the bridge every other
// namespace attaches to.
func createFabric() error {
	if err := createNetns(FabricNetns); err != nil {
		return err
	}
	h, err := netlinkHandle(FabricNetns)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := setLoopbackUp(h); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName, Flags: net.FlagUp}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s: %w", BridgeName, err)
	}
	return nil
}

// createEndpointNetns makes a namespace with lo up and its eth0 on the
// bridge, at addr within LabSubnet.
func createEndpointNetns(name, port string, addr netip.Addr) error {
	if err := createNetns(name); err != nil {
		return err
	}
	ns, err := openNetns(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle for %s: %w", name, err)
	}
	defer h.Close()
	if err := setLoopbackUp(h); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return attachToBridge(port, ns, h, NodeLink, addr)
}

// attachHost gives the host its one link into the lab.
func attachHost() error {
	ns, h, closeHost, err := hostHandle()
	if err != nil {
		return err
	}
	defer closeHost()
	return attachToBridge(hostPortName, ns, h, HostLink, HostIP)
}

// attachToBridge creates a veth pair whose end port is a bridge port in the
// fabric and whose end peer lives in peerNS (reached through peerH), and
// gives peer addr/24. The peer is created directly in its namespace, so its
// name only has to be unique there.
func attachToBridge(port string, peerNS netns.NsHandle, peerH *netlink.Handle, peer string, addr netip.Addr) error {
	return attachToSegment(BridgeName, port, peerNS, peerH, peer, netip.PrefixFrom(addr, LabSubnet.Bits()))
}

// attachToSegment is attachToBridge for any bridge in the fabric, with
// the peer's address and prefix length in pfx.
func attachToSegment(bridge, port string, peerNS netns.NsHandle, peerH *netlink.Handle, peer string, pfx netip.Prefix) error {
	fab, err := netlinkHandle(FabricNetns)
	if err != nil {
		return err
	}
	defer fab.Close()
	br, err := fab.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", bridge, err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port, MasterIndex: br.Attrs().Index, Flags: net.FlagUp},
		PeerName:      peer,
		PeerNamespace: netlink.NsFd(peerNS),
	}
	if err := fab.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s/%s: %w", port, peer, err)
	}
	link, err := peerH.LinkByName(peer)
	if err != nil {
		return fmt.Errorf("find %s: %w", peer, err)
	}
	if err := peerH.AddrAdd(link, &netlink.Addr{IPNet: prefixToIPNet(pfx)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", pfx, peer, err)
	}
	if err := peerH.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", peer, err)
	}
	return nil
}

// deleteHostLink removes mlab0; absent is fine. Deleting the fabric
// namespace takes the veth pair with it, so this only matters when the
// fabric is already gone or the pair was left half-made.
func deleteHostLink() error {
	_, h, closeHost, err := hostHandle()
	if err != nil {
		return err
	}
	defer closeHost()
	link, err := h.LinkByName(HostLink)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("find %s: %w", HostLink, err)
	}
	if err := h.LinkDel(link); err != nil {
		return fmt.Errorf("delete %s: %w", HostLink, err)
	}
	return nil
}

// hostLinkExists reports whether mlab0 is present in the host namespace.
func hostLinkExists() (bool, error) {
	_, h, closeHost, err := hostHandle()
	if err != nil {
		return false, err
	}
	defer closeHost()
	_, err = h.LinkByName(HostLink)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return false, nil
	}
	return err == nil, err
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
