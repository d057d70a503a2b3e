package gobgp

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	bgppacket "github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-net/meridian/bgp"
)

func validConfig() bgp.Config {
	return bgp.Config{
		RouterID:            netip.MustParseAddr("10.0.0.1"),
		ASN:                 bgp.DefaultASN,
		ListenAddresses:     []netip.Addr{netip.MustParseAddr("10.0.0.1")},
		ListenPort:          179,
		GracefulRestartTime: 120 * time.Second,
	}
}

func TestValidateConfig(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*bgp.Config)
		wantErr string
	}{
		{name: "valid", mutate: func(*bgp.Config) {}},
		{name: "4-octet ASN", mutate: func(c *bgp.Config) { c.ASN = 4200000000 }},
		{name: "largest ASN", mutate: func(c *bgp.Config) { c.ASN = 4294967294 }},
		{name: "dial only", mutate: func(c *bgp.Config) { c.ListenPort = -1; c.ListenAddresses = nil }},
		{name: "no graceful restart", mutate: func(c *bgp.Config) { c.GracefulRestartTime = 0 }},
		{name: "restarting", mutate: func(c *bgp.Config) { c.Restarting = true }},
		{name: "local address", mutate: func(c *bgp.Config) { c.LocalAddress = netip.MustParseAddr("10.0.0.1") }},
		{name: "max restart time", mutate: func(c *bgp.Config) { c.GracefulRestartTime = 4095 * time.Second }},
		{name: "missing router ID", mutate: func(c *bgp.Config) { c.RouterID = netip.Addr{} }, wantErr: "router ID"},
		{name: "IPv6 router ID", mutate: func(c *bgp.Config) { c.RouterID = netip.MustParseAddr("fd00::1") }, wantErr: "router ID"},
		{name: "zero router ID", mutate: func(c *bgp.Config) { c.RouterID = netip.IPv4Unspecified() }, wantErr: "router ID"},
		{name: "ASN 0", mutate: func(c *bgp.Config) { c.ASN = 0 }, wantErr: "ASN 0"},
		{name: "AS_TRANS", mutate: func(c *bgp.Config) { c.ASN = 23456 }, wantErr: "AS_TRANS"},
		{name: "ASN 2^32-1", mutate: func(c *bgp.Config) { c.ASN = 4294967295 }, wantErr: "4294967295"},
		{name: "invalid listen address", mutate: func(c *bgp.Config) { c.ListenAddresses = []netip.Addr{{}} }, wantErr: "listen address"},
		{name: "port too big", mutate: func(c *bgp.Config) { c.ListenPort = 70000 }, wantErr: "listen port"},
		{name: "port below -1", mutate: func(c *bgp.Config) { c.ListenPort = -2 }, wantErr: "listen port"},
		{name: "negative restart time", mutate: func(c *bgp.Config) { c.GracefulRestartTime = -time.Second }, wantErr: "negative"},
		{name: "restart time too long", mutate: func(c *bgp.Config) { c.GracefulRestartTime = 4096 * time.Second }, wantErr: "exceeds"},
		{name: "sub-second restart time", mutate: func(c *bgp.Config) { c.GracefulRestartTime = 500 * time.Millisecond }, wantErr: "resolution"},
		{name: "restarting without GR", mutate: func(c *bgp.Config) { c.GracefulRestartTime = 0; c.Restarting = true }, wantErr: "restarting needs"},
		{name: "IPv6 local address", mutate: func(c *bgp.Config) { c.LocalAddress = netip.MustParseAddr("fd00::1") }, wantErr: "local address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := validConfig()
			tt.mutate(&cfg)
			err := validateConfig(cfg)
			checkErr(t, err, tt.wantErr)
			_, nerr := New(cfg, nil)
			checkErr(t, nerr, tt.wantErr)
		})
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("want error containing %q, got nil", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("want error containing %q, got %v", want, err)
	}
}

func TestValidatePeers(t *testing.T) {
	a := netip.MustParseAddr("10.0.0.2")
	tests := []struct {
		name    string
		peers   []bgp.Peer
		wantErr string
	}{
		{name: "empty"},
		{name: "ibgp and ebgp", peers: []bgp.Peer{{Name: "a", Address: a, ASN: 64512}, {Name: "b", Address: netip.MustParseAddr("10.0.0.3"), ASN: 65001, Port: 1179}}},
		{name: "no address", peers: []bgp.Peer{{Name: "a", ASN: 64512}}, wantErr: "not a non-zero IPv4"},
		{name: "IPv6", peers: []bgp.Peer{{Name: "a", Address: netip.MustParseAddr("fd00::2"), ASN: 64512}}, wantErr: "not a non-zero IPv4"},
		{name: "ASN 0", peers: []bgp.Peer{{Name: "a", Address: a}}, wantErr: "ASN 0"},
		{name: "AS_TRANS", peers: []bgp.Peer{{Name: "a", Address: a, ASN: 23456}}, wantErr: "AS_TRANS"},
		{name: "duplicate", peers: []bgp.Peer{{Name: "a", Address: a, ASN: 64512}, {Name: "b", Address: a, ASN: 64512}}, wantErr: "listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, validatePeers(tt.peers), tt.wantErr)
		})
	}
}

func TestValidateAdvertisements(t *testing.T) {
	nh := netip.MustParseAddr("10.0.0.1")
	tests := []struct {
		name    string
		ads     []bgp.Advertisement
		wantErr string
	}{
		{name: "empty"},
		{name: "one", ads: []bgp.Advertisement{{Prefix: netip.MustParsePrefix("10.244.1.0/24"), NextHop: nh}}},
		{name: "IPv6 prefix", ads: []bgp.Advertisement{{Prefix: netip.MustParsePrefix("fd00::/64"), NextHop: nh}}, wantErr: "not IPv4"},
		{name: "invalid prefix", ads: []bgp.Advertisement{{NextHop: nh}}, wantErr: "not IPv4"},
		{name: "no next hop", ads: []bgp.Advertisement{{Prefix: netip.MustParsePrefix("10.244.1.0/24")}}, wantErr: "next hop"},
		{name: "duplicate after masking", ads: []bgp.Advertisement{
			{Prefix: netip.MustParsePrefix("10.244.1.0/24"), NextHop: nh},
			{Prefix: netip.MustParsePrefix("10.244.1.7/24"), NextHop: nh},
		}, wantErr: "listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, validateAdvertisements(tt.ads), tt.wantErr)
		})
	}
}

// apiPath builds a path the way GoBGP's ListPath hands it out.
func apiPath(t *testing.T, prefix string, attrs []bgppacket.PathAttributeInterface, neighbor string, best, stale bool) *api.Path {
	t.Helper()
	p := netip.MustParsePrefix(prefix)
	nlri := bgppacket.NewIPAddrPrefix(uint8(p.Bits()), p.Addr().String())
	ap, err := apiutil.NewPath(nlri, false, attrs, time.Now())
	if err != nil {
		t.Fatalf("build api path: %v", err)
	}
	ap.NeighborIp = neighbor
	ap.Best = best
	ap.Stale = stale
	return ap
}

func TestPathFromAPI(t *testing.T) {
	origin := bgppacket.NewPathAttributeOrigin(bgppacket.BGP_ORIGIN_ATTR_TYPE_IGP)
	tests := []struct {
		name    string
		path    func(t *testing.T) *api.Path
		want    bgp.Path
		wantErr string
	}{
		{
			name: "ibgp best with local pref",
			path: func(t *testing.T) *api.Path {
				return apiPath(t, "10.244.1.0/24", []bgppacket.PathAttributeInterface{
					origin,
					bgppacket.NewPathAttributeNextHop("10.0.0.2"),
					bgppacket.NewPathAttributeLocalPref(200),
					bgppacket.NewPathAttributeAsPath(nil),
				}, "10.0.0.2", true, false)
			},
			want: bgp.Path{
				Prefix: netip.MustParsePrefix("10.244.1.0/24"), NextHop: netip.MustParseAddr("10.0.0.2"),
				PeerAddress: netip.MustParseAddr("10.0.0.2"), LocalPref: 200, Best: true,
			},
		},
		{
			name: "ebgp stale without local pref",
			path: func(t *testing.T) *api.Path {
				return apiPath(t, "10.96.0.0/12", []bgppacket.PathAttributeInterface{
					origin,
					bgppacket.NewPathAttributeNextHop("192.0.2.1"),
					bgppacket.NewPathAttributeAsPath([]bgppacket.AsPathParamInterface{
						bgppacket.NewAs4PathParam(bgppacket.BGP_ASPATH_ATTR_TYPE_SEQ, []uint32{65001, 4200000000}),
						bgppacket.NewAs4PathParam(bgppacket.BGP_ASPATH_ATTR_TYPE_SET, []uint32{65002}),
					}),
				}, "192.0.2.1", false, true)
			},
			want: bgp.Path{
				Prefix: netip.MustParsePrefix("10.96.0.0/12"), NextHop: netip.MustParseAddr("192.0.2.1"),
				PeerAddress: netip.MustParseAddr("192.0.2.1"), ASPath: []uint32{65001, 4200000000, 65002},
				LocalPref: 100, Stale: true,
			},
		},
		{
			name: "next hop from MP_REACH",
			path: func(t *testing.T) *api.Path {
				nlri := bgppacket.NewIPAddrPrefix(24, "10.244.2.0")
				return apiPath(t, "10.244.2.0/24", []bgppacket.PathAttributeInterface{
					origin,
					bgppacket.NewPathAttributeMpReachNLRI("10.0.0.3", []bgppacket.AddrPrefixInterface{nlri}),
				}, "10.0.0.3", true, false)
			},
			want: bgp.Path{
				Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: netip.MustParseAddr("10.0.0.3"),
				PeerAddress: netip.MustParseAddr("10.0.0.3"), LocalPref: 100, Best: true,
			},
		},
		{
			name: "standard and large communities, sorted",
			path: func(t *testing.T) *api.Path {
				return apiPath(t, "10.244.4.0/24", []bgppacket.PathAttributeInterface{
					origin,
					bgppacket.NewPathAttributeNextHop("10.0.0.5"),
					bgppacket.NewPathAttributeCommunities([]uint32{65000<<16 | 200, 65000<<16 | 100}),
					bgppacket.NewPathAttributeLargeCommunities([]*bgppacket.LargeCommunity{bgppacket.NewLargeCommunity(4200000000, 1, 2)}),
				}, "10.0.0.5", true, false)
			},
			want: bgp.Path{
				Prefix: netip.MustParsePrefix("10.244.4.0/24"), NextHop: netip.MustParseAddr("10.0.0.5"),
				PeerAddress: netip.MustParseAddr("10.0.0.5"), LocalPref: 100, Best: true,
				Communities: []bgp.Community{{A: 65000, B: 100}, {A: 65000, B: 200}, {Large: true, A: 4200000000, B: 1, C: 2}},
			},
		},
		{
			name: "no next hop",
			path: func(t *testing.T) *api.Path {
				return apiPath(t, "10.244.3.0/24", []bgppacket.PathAttributeInterface{origin}, "10.0.0.4", true, false)
			},
			wantErr: "no next hop",
		},
		{
			name: "not IPv4 unicast",
			path: func(t *testing.T) *api.Path {
				nlri := bgppacket.NewIPv6AddrPrefix(64, "fd00::")
				ap, err := apiutil.NewPath(nlri, false, []bgppacket.PathAttributeInterface{
					origin, bgppacket.NewPathAttributeMpReachNLRI("fd00::1", []bgppacket.AddrPrefixInterface{nlri}),
				}, time.Now())
				if err != nil {
					t.Fatal(err)
				}
				return ap
			},
			wantErr: "not IPv4 unicast",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pathFromAPI(tt.path(t))
			checkErr(t, err, tt.wantErr)
			if tt.wantErr != "" {
				return
			}
			if got.Prefix != tt.want.Prefix || got.NextHop != tt.want.NextHop || got.PeerAddress != tt.want.PeerAddress ||
				got.LocalPref != tt.want.LocalPref || got.Best != tt.want.Best || got.Stale != tt.want.Stale ||
				!slices.Equal(got.ASPath, tt.want.ASPath) || !slices.Equal(got.Communities, tt.want.Communities) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestAdvertisementRoundTrip(t *testing.T) {
	ad := bgp.Advertisement{Prefix: netip.MustParsePrefix("10.244.7.9/24"), NextHop: netip.MustParseAddr("10.0.0.7")}
	ap, err := advertisementToAPI(ad)
	if err != nil {
		t.Fatal(err)
	}
	// What GoBGP would report for it once learned from 10.0.0.7.
	ap.NeighborIp = "10.0.0.7"
	got, err := pathFromAPI(ap)
	if err != nil {
		t.Fatal(err)
	}
	if got.Prefix != netip.MustParsePrefix("10.244.7.0/24") || got.NextHop != ad.NextHop {
		t.Fatalf("round trip: got %+v from %+v", got, ad)
	}
	attrs, err := apiutil.GetNativePathAttributes(ap)
	if err != nil {
		t.Fatal(err)
	}
	var origin *bgppacket.PathAttributeOrigin
	for _, a := range attrs {
		if o, ok := a.(*bgppacket.PathAttributeOrigin); ok {
			origin = o
		}
	}
	if origin == nil || origin.Value != bgppacket.BGP_ORIGIN_ATTR_TYPE_IGP {
		t.Fatalf("origin: got %v, want IGP", origin)
	}
}

// The attributes of an originated path come back as they were set.
func TestAdvertisementAttributesRoundTrip(t *testing.T) {
	lp := uint32(0) // a valid LOCAL_PREF, distinct from "unset"
	ad := bgp.Advertisement{
		Prefix: netip.MustParsePrefix("10.244.8.0/24"), NextHop: netip.MustParseAddr("10.0.0.8"),
		Communities: []bgp.Community{{A: 65000, B: 100}, {Large: true, A: 64512, B: 1, C: 2}},
		LocalPref:   &lp,
	}
	ap, err := advertisementToAPI(ad)
	if err != nil {
		t.Fatal(err)
	}
	ap.NeighborIp = "10.0.0.8"
	got, err := pathFromAPI(ap)
	if err != nil {
		t.Fatal(err)
	}
	if got.LocalPref != 0 || !slices.Equal(got.Communities, ad.Communities) {
		t.Fatalf("round trip: got %+v from %+v", got, ad)
	}
	// Without attributes, the path carries none of the three.
	ap, err = advertisementToAPI(bgp.Advertisement{Prefix: ad.Prefix, NextHop: ad.NextHop})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := apiutil.GetNativePathAttributes(ap)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range attrs {
		switch a.(type) {
		case *bgppacket.PathAttributeLocalPref, *bgppacket.PathAttributeCommunities, *bgppacket.PathAttributeLargeCommunities:
			t.Errorf("plain advertisement carries %T", a)
		}
	}
}

func TestIsLocal(t *testing.T) {
	for _, tt := range []struct {
		neighbor string
		want     bool
	}{
		{"", true}, {"<nil>", true}, {"0.0.0.0", true}, {"10.0.0.2", false},
	} {
		if got := isLocal(&api.Path{NeighborIp: tt.neighbor}); got != tt.want {
			t.Errorf("isLocal(%q) = %v, want %v", tt.neighbor, got, tt.want)
		}
	}
}

func TestPeerToAPI(t *testing.T) {
	cfg := validConfig()
	cfg.LocalAddress = netip.MustParseAddr("10.0.0.1")
	p := bgp.Peer{Name: "node-b", Address: netip.MustParseAddr("10.0.0.2"), ASN: 64512, Port: 1179}

	ap := peerToAPI(cfg, p, true)
	if ap.Conf.NeighborAddress != "10.0.0.2" || ap.Conf.PeerAsn != 64512 || ap.Conf.Description != "node-b" {
		t.Errorf("conf: %v", ap.Conf)
	}
	if ap.Transport.RemotePort != 1179 || ap.Transport.LocalAddress != "10.0.0.1" {
		t.Errorf("transport: %v", ap.Transport)
	}
	gr := ap.GracefulRestart
	if gr == nil || !gr.Enabled || gr.RestartTime != 120 || gr.DeferralTime != 120 || !gr.LocalRestarting || !gr.NotificationEnabled || gr.HelperOnly {
		t.Errorf("graceful restart: %v", gr)
	}
	if len(ap.AfiSafis) != 1 || !ap.AfiSafis[0].MpGracefulRestart.Config.Enabled ||
		ap.AfiSafis[0].Config.Family.Afi != api.Family_AFI_IP || ap.AfiSafis[0].Config.Family.Safi != api.Family_SAFI_UNICAST {
		t.Errorf("afi-safis: %v", ap.AfiSafis)
	}

	cfg.GracefulRestartTime = 0
	ap = peerToAPI(cfg, p, false)
	if ap.GracefulRestart != nil || ap.AfiSafis[0].MpGracefulRestart.Config.Enabled {
		t.Errorf("graceful restart disabled but rendered: %v %v", ap.GracefulRestart, ap.AfiSafis[0].MpGracefulRestart)
	}
}

func TestPeerStateFromAPI(t *testing.T) {
	cfgd := bgp.Peer{Name: "node-b", Address: netip.MustParseAddr("10.0.0.2"), ASN: 64512}
	mk := func(state api.PeerState_SessionState, eor, received bool) *api.Peer {
		return &api.Peer{
			State: &api.PeerState{SessionState: state},
			AfiSafis: []*api.AfiSafi{{
				Config:            &api.AfiSafiConfig{Family: ipv4Unicast},
				MpGracefulRestart: &api.MpGracefulRestart{State: &api.MpGracefulRestartState{EndOfRibReceived: eor, Received: received}},
			}},
		}
	}
	tests := []struct {
		name       string
		peer       *api.Peer
		wantState  string
		wantEOR    bool
		wantSynced bool
	}{
		{"established with EOR", mk(api.PeerState_ESTABLISHED, true, true), "established", true, true},
		{"established waiting for EOR", mk(api.PeerState_ESTABLISHED, false, true), "established", false, false},
		{"established without GR", mk(api.PeerState_ESTABLISHED, false, false), "established", false, true},
		{"active ignores old EOR", mk(api.PeerState_ACTIVE, true, true), "active", false, false},
		{"idle", mk(api.PeerState_IDLE, false, false), "idle", false, false},
		{"unknown", &api.Peer{}, "unknown", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, gr := peerStateFromAPI(tt.peer, cfgd, time.Now())
			if st.Peer != cfgd || st.State != tt.wantState || st.EndOfRIB != tt.wantEOR {
				t.Fatalf("got %+v, want state %s eor %v", st, tt.wantState, tt.wantEOR)
			}
			if got := synced(st, gr); got != tt.wantSynced {
				t.Fatalf("synced = %v, want %v", got, tt.wantSynced)
			}
		})
	}
}

func TestPeerStateFromAPISessionDetails(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	mk := func(state api.PeerState_SessionState) *api.Peer {
		grCap, err := anypb.New(&api.GracefulRestartCapability{})
		if err != nil {
			t.Fatal(err)
		}
		return &api.Peer{
			// GoBGP counts End-of-RIB as advertised in a GR session.
			State:  &api.PeerState{SessionState: state, RemoteCap: []*anypb.Any{grCap}},
			Timers: &api.Timers{State: &api.TimersState{Uptime: timestamppb.New(now.Add(-90 * time.Second))}},
			GracefulRestart: &api.GracefulRestart{Enabled: true, PeerRestarting: state != api.PeerState_ESTABLISHED,
				LocalRestarting: state == api.PeerState_ESTABLISHED},
			AfiSafis: []*api.AfiSafi{{
				Config:            &api.AfiSafiConfig{Family: ipv4Unicast},
				MpGracefulRestart: &api.MpGracefulRestart{State: &api.MpGracefulRestartState{Received: true}},
				State:             &api.AfiSafiState{Family: ipv4Unicast, Advertised: 5},
			}},
		}
	}
	st, _ := peerStateFromAPI(mk(api.PeerState_ESTABLISHED), bgp.Peer{}, now)
	if st.Uptime != 90*time.Second || st.Advertised != 4 || st.GR != (bgp.GracefulRestartState{Negotiated: true, LocalRestarting: true}) {
		t.Errorf("established: %+v", st)
	}
	// GoBGP keeps the last establishment time and counts of a session that
	// is down; neither is the session's now.
	st, _ = peerStateFromAPI(mk(api.PeerState_ACTIVE), bgp.Peer{}, now)
	if st.Uptime != 0 || st.Advertised != 0 || st.GR != (bgp.GracefulRestartState{Negotiated: true, PeerRestarting: true}) {
		t.Errorf("active: %+v", st)
	}
	// A clock stepped back does not make a negative uptime.
	st, _ = peerStateFromAPI(mk(api.PeerState_ESTABLISHED), bgp.Peer{}, now.Add(-time.Hour))
	if st.Uptime != 0 {
		t.Errorf("uptime %s with the clock behind the establishment", st.Uptime)
	}
	// Graceful restart off on our side: nothing negotiated even if the
	// peer announced it.
	ap := mk(api.PeerState_ESTABLISHED)
	ap.GracefulRestart = nil
	if st, _ = peerStateFromAPI(ap, bgp.Peer{}, now); st.GR != (bgp.GracefulRestartState{}) || st.Advertised != 5 {
		t.Errorf("GR without our capability: %+v, advertised %d", st.GR, st.Advertised)
	}
}

func TestDownReason(t *testing.T) {
	peer := netip.MustParseAddr("10.0.0.2")
	tests := []struct {
		name   string
		msg    string
		fields gobgplog.Fields
		want   string // "" for no record
	}{
		{"peer down", "Peer Down", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.2", "State": "BGP_FSM_ESTABLISHED", "Reason": "hold-timer-expired"}, "no KEEPALIVE or UPDATE within the hold time (hold-timer-expired)"},
		{"peer down with a Stringer reason", "Peer Down", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.2", "Reason": stringer("notification-received cease/administrative-reset")}, "notification-received cease/administrative-reset"},
		{"open refused", "state changed", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.2", "old": "BGP_FSM_OPENSENT", "new": "BGP_FSM_IDLE", "reason": stringer("notification-received open/bad-peer-as")}, "notification-received open/bad-peer-as"},
		{"leaving established is Peer Down's", "state changed", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.2", "old": "BGP_FSM_ESTABLISHED", "new": "BGP_FSM_IDLE", "reason": stringer("dying")}, ""},
		{"not towards idle", "state changed", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.2", "old": "BGP_FSM_ACTIVE", "new": "BGP_FSM_OPENSENT", "reason": stringer("new-connection")}, ""},
		{"typed nil reason", "state changed", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.2", "old": "BGP_FSM_ACTIVE", "new": "BGP_FSM_IDLE", "reason": (*nilStringer)(nil)}, ""},
		{"other topic", "Peer Down", gobgplog.Fields{"Topic": "Server", "Key": "10.0.0.2", "Reason": "x"}, ""},
		{"no address", "Peer Down", gobgplog.Fields{"Topic": "Peer", "Key": "eth0", "Reason": "x"}, ""},
		{"other message", "Peer Up", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.2"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, reason, ok := downReason(tt.msg, tt.fields)
			if ok != (tt.want != "") || reason != tt.want || (ok && a != peer) {
				t.Errorf("got %s %q %v, want %q", a, reason, ok, tt.want)
			}
		})
	}
}

// The adapter records reasons from entries its handler would drop: the
// "state changed" entries are debug, daemons run at info.
func TestLoggerRecordsDownReasons(t *testing.T) {
	var buf strings.Builder
	down := newDownReasons()
	l := slogLogger{log: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), down: down}
	peer := netip.MustParseAddr("10.0.0.2")
	l.Debug("state changed", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.2", "old": "BGP_FSM_OPENSENT", "new": "BGP_FSM_IDLE", "reason": stringer("hold-timer-expired")})
	if got := down.get(peer); got != "no KEEPALIVE or UPDATE within the hold time (hold-timer-expired)" {
		t.Errorf("after debug entry: %q", got)
	}
	if buf.Len() != 0 {
		t.Errorf("debug entry printed at info: %s", buf.String())
	}
	l.Info("Peer Down", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.2", "Reason": "read-failed"})
	if got := down.get(peer); got != "connection lost (read-failed)" {
		t.Errorf("after Peer Down: %q", got)
	}
	down.forget(peer)
	if got := down.get(peer); got != "" {
		t.Errorf("after forget: %q", got)
	}
	// A typed nil Stringer in any field must not panic the printer either.
	l.Info("x", gobgplog.Fields{"reason": (*nilStringer)(nil)})
}

type stringer string

func (s stringer) String() string { return string(s) }

// nilStringer has a value receiver, like GoBGP's fsmStateReason: calling
// String through a nil pointer panics.
type nilStringer struct{ s string }

func (n nilStringer) String() string { return n.s }

func TestFieldAttrs(t *testing.T) {
	attrs := fieldAttrs(gobgplog.Fields{
		"Topic": "Peer",
		"Key":   "10.0.0.2",
		"State": bgppacket.BGP_FSM_ESTABLISHED,
		"Err":   errors.New("boom"),
		"IP":    net.ParseIP("10.0.0.3"),
	})
	got := map[string]string{}
	for _, a := range attrs {
		got[a.Key] = a.Value.String()
	}
	want := map[string]string{"topic": "Peer", "peer": "10.0.0.2", "state": "BGP_FSM_ESTABLISHED", "err": "boom", "ip": "10.0.0.3"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("attr %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	// Without a peer topic, Key stays a plain key.
	if a := fieldAttrs(gobgplog.Fields{"Topic": "Server", "Key": "x"}); a[0].Key != "key" {
		t.Errorf("non-peer Key renamed: %v", a)
	}
}

func TestSlogLogger(t *testing.T) {
	var buf strings.Builder
	info := slogLogger{log: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	if info.GetLevel() != gobgplog.InfoLevel {
		t.Errorf("info handler: GetLevel = %v", info.GetLevel())
	}
	info.Debug("hidden", nil)
	info.Warn("peer down", gobgplog.Fields{"Topic": "Peer", "Key": "10.0.0.2"})
	out := buf.String()
	if strings.Contains(out, "hidden") || !strings.Contains(out, "level=WARN") || !strings.Contains(out, "peer=10.0.0.2") {
		t.Errorf("unexpected log output: %q", out)
	}
	debug := slogLogger{log: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if debug.GetLevel() != gobgplog.DebugLevel {
		t.Errorf("debug handler: GetLevel = %v", debug.GetLevel())
	}
}

func TestPeerToAPISessionSettings(t *testing.T) {
	cfg := validConfig()
	cfg.LocalAddress = netip.MustParseAddr("10.0.0.1")
	p := bgp.Peer{
		Name: "bgppeer/tor", Address: netip.MustParseAddr("10.0.1.1"), ASN: 65100,
		LocalAddress: netip.MustParseAddr("10.0.0.9"), EBGPMultihopTTL: 3, Password: "s3cret",
		HoldTime: 9 * time.Second, GracefulRestart: &bgp.GracefulRestart{Enabled: true, RestartTime: 30 * time.Second},
		MaxPrefixes: 100, RouteReflectorClient: true,
	}
	ap := peerToAPI(cfg, p, false)
	if ap.Conf.AuthPassword != "s3cret" || ap.Transport.LocalAddress != "10.0.0.9" {
		t.Errorf("conf %v transport %v", ap.Conf, ap.Transport)
	}
	if ap.EbgpMultihop == nil || !ap.EbgpMultihop.Enabled || ap.EbgpMultihop.MultihopTtl != 3 {
		t.Errorf("multihop %v", ap.EbgpMultihop)
	}
	// Keepalive defaults to a third of the hold time.
	if ap.Timers.Config.HoldTime != 9 || ap.Timers.Config.KeepaliveInterval != 3 {
		t.Errorf("timers %v", ap.Timers.Config)
	}
	if ap.GracefulRestart == nil || ap.GracefulRestart.RestartTime != 30 {
		t.Errorf("per-peer restart time: %v", ap.GracefulRestart)
	}
	// Restart is the default action, and the one GoBGP enforces.
	if pl := ap.AfiSafis[0].PrefixLimits; pl == nil || pl.MaxPrefixes != 100 {
		t.Errorf("prefix limit %v", pl)
	}
	if rr := ap.RouteReflector; rr == nil || !rr.RouteReflectorClient || rr.RouteReflectorClusterId != cfg.RouterID.String() {
		t.Errorf("route reflector %v: want client with the router ID as cluster ID", rr)
	}

	p.GracefulRestart = &bgp.GracefulRestart{Enabled: false}
	p.MaxPrefixAction = bgp.MaxPrefixDrop
	ap = peerToAPI(cfg, p, false)
	if ap.GracefulRestart != nil || ap.AfiSafis[0].MpGracefulRestart.Config.Enabled {
		t.Errorf("graceful restart off for this peer but rendered: %v", ap.GracefulRestart)
	}
	if ap.AfiSafis[0].PrefixLimits != nil {
		t.Errorf("Drop is the import policy's, but GoBGP got a limit: %v", ap.AfiSafis[0].PrefixLimits)
	}

	// samePeer sees every setting, the graceful restart pointer by value.
	q := p
	q.GracefulRestart = &bgp.GracefulRestart{Enabled: false}
	if !samePeer(p, q) {
		t.Error("equal peers with distinct GracefulRestart pointers differ")
	}
	q.Password = "other"
	if samePeer(p, q) {
		t.Error("a new password is not a change")
	}
}
