// Go 1.24 and later open listeners as MPTCP, which refuses TCP_MD5SIG
// (ENOPROTOOPT): GoBGP's listener could not carry the MD5 keys. meridiand
// sets the same directive.
//
//go:debug multipathtcp=0

package gobgp

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/meridian-net/meridian/bgp"
)

// uptime is when GoBGP last brought the session to addr up; a reset moves
// it.
func uptime(t *testing.T, s *Speaker, addr netip.Addr) time.Time {
	t.Helper()
	var up time.Time
	err := s.srv.ListPeer(context.Background(), &api.ListPeerRequest{Address: addr.String()}, func(p *api.Peer) {
		up = p.GetTimers().GetState().GetUptime().AsTime()
	})
	if err != nil {
		t.Fatal(err)
	}
	return up
}

func peerState(t *testing.T, s *Speaker, addr netip.Addr) bgp.PeerState {
	t.Helper()
	st, err := s.Peers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st {
		if p.Address == addr {
			return p
		}
	}
	t.Fatalf("peer %s not listed: %+v", addr, st)
	return bgp.PeerState{}
}

// A hub with two eBGP neighbours: TCP MD5 keys must match for a session to
// come up, changing one neighbour leaves the other session alone, the
// import policy judges and counts what each neighbour sends, and equal
// paths from both neighbours form one multipath set.
func TestPeerSettingsPolicyAndMultipath(t *testing.T) {
	port := freePort(t)
	hubAddr := netip.MustParseAddr("127.10.1.1")
	bAddr, cAddr := netip.MustParseAddr("127.10.1.2"), netip.MustParseAddr("127.10.1.3")
	hub := startSpeaker(t, "hub", speakerConfig(hubAddr.String(), 64512, port, 0))
	dial := func(addr string, asn uint32) *Speaker {
		cfg := speakerConfig(addr, asn, -1, 0)
		cfg.ListenAddresses = nil
		return startSpeaker(t, addr, cfg)
	}
	b := dial(bAddr.String(), 65001)
	c := dial(cAddr.String(), 65002)
	ctx := context.Background()

	hubPeers := []bgp.Peer{
		{Name: "b", Address: bAddr, ASN: 65001, Password: "s3cret", Passive: true, HoldTime: 9 * time.Second},
		{Name: "c", Address: cAddr, ASN: 65002, Passive: true, HoldTime: 9 * time.Second},
	}
	if err := hub.SetPeers(ctx, hubPeers); err != nil {
		t.Fatal(err)
	}
	// b first dials with the wrong key: the kernel drops its segments
	// (RFC 2385), so the session stays down.
	if err := b.SetPeers(ctx, []bgp.Peer{{Name: "hub", Address: hubAddr, ASN: 64512, Port: uint16(port), Password: "wrong"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetPeers(ctx, []bgp.Peer{{Name: "hub", Address: hubAddr, ASN: 64512, Port: uint16(port)}}); err != nil {
		t.Fatal(err)
	}
	waitEstablished(t, hub, cAddr, false, 20*time.Second)
	// GoBGP never sees the dropped handshakes; the node's TcpExt MD5
	// counters (one network namespace for all speakers here) do, and both
	// sides explain the missing session with them.
	for _, side := range []struct {
		s    *Speaker
		peer netip.Addr
	}{{hub, bAddr}, {b, hubAddr}} {
		eventually(t, 10*time.Second, "an MD5 hint as last error", func() (bool, string) {
			st := peerState(t, side.s, side.peer)
			if st.State == "established" {
				t.Fatalf("session with a wrong MD5 key came up: %+v", st)
			}
			return strings.Contains(st.LastError, "TCP MD5 signature failures") && strings.Contains(st.LastError, "check the password"), st.LastError
		})
	}
	if st := peerState(t, hub, cAddr); st.LastError != "" {
		t.Errorf("c has no password but got last error %q", st.LastError)
	}
	if err := b.SetPeers(ctx, []bgp.Peer{{Name: "hub", Address: hubAddr, ASN: 64512, Port: uint16(port), Password: "s3cret"}}); err != nil {
		t.Fatal(err)
	}
	waitEstablished(t, hub, bAddr, false, 30*time.Second)
	if st := peerState(t, hub, bAddr); strings.Contains(st.LastError, "MD5") {
		t.Errorf("established session still blames MD5: %q", st.LastError)
	}

	// Changing c (a new hold time) re-creates c's session only.
	upB := uptime(t, hub, bAddr)
	hubPeers[1].HoldTime = 12 * time.Second
	if err := hub.SetPeers(ctx, hubPeers); err != nil {
		t.Fatal(err)
	}
	waitEstablished(t, hub, cAddr, false, 30*time.Second)
	if got := uptime(t, hub, bAddr); !got.Equal(upB) {
		t.Errorf("changing c reset b's session (up since %s, now %s)", upB, got)
	}

	hub.SetImportPolicy(bgp.ImportPolicy{Allowed: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}})
	shared := netip.MustParsePrefix("10.244.50.0/24")
	for _, sp := range []struct {
		s    *Speaker
		addr netip.Addr
		ads  []netip.Prefix
	}{
		{b, bAddr, []netip.Prefix{shared, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("192.0.2.0/24")}},
		{c, cAddr, []netip.Prefix{shared}},
	} {
		var ads []bgp.Advertisement
		for _, p := range sp.ads {
			ads = append(ads, bgp.Advertisement{Prefix: p, NextHop: sp.addr})
		}
		if err := sp.s.SetAdvertisements(ctx, ads); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "b's paths counted", func() (bool, string) {
		st := peerState(t, hub, bAddr)
		return st.Received == 3 && st.Accepted == 1 && st.Rejected[bgp.ReasonDefaultRoute] == 1 && st.Rejected[bgp.ReasonOutsideAllowed] == 1,
			fmt.Sprintf("%+v", st)
	})
	paths, err := hub.Paths(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		want := ""
		switch p.Prefix.String() {
		case "0.0.0.0/0":
			want = bgp.ReasonDefaultRoute
		case "192.0.2.0/24":
			want = bgp.ReasonOutsideAllowed
		}
		if p.Rejected != want {
			t.Errorf("path %s from %s: Rejected %q, want %q", p.Prefix, p.PeerAddress, p.Rejected, want)
		}
	}
	var best []netip.Addr
	for _, p := range bgp.Multipath(paths) {
		if p.Prefix == shared && p.Best {
			best = append(best, p.NextHop)
		}
	}
	if len(best) != 2 {
		t.Errorf("multipath next hops for %s = %v, want b and c", shared, best)
	}
}
