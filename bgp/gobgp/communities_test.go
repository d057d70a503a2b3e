package gobgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/meridian-net/meridian/bgp"
)

func mustCommunities(t *testing.T, ss ...string) []bgp.Community {
	t.Helper()
	var out []bgp.Community
	for _, s := range ss {
		c, err := bgp.ParseCommunity(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return bgp.SortCommunities(out)
}

// wantAttrs waits until s has one fresh best path for prefix carrying
// exactly the communities and LOCAL_PREF given.
func wantAttrs(t *testing.T, s *Speaker, prefix netip.Prefix, comms []bgp.Community, localPref uint32) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%s with communities %v and local pref %d", prefix, comms, localPref), func() (bool, string) {
		ps := pathsFor(t, s, prefix)
		if len(ps) != 1 {
			return false, fmt.Sprintf("paths: %+v", ps)
		}
		p := ps[0]
		return p.Best && !p.Stale && slices.Equal(p.Communities, comms) && p.LocalPref == localPref, fmt.Sprintf("%+v", p)
	})
}

// A node originates a path with standard and large communities and a
// LOCAL_PREF: its iBGP peer receives both, its eBGP peer receives the
// communities but no LOCAL_PREF (RFC 4271 section 5.1.5), and changing
// either re-announces the path without touching the sessions.
func TestCommunitiesAndLocalPref(t *testing.T) {
	port := freePort(t)
	addrA, addrB, addrC := netip.MustParseAddr("127.10.5.1"), netip.MustParseAddr("127.10.5.2"), netip.MustParseAddr("127.10.5.3")
	a := startSpeaker(t, "a", speakerConfig(addrA.String(), 64512, port, 0))
	dial := func(name string, addr netip.Addr, asn uint32) *Speaker {
		cfg := speakerConfig(addr.String(), asn, -1, 0)
		cfg.ListenAddresses = nil
		s := startSpeaker(t, name, cfg)
		if err := s.SetPeers(context.Background(), []bgp.Peer{{Name: "a", Address: addrA, ASN: 64512, Port: uint16(port)}}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	b := dial("b", addrB, 64512) // another node: iBGP
	c := dial("c", addrC, 65001) // a top-of-rack router: eBGP
	ctx := context.Background()
	if err := a.SetPeers(ctx, []bgp.Peer{
		{Name: "b", Address: addrB, ASN: 64512, Passive: true},
		{Name: "c", Address: addrC, ASN: 65001, Passive: true, External: true},
	}); err != nil {
		t.Fatal(err)
	}
	waitEstablished(t, b, addrA, false, 20*time.Second)
	waitEstablished(t, c, addrA, false, 20*time.Second)
	upB, upC := uptime(t, a, addrB), uptime(t, a, addrC)

	prefix := netip.MustParsePrefix("10.244.51.0/24")
	comms := mustCommunities(t, "65000:100", "64512:1:2", "4200000000:7:8", "65535:65281")
	lp := uint32(200)
	ads := []bgp.Advertisement{{Prefix: prefix, NextHop: addrA, Communities: comms, LocalPref: &lp}}
	if err := a.SetAdvertisements(ctx, ads); err != nil {
		t.Fatal(err)
	}
	wantAttrs(t, b, prefix, comms, 200)
	// c is eBGP: no LOCAL_PREF arrives, so it reads as the default.
	wantAttrs(t, c, prefix, comms, 100)

	// The same set again, in fresh slices, is a no-op.
	age := localPathAge(t, a, prefix)
	time.Sleep(10 * time.Millisecond)
	lp2 := uint32(200)
	if err := a.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: prefix, NextHop: addrA, Communities: slices.Clone(comms), LocalPref: &lp2}}); err != nil {
		t.Fatal(err)
	}
	if again := localPathAge(t, a, prefix); !again.Equal(age) {
		t.Errorf("re-applying equal advertisements replaced the path (age %s -> %s)", age, again)
	}
	// The speaker keeps its own copy: changing the caller's slice changes
	// nothing applied, so the next equal set is still a no-op.
	comms[0] = bgp.Community{A: 1, B: 1}
	if err := a.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: prefix, NextHop: addrA, Communities: mustCommunities(t, "65000:100", "64512:1:2", "4200000000:7:8", "65535:65281"), LocalPref: &lp2}}); err != nil {
		t.Fatal(err)
	}
	if again := localPathAge(t, a, prefix); !again.Equal(age) {
		t.Errorf("the caller's slice changed what the speaker recorded (age %s -> %s)", age, again)
	}

	// New communities and no LOCAL_PREF: re-announced to both.
	next := mustCommunities(t, "65000:200")
	if err := a.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: prefix, NextHop: addrA, Communities: next}}); err != nil {
		t.Fatal(err)
	}
	wantAttrs(t, b, prefix, next, 100)
	wantAttrs(t, c, prefix, next, 100)

	// None at all: the path carries no COMMUNITIES attribute.
	if err := a.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: prefix, NextHop: addrA}}); err != nil {
		t.Fatal(err)
	}
	wantAttrs(t, b, prefix, nil, 100)
	wantAttrs(t, c, prefix, nil, 100)

	if got := uptime(t, a, addrB); !got.Equal(upB) {
		t.Errorf("session to b was reset by attribute changes (up %s -> %s)", upB, got)
	}
	if got := uptime(t, a, addrC); !got.Equal(upC) {
		t.Errorf("session to c was reset by attribute changes (up %s -> %s)", upC, got)
	}
}

func TestValidateAdvertisementCommunities(t *testing.T) {
	nh := netip.MustParseAddr("192.0.2.1")
	p := netip.MustParsePrefix("10.0.0.0/24")
	ok := []bgp.Advertisement{{Prefix: p, NextHop: nh, Communities: []bgp.Community{{A: 65535, B: 65535}, {Large: true, A: 1 << 31, B: 1, C: 2}}}}
	if err := validateAdvertisements(ok); err != nil {
		t.Errorf("valid communities refused: %v", err)
	}
	bad := []bgp.Advertisement{{Prefix: p, NextHop: nh, Communities: []bgp.Community{{A: 65536, B: 1}}}}
	if err := validateAdvertisements(bad); err == nil {
		t.Error("standard community with a 17-bit half accepted")
	}
}
