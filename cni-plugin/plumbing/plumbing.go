// Package plumbing wires a pod to its node with a routed veth pair, the way
// Calico does: no bridge and no address on the host side. The pod gets its
// address as a /32 and a default route via the link-local gateway
// 169.254.1.1, whose MAC is pinned to the host veth by a permanent neighbour
// entry; the node reaches the pod by a /32 route on the host veth, with the
// pod's MAC pinned the same way. Neither side ever has to ARP, so no
// proxy-ARP is needed.
package plumbing

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks the host routes to pods (rtnetlink protocol number,
// shown by `ip route` as "proto 202"). meridiand's BGP-learnt routes use 201
// and pod routes 202, so neither ever prunes the other's when each
// reconciles "every route of my protocol".
const RouteProtocol netlink.RouteProtocol = 202

// Gateway is the pod's default gateway. It is never configured on any
// interface: the permanent neighbour entry in the pod maps it to the host
// veth's MAC, and the host routes whatever arrives there.
var Gateway = netip.MustParseAddr("169.254.1.1")

// hashLen hex characters of the attachment hash follow the prefix; with the
// prefix's at most 4 characters that fills IFNAMSIZ-1 = 15.
const hashLen = 11

// HostVethName returns the host-side veth name of an attachment:
// prefix + the first 11 hex characters of sha1(containerID + "/" + ifName).
// It depends only on what every CNI command carries, so DEL finds the link
// even when the runtime no longer knows the pod's netns, and two interfaces
// of one pod never share a name.
func HostVethName(prefix, containerID, ifName string) string {
	sum := sha1.Sum([]byte(containerID + "/" + ifName))
	return prefix + hex.EncodeToString(sum[:])[:hashLen]
}

// Spec is what to wire for one pod interface.
type Spec struct {
	HostVeth string     // host-side name, see HostVethName
	IfName   string     // name inside the pod, e.g. eth0
	PodIP    netip.Addr // IPv4, configured as a /32
	MTU      int        // on both ends
}

// Link describes one end of the veth pair as created.
type Link struct {
	Name  string
	MAC   net.HardwareAddr
	Index int
}

// Wired is the outcome of Setup.
type Wired struct {
	Host Link
	Pod  Link
}

// Setup creates the veth pair and configures both ends. hostNS is the node's
// namespace (the plugin's own in production), podNS the pod's. A host veth
// left by an earlier ADD of the same attachment is replaced. On failure,
// whatever Setup created is removed again.
func Setup(hostNS, podNS ns.NetNS, s Spec) (w Wired, err error) {
	if !s.PodIP.Is4() {
		return w, fmt.Errorf("pod IP %s is not IPv4", s.PodIP)
	}
	hostH, err := handleAt(hostNS)
	if err != nil {
		return w, err
	}
	defer hostH.Close()
	podH, err := handleAt(podNS)
	if err != nil {
		return w, err
	}
	defer podH.Close()

	if err := deleteLink(hostH, s.HostVeth); err != nil {
		return w, fmt.Errorf("remove stale host veth: %w", err)
	}
	if _, err := podH.LinkByName(s.IfName); err == nil {
		return w, fmt.Errorf("interface %q already exists in the pod netns", s.IfName)
	}

	// Created in the pod netns with the peer placed straight into the node's,
	// so neither end ever appears under a temporary name or in the wrong
	// namespace.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: s.IfName, MTU: s.MTU},
		PeerName:      s.HostVeth,
		PeerNamespace: netlink.NsFd(int(hostNS.Fd())),
	}
	if err := podH.LinkAdd(veth); err != nil {
		return w, fmt.Errorf("create veth %s/%s: %w", s.IfName, s.HostVeth, err)
	}
	defer func() {
		if err != nil {
			// Deleting either end removes the pair and every route and
			// neighbour entry on it.
			err = errors.Join(err, deleteLink(hostH, s.HostVeth))
		}
	}()

	podLink, err := podH.LinkByName(s.IfName)
	if err != nil {
		return w, fmt.Errorf("find pod veth: %w", err)
	}
	hostLink, err := hostH.LinkByName(s.HostVeth)
	if err != nil {
		return w, fmt.Errorf("find host veth: %w", err)
	}
	w.Pod = Link{Name: s.IfName, MAC: podLink.Attrs().HardwareAddr, Index: podLink.Attrs().Index}
	w.Host = Link{Name: s.HostVeth, MAC: hostLink.Attrs().HardwareAddr, Index: hostLink.Attrs().Index}

	if err := configureHostSysctls(hostNS, s.HostVeth); err != nil {
		return w, err
	}

	// Pod side.
	podIP := prefix32(s.PodIP)
	if err := podH.AddrReplace(podLink, &netlink.Addr{IPNet: podIP}); err != nil {
		return w, fmt.Errorf("add %s to pod veth: %w", podIP, err)
	}
	if err := podH.LinkSetUp(podLink); err != nil {
		return w, fmt.Errorf("set pod veth up: %w", err)
	}
	if err := podH.NeighSet(permanentNeigh(w.Pod.Index, Gateway, w.Host.MAC)); err != nil {
		return w, fmt.Errorf("pin gateway %s to host veth MAC: %w", Gateway, err)
	}
	if err := podH.RouteReplace(defaultRoute(w.Pod.Index)); err != nil {
		return w, fmt.Errorf("add pod default route: %w", err)
	}

	// Host side.
	if err := hostH.LinkSetUp(hostLink); err != nil {
		return w, fmt.Errorf("set host veth up: %w", err)
	}
	if err := hostH.NeighSet(permanentNeigh(w.Host.Index, s.PodIP, w.Pod.MAC)); err != nil {
		return w, fmt.Errorf("pin pod %s to pod veth MAC: %w", s.PodIP, err)
	}
	if err := hostH.RouteReplace(hostRoute(w.Host.Index, s.PodIP)); err != nil {
		return w, fmt.Errorf("add host route to %s: %w", podIP, err)
	}
	return w, nil
}

// Teardown removes an attachment's veth pair. Deleting the host end removes
// the pod end and the host route with it. If the host end is gone but the
// pod netns still has the interface (a half-made ADD), it is removed there.
// Absent links and an absent netns are not errors, so DEL can repeat.
func Teardown(hostNS ns.NetNS, podNSPath, hostVeth, ifName string) error {
	hostH, err := handleAt(hostNS)
	if err != nil {
		return err
	}
	defer hostH.Close()
	if err := deleteLink(hostH, hostVeth); err != nil {
		return fmt.Errorf("delete host veth: %w", err)
	}
	if podNSPath == "" {
		return nil
	}
	podNS, err := ns.GetNS(podNSPath)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		if errors.As(err, &notExist) || errors.As(err, &notNS) {
			return nil
		}
		return fmt.Errorf("open pod netns: %w", err)
	}
	defer podNS.Close()
	podH, err := handleAt(podNS)
	if err != nil {
		return err
	}
	defer podH.Close()
	l, err := podH.LinkByName(ifName)
	if err != nil {
		return nil //nolint:nilerr // absent is the state we want
	}
	if l.Type() != "veth" {
		// Not ours: some other plugin owns this interface.
		return nil
	}
	if err := podH.LinkDel(l); err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
		return fmt.Errorf("delete pod veth: %w", err)
	}
	return nil
}

// configureHostSysctls writes the node-side sysctls a routed veth needs:
//   - net.ipv4.ip_forward=1: the node routes between pod veths and its
//     uplinks. Written only when off, since a write flips per-device
//     forwarding settings (the ptp plugin enables it the same way).
//   - net.ipv4.conf.<hostveth>.rp_filter=1: strict reverse-path checking is
//     anti-spoofing (a pod can only send from its own address) and it passes
//     for honest traffic because the /32 route to the pod points back at this
//     very veth; rp_filter=0 is not needed. The kernel uses the max of "all"
//     and the device, so a node-wide loose (2) setting still wins.
//
// proxy_arp stays off: the pod never ARPs for 169.254.1.1 (permanent entry).
//
// /proc/sys/net resolves against the calling thread's netns, hence ns.Do.
func configureHostSysctls(hostNS ns.NetNS, hostVeth string) error {
	return hostNS.Do(func(ns.NetNS) error {
		const fwd = "/proc/sys/net/ipv4/ip_forward"
		cur, err := os.ReadFile(fwd)
		if err != nil {
			return fmt.Errorf("read ip_forward: %w", err)
		}
		if strings.TrimSpace(string(cur)) != "1" {
			if err := os.WriteFile(fwd, []byte("1"), 0o644); err != nil {
				return fmt.Errorf("enable ip_forward: %w", err)
			}
		}
		rp := filepath.Join("/proc/sys/net/ipv4/conf", hostVeth, "rp_filter")
		if err := os.WriteFile(rp, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("set rp_filter on %s: %w", hostVeth, err)
		}
		return nil
	})
}

func handleAt(n ns.NetNS) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(netns.NsHandle(int(n.Fd())), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", n.Path(), err)
	}
	return h, nil
}

// retryDump repeats a netlink dump interrupted by a concurrent change
// (netlink v1.2+ returns ErrDumpInterrupted with partial results).
func retryDump[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for range 10 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

func deleteLink(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return nil
		}
		return err
	}
	if err := h.LinkDel(l); err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func prefix32(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
}

func permanentNeigh(linkIndex int, ip netip.Addr, mac net.HardwareAddr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    linkIndex,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           ip.AsSlice(),
		HardwareAddr: mac,
	}
}

func defaultRoute(podLinkIndex int) *netlink.Route {
	return &netlink.Route{
		LinkIndex: podLinkIndex,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        Gateway.AsSlice(),
		// onlink: the gateway is in no subnet of the pod's /32.
		Flags: int(netlink.FLAG_ONLINK),
		Scope: netlink.SCOPE_UNIVERSE,
	}
}

func hostRoute(hostLinkIndex int, podIP netip.Addr) *netlink.Route {
	return &netlink.Route{
		LinkIndex: hostLinkIndex,
		Dst:       prefix32(podIP),
		Scope:     netlink.SCOPE_LINK,
		Protocol:  RouteProtocol,
	}
}
