package gobgp

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	bgppacket "github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meridian-net/meridian/bgp"
)

const (
	// asTrans is AS_TRANS (RFC 6793): it stands in for 4-octet ASNs in
	// 2-octet fields and must not be configured as a real ASN.
	asTrans uint32 = 23456
	// maxRestartTime is the largest Restart Time the 12-bit field of the
	// graceful restart capability can carry (RFC 4724 section 3).
	maxRestartTime = 4095 * time.Second
	// defaultLocalPref is what route selection assumes for a path without
	// LOCAL_PREF (GoBGP, like most implementations, uses 100).
	defaultLocalPref uint32 = 100
	// connectRetry replaces GoBGP's 120s default: after a peer restarts,
	// whichever side dials first may hit the other's idle hold (5s in
	// GoBGP) and then waits a whole retry interval, which would eat most
	// of the graceful restart window.
	connectRetrySeconds = 5
)

var ipv4Unicast = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}

// validateConfig checks what GoBGP would otherwise reject late or, worse,
// accept: a 4-octet ASN of 0 or AS_TRANS, a router ID that is not IPv4.
func validateConfig(cfg bgp.Config) error {
	var errs []error
	if !cfg.RouterID.IsValid() || !cfg.RouterID.Is4() || cfg.RouterID.IsUnspecified() {
		errs = append(errs, fmt.Errorf("router ID %q is not a non-zero IPv4 address", addrString(cfg.RouterID)))
	}
	if err := validateASN(cfg.ASN); err != nil {
		errs = append(errs, fmt.Errorf("local ASN: %w", err))
	}
	for _, a := range cfg.ListenAddresses {
		if !a.IsValid() {
			errs = append(errs, errors.New("listen address is invalid"))
		}
	}
	if cfg.ListenPort < -1 || cfg.ListenPort > 65535 {
		errs = append(errs, fmt.Errorf("listen port %d is out of range -1..65535", cfg.ListenPort))
	}
	switch {
	case cfg.GracefulRestartTime < 0:
		errs = append(errs, fmt.Errorf("graceful restart time %s is negative", cfg.GracefulRestartTime))
	case cfg.GracefulRestartTime > maxRestartTime:
		errs = append(errs, fmt.Errorf("graceful restart time %s exceeds the %s RFC 4724 allows", cfg.GracefulRestartTime, maxRestartTime))
	case cfg.GracefulRestartTime > 0 && cfg.GracefulRestartTime < time.Second:
		errs = append(errs, fmt.Errorf("graceful restart time %s is below the 1s resolution of RFC 4724", cfg.GracefulRestartTime))
	}
	if cfg.Restarting && cfg.GracefulRestartTime == 0 {
		errs = append(errs, errors.New("restarting needs a graceful restart time"))
	}
	if cfg.LocalAddress.IsValid() && !cfg.LocalAddress.Is4() {
		errs = append(errs, fmt.Errorf("local address %s is not IPv4", cfg.LocalAddress))
	}
	return errors.Join(errs...)
}

func validateASN(asn uint32) error {
	switch asn {
	case 0:
		return errors.New("ASN 0 is reserved (RFC 7607)")
	case asTrans:
		return errors.New("ASN 23456 is AS_TRANS (RFC 6793)")
	case 4294967295:
		return errors.New("ASN 4294967295 is reserved (RFC 7300)")
	}
	return nil
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// validatePeers checks a desired peer set as a whole: the speaker only
// runs IPv4 unicast, and two entries for one address cannot both hold.
func validatePeers(peers []bgp.Peer) error {
	var errs []error
	seen := make(map[netip.Addr]bool, len(peers))
	for _, p := range peers {
		if !p.Address.IsValid() || !p.Address.Is4() || p.Address.IsUnspecified() {
			errs = append(errs, fmt.Errorf("peer %q: address %q is not a non-zero IPv4 address", p.Name, addrString(p.Address)))
			continue
		}
		if err := validateASN(p.ASN); err != nil {
			errs = append(errs, fmt.Errorf("peer %q (%s): %w", p.Name, p.Address, err))
		}
		if p.LocalAddress.IsValid() && !p.LocalAddress.Is4() {
			errs = append(errs, fmt.Errorf("peer %q (%s): source address %s is not IPv4", p.Name, p.Address, p.LocalAddress))
		}
		if gr := p.GracefulRestart; gr != nil && gr.Enabled && (gr.RestartTime < time.Second || gr.RestartTime > maxRestartTime) {
			errs = append(errs, fmt.Errorf("peer %q (%s): graceful restart time %s is outside 1s..%s", p.Name, p.Address, gr.RestartTime, maxRestartTime))
		}
		if p.HoldTime != 0 && p.HoldTime < 3*time.Second {
			errs = append(errs, fmt.Errorf("peer %q (%s): hold time %s is neither 0 nor at least 3s (RFC 4271 section 4.2)", p.Name, p.Address, p.HoldTime))
		}
		if seen[p.Address] {
			errs = append(errs, fmt.Errorf("peer %q: address %s is listed twice", p.Name, p.Address))
		}
		seen[p.Address] = true
	}
	return errors.Join(errs...)
}

// validateAdvertisements checks a desired advertisement set: IPv4 only,
// and one next hop per prefix since a speaker originates one path each.
func validateAdvertisements(ads []bgp.Advertisement) error {
	var errs []error
	seen := make(map[netip.Prefix]bool, len(ads))
	for _, a := range ads {
		if !a.Prefix.IsValid() || !a.Prefix.Addr().Is4() {
			errs = append(errs, fmt.Errorf("advertisement %s: prefix is not IPv4", a.Prefix))
			continue
		}
		if !a.NextHop.IsValid() || !a.NextHop.Is4() {
			errs = append(errs, fmt.Errorf("advertisement %s: next hop %q is not IPv4", a.Prefix, addrString(a.NextHop)))
		}
		for _, c := range a.Communities {
			if !c.Valid() {
				errs = append(errs, fmt.Errorf("advertisement %s: community %s does not fit a COMMUNITIES value (RFC 1997)", a.Prefix, c))
			}
		}
		p := a.Prefix.Masked()
		if seen[p] {
			errs = append(errs, fmt.Errorf("advertisement %s: prefix is listed twice", p))
		}
		seen[p] = true
	}
	return errors.Join(errs...)
}

// restartSeconds turns the restart time into the capability's seconds.
func restartSeconds(d time.Duration) uint32 {
	return uint32(d / time.Second)
}

// peerToAPI renders one neighbour. localRestarting sets GoBGP's per-peer
// LocalRestarting state, which is what makes it send the Restart State
// bit and the Forwarding State bit (RFC 4724 section 4.1) and defer its
// updates until End-of-RIB from all peers or DeferralTime.
func peerToAPI(cfg bgp.Config, p bgp.Peer, localRestarting bool) *api.Peer {
	grTime := cfg.GracefulRestartTime
	if p.GracefulRestart != nil {
		grTime = 0
		if p.GracefulRestart.Enabled {
			grTime = p.GracefulRestart.RestartTime
		}
	}
	gr := grTime > 0
	ap := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.ASN,
			Description:     p.Name,
			// GoBGP sets TCP_MD5SIG (RFC 2385) for the neighbour on its
			// listening and dialling sockets.
			AuthPassword: p.Password,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry:      connectRetrySeconds,
			HoldTime:          uint64(p.HoldTime / time.Second),
			KeepaliveInterval: uint64(p.KeepaliveTime / time.Second),
		}},
		Transport: &api.Transport{
			RemotePort:  uint32(p.Port),
			PassiveMode: p.Passive,
		},
		AfiSafis: []*api.AfiSafi{{
			Config: &api.AfiSafiConfig{Family: ipv4Unicast, Enabled: true},
			// Per-family GR: without it GoBGP advertises the capability
			// with no (AFI, SAFI) tuple, and a helper then keeps nothing.
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: gr}},
		}},
	}
	if p.HoldTime > 0 && p.KeepaliveTime == 0 {
		ap.Timers.Config.KeepaliveInterval = uint64(p.HoldTime / time.Second / 3)
	}
	if p.MaxPrefixes > 0 && (p.MaxPrefixAction == bgp.MaxPrefixRestart || p.MaxPrefixAction == "") {
		ap.AfiSafis[0].PrefixLimits = &api.PrefixLimit{Family: ipv4Unicast, MaxPrefixes: p.MaxPrefixes}
	}
	if p.EBGPMultihopTTL > 1 {
		ap.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.EBGPMultihopTTL)}
	}
	if p.RouteReflectorClient {
		ap.RouteReflector = &api.RouteReflector{RouteReflectorClient: true}
		if p.RouteReflectorClusterID.IsValid() {
			ap.RouteReflector.RouteReflectorClusterId = p.RouteReflectorClusterID.String()
		} else {
			ap.RouteReflector.RouteReflectorClusterId = cfg.RouterID.String()
		}
	}
	switch {
	case p.LocalAddress.IsValid():
		ap.Transport.LocalAddress = p.LocalAddress.String()
	case cfg.LocalAddress.IsValid():
		ap.Transport.LocalAddress = cfg.LocalAddress.String()
	}
	if gr {
		secs := restartSeconds(grTime)
		ap.GracefulRestart = &api.GracefulRestart{
			Enabled:     true,
			RestartTime: secs,
			// Selection deferral while restarting (RFC 4724 4.1): wait
			// for End-of-RIB at most as long as peers keep our routes.
			DeferralTime: secs,
			// RFC 8538: a NOTIFICATION other than Hard Reset also starts
			// the helper procedure, so an administrative reset keeps
			// routes; deconfiguring a peer still sends Hard Reset.
			NotificationEnabled: true,
			LocalRestarting:     localRestarting,
		}
	}
	return ap
}

// samePeer reports whether two desired neighbours configure the same
// session.
func samePeer(a, b bgp.Peer) bool {
	ga, gb := a.GracefulRestart, b.GracefulRestart
	a.GracefulRestart, b.GracefulRestart = nil, nil
	if a != b {
		return false
	}
	if (ga == nil) != (gb == nil) {
		return false
	}
	return ga == nil || *ga == *gb
}

// advertisementToAPI renders a locally originated IPv4 unicast path.
//
// Communities and LOCAL_PREF are attributes of the originated path itself
// rather than the work of a GoBGP export policy: a policy's set-community
// action would apply to every exported path, so it would need a
// local-route condition to spare the paths a reflector passes on (RFC 4456
// wants them unchanged), and a policy change only reaches peers after a
// soft reset of every session. On the path, a changed community list is an
// ordinary re-announcement (same prefix, same local source: an implicit
// withdraw), the node's own RIB shows what it sends, and GoBGP already
// strips LOCAL_PREF towards eBGP peers (RFC 4271 section 5.1.5).
func advertisementToAPI(a bgp.Advertisement) (*api.Path, error) {
	p := a.Prefix.Masked()
	nlri, err := anypb.New(&api.IPAddressPrefix{
		PrefixLen: uint32(p.Bits()),
		Prefix:    p.Addr().String(),
	})
	if err != nil {
		return nil, fmt.Errorf("marshal prefix %s: %w", p, err)
	}
	origin, err := anypb.New(&api.OriginAttribute{Origin: uint32(bgppacket.BGP_ORIGIN_ATTR_TYPE_IGP)})
	if err != nil {
		return nil, fmt.Errorf("marshal origin: %w", err)
	}
	nh, err := anypb.New(&api.NextHopAttribute{NextHop: a.NextHop.String()})
	if err != nil {
		return nil, fmt.Errorf("marshal next hop %s: %w", a.NextHop, err)
	}
	pattrs := []*anypb.Any{origin, nh}
	if a.LocalPref != nil {
		lp, err := anypb.New(&api.LocalPrefAttribute{LocalPref: *a.LocalPref})
		if err != nil {
			return nil, fmt.Errorf("marshal local preference: %w", err)
		}
		pattrs = append(pattrs, lp)
	}
	var (
		std   []uint32
		large []*api.LargeCommunity
	)
	for _, c := range a.Communities {
		if c.Large {
			large = append(large, &api.LargeCommunity{GlobalAdmin: c.A, LocalData1: c.B, LocalData2: c.C})
		} else {
			std = append(std, c.Value())
		}
	}
	if len(std) > 0 {
		attr, err := anypb.New(&api.CommunitiesAttribute{Communities: std})
		if err != nil {
			return nil, fmt.Errorf("marshal communities: %w", err)
		}
		pattrs = append(pattrs, attr)
	}
	if len(large) > 0 {
		attr, err := anypb.New(&api.LargeCommunitiesAttribute{Communities: large})
		if err != nil {
			return nil, fmt.Errorf("marshal large communities: %w", err)
		}
		pattrs = append(pattrs, attr)
	}
	return &api.Path{
		Family: ipv4Unicast,
		Nlri:   nlri,
		Pattrs: pattrs,
	}, nil
}

// localPrefString shows an optional LOCAL_PREF in logs.
func localPrefString(lp *uint32) string {
	if lp == nil {
		return "default"
	}
	return strconv.FormatUint(uint64(*lp), 10)
}

// isLocal tells paths this speaker originated: GoBGP gives them no
// neighbour address.
func isLocal(p *api.Path) bool {
	a, err := netip.ParseAddr(p.GetNeighborIp())
	return err != nil || a.IsUnspecified()
}

// pathFromAPI converts one path of the global RIB. It fails on paths
// that are not IPv4 unicast or carry no usable next hop.
func pathFromAPI(p *api.Path) (bgp.Path, error) {
	nlri, err := apiutil.GetNativeNlri(p)
	if err != nil {
		return bgp.Path{}, fmt.Errorf("decode nlri: %w", err)
	}
	ipp, ok := nlri.(*bgppacket.IPAddrPrefix)
	if !ok {
		return bgp.Path{}, fmt.Errorf("nlri %s is not IPv4 unicast", nlri)
	}
	prefix, err := netip.ParsePrefix(ipp.String())
	if err != nil {
		return bgp.Path{}, fmt.Errorf("parse prefix %q: %w", ipp.String(), err)
	}
	attrs, err := apiutil.GetNativePathAttributes(p)
	if err != nil {
		return bgp.Path{}, fmt.Errorf("decode attributes of %s: %w", prefix, err)
	}
	out := bgp.Path{
		Prefix:    prefix,
		LocalPref: defaultLocalPref,
		Best:      p.GetBest(),
		Stale:     p.GetStale(),
	}
	if a, err := netip.ParseAddr(p.GetNeighborIp()); err == nil && !a.IsUnspecified() {
		out.PeerAddress = a.Unmap()
	}
	for _, attr := range attrs {
		switch a := attr.(type) {
		case *bgppacket.PathAttributeNextHop:
			if nh, ok := netip.AddrFromSlice(a.Value); ok {
				out.NextHop = nh.Unmap()
			}
		case *bgppacket.PathAttributeMpReachNLRI:
			// RFC 4760 next hop; only used when NEXT_HOP is absent.
			if nh, ok := netip.AddrFromSlice(a.Nexthop); ok && !out.NextHop.IsValid() {
				out.NextHop = nh.Unmap()
			}
		case *bgppacket.PathAttributeAsPath:
			for _, seg := range a.Value {
				out.ASPath = append(out.ASPath, seg.GetAS()...)
			}
		case *bgppacket.PathAttributeLocalPref:
			out.LocalPref = a.Value
		case *bgppacket.PathAttributeOrigin:
			out.Origin = a.Value
		case *bgppacket.PathAttributeMultiExitDisc:
			out.MED = a.Value
		case *bgppacket.PathAttributeCommunities:
			for _, v := range a.Value {
				out.Communities = append(out.Communities, bgp.StandardCommunity(v))
			}
		case *bgppacket.PathAttributeLargeCommunities:
			for _, v := range a.Values {
				if v != nil {
					out.Communities = append(out.Communities, bgp.Community{Large: true, A: v.ASN, B: v.LocalData1, C: v.LocalData2})
				}
			}
		}
	}
	if out.Communities != nil {
		out.Communities = bgp.SortCommunities(out.Communities)
	}
	if !out.NextHop.IsValid() {
		return bgp.Path{}, fmt.Errorf("path for %s has no next hop", prefix)
	}
	return out, nil
}

// sessionState names a GoBGP session state the way bgp.PeerState does.
func sessionState(s api.PeerState_SessionState) string {
	if s == api.PeerState_UNKNOWN {
		return "unknown"
	}
	return strings.ToLower(s.String())
}

// peerStateFromAPI converts a GoBGP neighbour into its observed state as
// of now. EndOfRIB and Uptime only count in an established session: GoBGP
// clears End-of-RIB on session loss and keeps the time of the last
// establishment, but neither may reach callers for a session that is down.
// Advertised needs the neighbour listed with EnableAdvertised.
func peerStateFromAPI(ap *api.Peer, configured bgp.Peer, now time.Time) (st bgp.PeerState, grReceived bool) {
	st.Peer = configured
	st.State = sessionState(ap.GetState().GetSessionState())
	established := ap.GetState().GetSessionState() == api.PeerState_ESTABLISHED
	if up := ap.GetTimers().GetState().GetUptime(); established && up != nil {
		// GoBGP keeps whole seconds; a clock step back must not make a
		// negative uptime.
		st.Uptime = max(now.Sub(up.AsTime()), 0).Truncate(time.Second)
	}
	for _, af := range ap.GetAfiSafis() {
		f := af.GetConfig().GetFamily()
		if f.GetAfi() != api.Family_AFI_IP || f.GetSafi() != api.Family_SAFI_UNICAST {
			continue
		}
		mp := af.GetMpGracefulRestart().GetState()
		st.EndOfRIB = established && mp.GetEndOfRibReceived()
		grReceived = mp.GetReceived()
		if established {
			st.Advertised = int(af.GetState().GetAdvertised())
		}
	}
	gr := ap.GetGracefulRestart()
	// GoBGP v3.37 counts what it would send on a fresh session, which in a
	// graceful restart session includes the End-of-RIB marker
	// (BgpServer.getBestFromLocal); that is not a path.
	if st.Advertised > 0 && gr.GetEnabled() && remoteGracefulRestart(ap) {
		st.Advertised--
	}
	// GoBGP marks the family Received only when its own side has graceful
	// restart enabled and the peer's capability lists IPv4 unicast, which
	// is what negotiated means for this speaker.
	st.GR = bgp.GracefulRestartState{
		Negotiated:      gr.GetEnabled() && grReceived,
		PeerRestarting:  gr.GetPeerRestarting(),
		LocalRestarting: gr.GetLocalRestarting(),
	}
	return st, grReceived
}

// remoteGracefulRestart reports whether the neighbour's OPEN carried the
// graceful restart capability, which with ours enabled is what GoBGP calls
// graceful restart enabled for the session.
func remoteGracefulRestart(ap *api.Peer) bool {
	for _, c := range ap.GetState().GetRemoteCap() {
		if c.MessageIs((*api.GracefulRestartCapability)(nil)) {
			return true
		}
	}
	return false
}

// synced is the per-peer part of Converged: established and, when the
// peer announced graceful restart for IPv4 unicast (and so will send
// End-of-RIB), End-of-RIB received.
func synced(st bgp.PeerState, grReceived bool) bool {
	return st.State == "established" && (st.EndOfRIB || !grReceived)
}
