package routes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/daemon/encap"
)

// dumpAttempts bounds the retries of a route dump the kernel marked
// interrupted (NLM_F_DUMP_INTR: the table changed mid-dump, so the result
// may be incomplete; see netlink.ErrDumpInterrupted).
const dumpAttempts = 5

// verboseChanges is the largest change whose routes are logged one by one
// at Info.
const verboseChanges = 32

// configFlags are the next-hop flags that are configuration. Every other
// RTNH_F_* bit (dead, linkdown, offload, trap, unresolved) is state the
// kernel or a driver sets, and must not make an installed route look wrong.
const configFlags = unix.RTNH_F_ONLINK | unix.RTNH_F_PERVASIVE

// ErrInvalidRoute is returned (wrapped) by Apply for a desired route it
// cannot express: a non-IPv4 or unmasked destination, or a route that is
// neither a blackhole nor has a valid next hop.
var ErrInvalidRoute = errors.New("invalid route")

// Result counts what one Apply did, for logs and metrics.
type Result struct {
	// Added counts routes installed where the kernel had none of ours.
	Added int
	// Replaced counts routes of ours changed in place (next hops, type).
	Replaced int
	// Removed counts routes of ours deleted because prune was set.
	Removed int
	// Kept counts desired routes already correct in the kernel.
	Kept int
	// Unpruned counts routes of ours no longer desired that stayed because
	// prune was false.
	Unpruned int
	// Failed counts desired routes the kernel refused or that could not be
	// expressed, and removals that failed; the error says why.
	Failed int
}

// Changed is the number of kernel changes Apply made.
func (r Result) Changed() int { return r.Added + r.Replaced + r.Removed }

// Applier keeps Meridian's routes (protocol Protocol, IPv4, main table) in
// the network namespace of its handle equal to a desired set. It is the
// only writer of those routes; it never modifies or deletes a route with
// another protocol.
type Applier struct {
	h   *netlink.Handle
	log *slog.Logger
	// mu serialises Apply so two syncs never interleave their diffs.
	mu sync.Mutex
}

// NewApplier returns an Applier working through h, which decides the
// network namespace (see netlink.NewHandleAt). A nil log discards.
func NewApplier(h *netlink.Handle, log *slog.Logger) *Applier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Applier{h: h, log: log.With("subsys", "routes")}
}

// kernelState is one dump of the main table as the Applier sees it.
type kernelState struct {
	// current holds our routes in the slot the Applier writes (TOS 0,
	// metric 0), one per destination; an unrepresentable one is a Route
	// with neither next hops nor Blackhole, so Diff replaces or removes it.
	current []Route
	// owned maps those destinations to the kernel's routes.
	owned map[netip.Prefix]netlink.Route
	// strays are our routes in any other slot. The Applier never creates
	// them, so they are only ever pruned.
	strays []netlink.Route
	// foreign maps destinations whose slot a route with another protocol
	// holds; installing there would overwrite it.
	foreign map[netip.Prefix]netlink.RouteProtocol
	// devs names Meridian's tunnel devices by link index.
	devs map[int]string
}

// Current lists Meridian's IPv4 routes in the main table, sorted by
// destination. A route with this protocol that Meridian would not have
// written (an unsupported type or flags) comes back with neither next hops
// nor Blackhole; routes of ours with a non-zero metric or TOS are left out
// (Apply prunes them).
func (a *Applier) Current() ([]Route, error) {
	st, err := a.snapshot()
	if err != nil {
		return nil, err
	}
	return st.current, nil
}

func (a *Applier) snapshot() (kernelState, error) {
	krs, err := a.dump()
	if err != nil {
		return kernelState{}, err
	}
	// Tunnel routes name their device by index; only Meridian's tunnel
	// devices are resolved, anything else reads back as unexpected.
	devs := map[int]string{}
	for _, name := range []string{encap.IPIPDevice, encap.VXLANDevice} {
		if l, err := a.h.LinkByName(name); err == nil {
			devs[l.Attrs().Index] = name
		}
	}
	st := kernelState{
		owned:   map[netip.Prefix]netlink.Route{},
		foreign: map[netip.Prefix]netlink.RouteProtocol{},
		devs:    devs,
	}
	for _, kr := range krs {
		dst, ok := kernelDst(kr)
		if !ok {
			continue
		}
		slot := kr.Tos == 0 && kr.Priority == 0
		switch {
		case kr.Protocol != Protocol:
			if slot {
				st.foreign[dst] = kr.Protocol
			}
		case slot:
			if _, dup := st.owned[dst]; dup {
				// IPv4 keeps one route per slot unless appended
				// (NLM_F_APPEND); a second one is pruned as a stray.
				st.strays = append(st.strays, kr)
				continue
			}
			st.owned[dst] = kr
			st.current = append(st.current, fromKernel(dst, kr, devs))
		default:
			st.strays = append(st.strays, kr)
		}
	}
	slices.SortFunc(st.current, func(a, b Route) int { return comparePrefix(a.Dst, b.Dst) })
	return st, nil
}

// dump lists the IPv4 main table, retrying while the kernel reports the
// dump as interrupted.
func (a *Applier) dump() ([]netlink.Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN}
	var err error
	for range dumpAttempts {
		var krs []netlink.Route
		krs, err = a.h.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			if err != nil {
				return nil, fmt.Errorf("list routes: %w", err)
			}
			return krs, nil
		}
	}
	return nil, fmt.Errorf("list routes: interrupted %d times: %w", dumpAttempts, err)
}

// Apply makes Meridian's routes in the kernel match desired, changing only
// the difference: it installs and replaces first, so traffic never loses a
// route it is about to get back, then, only if prune is set, deletes the
// routes of ours that are not desired. meridiand passes prune=false until
// BGP has converged after a restart, so routes adopted from the previous
// run are not removed before their paths are re-learned. Apply(nil, true)
// removes everything Meridian owns.
//
// Routes are handled independently: one the kernel refuses (for example
// ENETUNREACH when no connected route covers its next hop) is reported in
// the joined error and counted as Failed, and the rest are still applied.
func (a *Applier) Apply(desired []Route, prune bool) (Result, error) {
	a.mu.Lock()
	defer a.mu.Unlock()

	var res Result
	st, err := a.snapshot()
	if err != nil {
		return res, err
	}
	add, replace, remove := Diff(desired, st.current)
	unique := map[netip.Prefix]struct{}{}
	for _, d := range desired {
		unique[d.Dst] = struct{}{}
	}
	res.Kept = len(unique) - len(add) - len(replace)

	// Each route of a small change is logged at Info, which is what an
	// operator reading a node's log wants; a change of thousands (a ToR
	// sending a full table) goes to Debug route by route, or the log would
	// hold one line per prefix (100k in the BGP benchmark). The caller logs
	// the counts either way.
	level := slog.LevelInfo
	if len(add)+len(replace)+len(remove) > verboseChanges {
		level = slog.LevelDebug
	}
	ctx := context.Background()
	var errs []error
	for _, r := range add {
		if proto, ok := st.foreign[r.Dst]; ok {
			res.Failed++
			errs = append(errs, fmt.Errorf("install route %s: the main table holds a %s route for %s; not replacing another owner's route: %w",
				r.target(), proto, r.Dst, unix.EEXIST))
			continue
		}
		// RouteAdd (NLM_F_EXCL) rather than replace: should a route of
		// another protocol have appeared in the slot since the dump, the
		// kernel refuses instead of overwriting it.
		if err := a.install(r, a.h.RouteAdd); err != nil {
			res.Failed++
			errs = append(errs, err)
			continue
		}
		res.Added++
		a.log.Log(ctx, level, "installed route", "prefix", r.Dst, "route", r.String())
	}
	for _, r := range replace {
		if err := a.install(r, a.h.RouteReplace); err != nil {
			res.Failed++
			errs = append(errs, err)
			continue
		}
		res.Replaced++
		a.log.Log(ctx, level, "replaced route", "prefix", r.Dst, "route", r.String(), "was", fromKernelString(st.owned[r.Dst], st.devs))
	}

	var unwanted []netlink.Route
	for _, r := range remove {
		unwanted = append(unwanted, st.owned[r.Dst])
	}
	unwanted = append(unwanted, st.strays...)
	if !prune {
		res.Unpruned = len(unwanted)
		if len(unwanted) > 0 {
			a.log.Debug("keeping unwanted routes until pruning is allowed", "count", len(unwanted))
		}
	} else {
		for _, kr := range unwanted {
			if err := a.remove(kr, st.devs); err != nil {
				res.Failed++
				errs = append(errs, err)
				continue
			}
			res.Removed++
			dst, _ := kernelDst(kr)
			a.log.Log(ctx, level, "removed route", "prefix", dst, "route", fromKernelString(kr, st.devs))
		}
	}
	a.log.Debug("applied routes", "added", res.Added, "replaced", res.Replaced, "removed", res.Removed,
		"kept", res.Kept, "unpruned", res.Unpruned, "failed", res.Failed)
	return res, errors.Join(errs...)
}

func (a *Applier) install(r Route, op func(*netlink.Route) error) error {
	link := 0
	if r.Dev != "" {
		l, err := a.h.LinkByName(r.Dev)
		if err != nil {
			return fmt.Errorf("install route %s: tunnel device %s: %w", r.target(), r.Dev, err)
		}
		link = l.Attrs().Index
	}
	kr, err := toKernel(r, link)
	if err != nil {
		return fmt.Errorf("install route %s: %w", r.target(), err)
	}
	if err := op(kr); err != nil {
		if errors.Is(err, unix.ENETUNREACH) {
			return fmt.Errorf("install route %s: next hop not on a connected subnet: %w", r.target(), err)
		}
		return fmt.Errorf("install route %s: %w", r.target(), err)
	}
	return nil
}

func (a *Applier) remove(kr netlink.Route, devs map[int]string) error {
	// Only the key and the protocol: the kernel then deletes exactly our
	// route in that slot, whatever its next hops became, and never one of
	// another protocol (fib_table_delete matches fc_protocol).
	del := &netlink.Route{
		Dst:      kr.Dst,
		Table:    unix.RT_TABLE_MAIN,
		Protocol: Protocol,
		Priority: kr.Priority,
		Tos:      kr.Tos,
	}
	if del.Dst == nil {
		del.Dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	}
	if err := a.h.RouteDel(del); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("remove route %s: %w", fromKernelString(kr, devs), err)
	}
	return nil
}

// toKernel builds the netlink route Apply writes for r; link is the index of
// r.Dev.
func toKernel(r Route, link int) (*netlink.Route, error) {
	if !r.Dst.IsValid() || !r.Dst.Addr().Is4() || r.Dst != r.Dst.Masked() {
		return nil, fmt.Errorf("destination %s must be a masked IPv4 prefix: %w", r.Dst, ErrInvalidRoute)
	}
	kr := &netlink.Route{
		Dst:      &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), 32)},
		Table:    unix.RT_TABLE_MAIN,
		Protocol: Protocol,
		Scope:    netlink.SCOPE_UNIVERSE,
		Type:     unix.RTN_UNICAST,
	}
	if r.Blackhole {
		if len(r.NextHops) > 0 {
			return nil, fmt.Errorf("blackhole with next hops: %w", ErrInvalidRoute)
		}
		kr.Type = unix.RTN_BLACKHOLE
		return kr, nil
	}
	if len(r.NextHops) == 0 {
		return nil, fmt.Errorf("no next hop: %w", ErrInvalidRoute)
	}
	for _, nh := range r.NextHops {
		if !validNextHop(nh) {
			return nil, fmt.Errorf("next hop %s: %w", nh, ErrInvalidRoute)
		}
	}
	if r.Dev != "" {
		if len(r.NextHops) != 1 || link <= 0 {
			return nil, fmt.Errorf("tunnel route needs one next hop and its device: %w", ErrInvalidRoute)
		}
		// onlink: the gateway (the remote node for IPIP, its VTEP
		// address for VXLAN) is on no subnet of the tunnel device; the
		// kernel takes it as directly reachable through it.
		kr.Gw = r.NextHops[0].AsSlice()
		kr.LinkIndex = link
		kr.Flags = int(netlink.FLAG_ONLINK)
		return kr, nil
	}
	if len(r.NextHops) == 1 {
		kr.Gw = r.NextHops[0].AsSlice()
		return kr, nil
	}
	for _, nh := range r.NextHops {
		// No LinkIndex: the kernel resolves each gateway's device through
		// the connected routes, as for a single next hop.
		kr.MultiPath = append(kr.MultiPath, &netlink.NexthopInfo{Gw: nh.AsSlice()})
	}
	return kr, nil
}

// kernelDst returns an IPv4 route's destination; the kernel omits RTA_DST
// for a default route.
func kernelDst(kr netlink.Route) (netip.Prefix, bool) {
	if kr.Dst == nil {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0), true
	}
	ip, ok := netip.AddrFromSlice(kr.Dst.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := kr.Dst.Mask.Size()
	if !ip.Unmap().Is4() || bits != 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip.Unmap(), ones), true
}

// fromKernel converts one of our kernel routes into the model; devs names
// Meridian's tunnel devices by index. Anything Apply would not have written
// this way becomes a bare Route{Dst}, which never equals a desired route,
// so Apply rewrites or prunes it.
func fromKernel(dst netip.Prefix, kr netlink.Route, devs map[int]string) Route {
	bare := Route{Dst: dst}
	if kr.Scope != netlink.SCOPE_UNIVERSE || kr.Src != nil || kr.Encap != nil || kr.Via != nil || kr.NewDst != nil {
		return bare
	}
	if kr.Flags&configFlags != 0 {
		// Only a tunnel route: one onlink gateway on one of our devices.
		dev, ok := devs[kr.LinkIndex]
		if !ok || kr.Flags&configFlags != unix.RTNH_F_ONLINK || kr.Type != unix.RTN_UNICAST || len(kr.MultiPath) > 0 {
			return bare
		}
		nh, ok := gateway(kr.Gw)
		if !ok {
			return bare
		}
		r := Route{Dst: dst, NextHops: []netip.Addr{nh}, Dev: dev}
		if dev == encap.IPIPDevice {
			r.Endpoint = nh
		}
		return r
	}
	switch kr.Type {
	case unix.RTN_BLACKHOLE:
		if kr.Gw != nil || len(kr.MultiPath) > 0 {
			return bare
		}
		return Route{Dst: dst, Blackhole: true}
	case unix.RTN_UNICAST:
	default:
		return bare
	}
	var hops []netip.Addr
	switch {
	case kr.Gw != nil && len(kr.MultiPath) == 0:
		nh, ok := gateway(kr.Gw)
		if !ok {
			return bare
		}
		hops = []netip.Addr{nh}
	case kr.Gw == nil && len(kr.MultiPath) > 1:
		for _, m := range kr.MultiPath {
			// Hops is the weight minus one; Apply writes weight 1.
			if m.Hops != 0 || m.Flags&configFlags != 0 || m.Encap != nil || m.Via != nil || m.NewDst != nil {
				return bare
			}
			nh, ok := gateway(m.Gw)
			if !ok || slices.Contains(hops, nh) {
				return bare
			}
			hops = append(hops, nh)
		}
		slices.SortFunc(hops, netip.Addr.Compare)
	default:
		return bare
	}
	return Route{Dst: dst, NextHops: hops}
}

func gateway(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}, false
	}
	a = a.Unmap()
	return a, a.Is4()
}

// fromKernelString renders a kernel route of ours for logs and errors.
func fromKernelString(kr netlink.Route, devs map[int]string) string {
	dst, ok := kernelDst(kr)
	if !ok {
		return kr.String()
	}
	s := fromKernel(dst, kr, devs).target()
	if kr.Priority != 0 {
		s += fmt.Sprintf(" metric %d", kr.Priority)
	}
	return s
}
