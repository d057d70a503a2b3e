// Command meridian-cni is Meridian's CNI plugin: it gives each pod an
// address from the node's pod CIDR and wires it to the node with a routed
// veth pair (see package plumbing). It is a thin skel adapter over the
// config, ipam and plumbing packages.
//
// Nothing is logged: stdout carries only the CNI result or error, and every
// failure is reported there with a spec error code.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"runtime"
	"time"

	cnins "github.com/containernetworking/cni/pkg/ns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/meridian-net/meridian/cni-plugin/config"
	"github.com/meridian-net/meridian/cni-plugin/ipam"
	"github.com/meridian-net/meridian/cni-plugin/opstats"
	"github.com/meridian-net/meridian/cni-plugin/plumbing"
)

// Plugin-specific error codes (the spec leaves 100 and up to plugins).
const (
	// ErrCodeNoFreeAddress: the node's pod CIDR is full. Not 11
	// (ErrTryAgainLater): retrying does not help until pods go away.
	ErrCodeNoFreeAddress uint = 100
	// ErrCodeCheckFailed: CHECK found the attachment not as ADD left it.
	ErrCodeCheckFailed uint = 101
)

func init() {
	// The plugin's netlink handles are bound to namespaces explicitly, but
	// ns.Do and the main goroutine must not migrate between threads while a
	// thread is switched into a pod's netns.
	runtime.LockOSThread()
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    recorded(opstats.OpAdd, cmdAdd),
		Check:  recorded(opstats.OpCheck, cmdCheck),
		Del:    recorded(opstats.OpDel, cmdDel),
		Status: cmdStatus,
		GC:     cmdGC,
	}, version.PluginSupports(config.SupportedVersions...), "meridian-cni: routed veth pod networking for Meridian")
}

// recorded measures one operation for meridiand's metrics (package
// opstats). The record goes to the state directory of the network's
// configuration, or the default one when the configuration cannot be read;
// losing it never changes the operation's result.
func recorded(op opstats.Op, f func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		start := time.Now()
		err := f(args)
		r := opstats.Record{Op: op, Start: start, Duration: time.Since(start)}
		if err != nil {
			r.Code = uint16(min(codeOf(err), math.MaxUint16))
		}
		dir := config.DefaultStateDir
		if conf, cerr := config.Parse(args.StdinData); cerr == nil {
			dir = conf.StateDir
		}
		_ = opstats.Append(dir, r)
		return err
	}
}

func cmdAdd(args *skel.CmdArgs) (err error) {
	conf, err := config.Parse(args.StdinData)
	if err != nil {
		return err
	}
	// Vet and open the pod's netns before touching anything, so a bad
	// CNI_NETNS changes nothing. skel makes the same-netns check only after
	// ADD has wired the node's own namespace.
	if same, nerr := cnins.CheckNetNS(args.Netns); nerr == nil && same {
		return types.NewError(types.ErrInvalidNetNS, "CNI_NETNS is the plugin's own netns, not a pod's", "")
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("open pod netns %q: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return fmt.Errorf("open host netns: %w", err)
	}
	defer hostNS.Close()

	pool, err := ipam.PodCIDR(conf.StateDir)
	if errors.Is(err, ipam.ErrNoPodCIDR) {
		return types.NewError(types.ErrTryAgainLater, err.Error(), "meridiand writes the node's pod CIDR once the node has one")
	}
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	store := ipam.NewStore(conf.StateDir)
	att := ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	podIP, fresh, err := store.Allocate(pool, att)
	if errors.Is(err, ipam.ErrExhausted) {
		return types.NewError(ErrCodeNoFreeAddress, err.Error(), "")
	}
	if err != nil {
		return fmt.Errorf("allocate pod address: %w", err)
	}

	hostVeth := plumbing.HostVethName(conf.HostVethPrefix, args.ContainerID, args.IfName)
	defer func() {
		if err == nil {
			return
		}
		// Setup removes what it made itself; this also covers a failure
		// after it (printing the result). The pod-side interface is left
		// alone: if Setup failed because one existed, it is not ours.
		cleanup := plumbing.Teardown(hostNS, "", hostVeth, args.IfName)
		if fresh {
			// An address this ADD did not reserve belongs to an earlier
			// ADD of the same attachment; its DEL releases it.
			_, rerr := store.Release(att)
			cleanup = errors.Join(cleanup, rerr)
		}
		if cleanup != nil {
			err = types.NewError(codeOf(err), err.Error(), fmt.Sprintf("cleanup after failed ADD: %v", cleanup))
		}
	}()

	wired, err := plumbing.Setup(hostNS, podNS, plumbing.Spec{
		HostVeth: hostVeth,
		IfName:   args.IfName,
		PodIP:    podIP,
		MTU:      conf.MTU,
	})
	if err != nil {
		return fmt.Errorf("wire pod: %w", err)
	}
	return types.PrintResult(newResult(conf, args, podIP, wired), conf.CNIVersion)
}

func newResult(conf *config.NetConf, args *skel.CmdArgs, podIP netip.Addr, w plumbing.Wired) *types100.Result {
	// Interface MTU is a 1.1.0 field; leave it out for older readers.
	mtu := 0
	if conf.CNIVersion == "1.1.0" {
		mtu = conf.MTU
	}
	gw := plumbing.Gateway.AsSlice()
	return &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: w.Host.Name, Mac: w.Host.MAC.String(), Mtu: mtu},
			{Name: w.Pod.Name, Mac: w.Pod.MAC.String(), Mtu: mtu, Sandbox: args.Netns},
		},
		IPs: []*types100.IPConfig{{
			Interface: types100.Int(1),
			Address:   net.IPNet{IP: podIP.AsSlice(), Mask: net.CIDRMask(32, 32)},
			Gateway:   gw,
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw}},
	}
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := config.Parse(args.StdinData)
	if err != nil {
		return err
	}
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return fmt.Errorf("open host netns: %w", err)
	}
	defer hostNS.Close()
	hostVeth := plumbing.HostVethName(conf.HostVethPrefix, args.ContainerID, args.IfName)
	// Links first, so the address is not free while a route still leads to
	// the old pod. Both steps are idempotent; the address is released even
	// if the links could not be removed, since a later ADD replaces the
	// route of a reused address anyway.
	terr := plumbing.Teardown(hostNS, args.Netns, hostVeth, args.IfName)
	_, rerr := ipam.NewStore(conf.StateDir).Release(ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err := errors.Join(terr, rerr); err != nil {
		return fmt.Errorf("delete attachment: %w", err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := config.Parse(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult", "")
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("convert prevResult: %v", err), "")
	}
	hostVeth := plumbing.HostVethName(conf.HostVethPrefix, args.ContainerID, args.IfName)
	want, podIP, err := expected(prev, args, hostVeth)
	if err != nil {
		return types.NewError(ErrCodeCheckFailed, err.Error(), "")
	}

	held, ok, err := ipam.NewStore(conf.StateDir).Lookup(ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		return fmt.Errorf("look up allocation: %w", err)
	}
	if !ok || held != podIP {
		return types.NewError(ErrCodeCheckFailed, fmt.Sprintf("address %s is not allocated to this attachment (allocation: %v)", podIP, held), "")
	}

	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("open pod netns %q: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return fmt.Errorf("open host netns: %w", err)
	}
	defer hostNS.Close()
	spec := plumbing.Spec{HostVeth: hostVeth, IfName: args.IfName, PodIP: podIP, MTU: conf.MTU}
	if err := plumbing.Check(hostNS, podNS, spec, want); err != nil {
		return types.NewError(ErrCodeCheckFailed, err.Error(), "")
	}
	return nil
}

// expected extracts from prevResult what ADD reported: both interfaces with
// their MACs and the pod's IPv4 address.
func expected(prev *types100.Result, args *skel.CmdArgs, hostVeth string) (plumbing.Wired, netip.Addr, error) {
	var w plumbing.Wired
	podIdx := -1
	for i, intf := range prev.Interfaces {
		var l *plumbing.Link
		switch {
		case intf.Name == args.IfName && intf.Sandbox != "":
			if intf.Sandbox != args.Netns {
				return w, netip.Addr{}, fmt.Errorf("prevResult sandbox %q is not CNI_NETNS %q", intf.Sandbox, args.Netns)
			}
			l, podIdx = &w.Pod, i
		case intf.Name == hostVeth && intf.Sandbox == "":
			l = &w.Host
		default:
			continue
		}
		l.Name = intf.Name
		if intf.Mac != "" {
			mac, err := net.ParseMAC(intf.Mac)
			if err != nil {
				return w, netip.Addr{}, fmt.Errorf("prevResult MAC of %s: %w", intf.Name, err)
			}
			l.MAC = mac
		}
	}
	if podIdx < 0 {
		return w, netip.Addr{}, fmt.Errorf("prevResult has no interface %q in %q", args.IfName, args.Netns)
	}
	if w.Host.Name == "" {
		return w, netip.Addr{}, fmt.Errorf("prevResult has no host interface %q", hostVeth)
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface == nil || *ipc.Interface != podIdx {
			continue
		}
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is4() {
			return w, a.Unmap(), nil
		}
	}
	return w, netip.Addr{}, fmt.Errorf("prevResult has no IPv4 address on %q", args.IfName)
}

func cmdStatus(args *skel.CmdArgs) error {
	conf, err := config.Parse(args.StdinData)
	if err != nil {
		return err
	}
	if _, err := ipam.PodCIDR(conf.StateDir); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	return nil
}

// cmdGC frees the addresses and host veths of every attachment the runtime
// no longer lists as valid (CNI 1.1).
func cmdGC(args *skel.CmdArgs) error {
	conf, err := config.Parse(args.StdinData)
	if err != nil {
		return err
	}
	var gc struct {
		Valid []struct {
			ContainerID string `json:"containerID"`
			IfName      string `json:"ifname"`
		} `json:"cni.dev/valid-attachments"`
	}
	if err := json.Unmarshal(args.StdinData, &gc); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode valid attachments: %v", err), "")
	}
	valid := make([]ipam.Attachment, 0, len(gc.Valid))
	for _, v := range gc.Valid {
		valid = append(valid, ipam.Attachment{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return fmt.Errorf("open host netns: %w", err)
	}
	defer hostNS.Close()
	freed, err := ipam.NewStore(conf.StateDir).GC(valid)
	if err != nil {
		return fmt.Errorf("release stale allocations: %w", err)
	}
	var errs []error
	for _, al := range freed {
		if al.ContainerID == "" {
			continue // unreadable reservation: no veth name to derive
		}
		hostVeth := plumbing.HostVethName(conf.HostVethPrefix, al.ContainerID, al.IfName)
		if err := plumbing.Teardown(hostNS, "", hostVeth, al.IfName); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func codeOf(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return types.ErrInternal
}
