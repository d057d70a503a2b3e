package gobgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/meridian-net/meridian/bgp"
)

// Three nodes, n1 reflecting for n2 and n3, and an eBGP ToR peering with
// all three: reflection between the nodes is untouched by the export
// policy (also before any external peer exists), and the ToR learns each
// node's prefix from its owner only. Clearing External on n1's session is
// the control: n1 then passes on what it reflects, as before the fix.
func TestExternalPeersGetOnlyLocalPaths(t *testing.T) {
	port := freePort(t)
	addrs := []netip.Addr{netip.MustParseAddr("127.10.2.1"), netip.MustParseAddr("127.10.2.2"), netip.MustParseAddr("127.10.2.3")}
	torAddr := netip.MustParseAddr("127.10.2.10")
	const torASN = 65100
	prefixes := []netip.Prefix{
		netip.MustParsePrefix("10.244.1.0/24"),
		netip.MustParsePrefix("10.244.2.0/24"),
		netip.MustParsePrefix("10.244.3.0/24"),
	}
	ctx := context.Background()
	var nodes []*Speaker
	for i, a := range addrs {
		nodes = append(nodes, startSpeaker(t, fmt.Sprintf("n%d", i+1), speakerConfig(a.String(), bgp.DefaultASN, port, 0)))
	}
	tor := startSpeaker(t, "tor", speakerConfig(torAddr.String(), torASN, port, 0))

	// n1 is the reflector; the clients dial it.
	meshPeers := func(i int) []bgp.Peer {
		if i == 0 {
			return []bgp.Peer{
				{Name: "n2", Address: addrs[1], ASN: bgp.DefaultASN, Port: uint16(port), Passive: true, RouteReflectorClient: true},
				{Name: "n3", Address: addrs[2], ASN: bgp.DefaultASN, Port: uint16(port), Passive: true, RouteReflectorClient: true},
			}
		}
		return []bgp.Peer{{Name: "n1", Address: addrs[0], ASN: bgp.DefaultASN, Port: uint16(port)}}
	}
	for i, n := range nodes {
		if err := n.SetPeers(ctx, meshPeers(i)); err != nil {
			t.Fatalf("n%d: set peers: %v", i+1, err)
		}
		if err := n.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: prefixes[i], NextHop: addrs[i]}}); err != nil {
			t.Fatalf("n%d: advertise: %v", i+1, err)
		}
	}
	// Reflection without any external peer: n3 learns n2's prefix via n1.
	wantPath(t, nodes[2], prefixes[1], addrs[1], addrs[0], 20*time.Second)
	wantPath(t, nodes[1], prefixes[2], addrs[2], addrs[0], 10*time.Second)

	torPeer := bgp.Peer{Name: "bgppeer/tor", Address: torAddr, ASN: torASN, Port: uint16(port), External: true}
	for i, n := range nodes {
		peers := append(meshPeers(i), torPeer)
		if err := n.SetPeers(ctx, peers); err != nil {
			t.Fatalf("n%d: set peers with the ToR: %v", i+1, err)
		}
		// Idempotent: the same set again changes nothing.
		if err := n.SetPeers(ctx, peers); err != nil {
			t.Fatalf("n%d: set peers again: %v", i+1, err)
		}
	}
	var torPeers []bgp.Peer
	for i, a := range addrs {
		torPeers = append(torPeers, bgp.Peer{Name: fmt.Sprintf("n%d", i+1), Address: a, ASN: bgp.DefaultASN, Passive: true})
	}
	if err := tor.SetPeers(ctx, torPeers); err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		waitEstablished(t, tor, a, false, 30*time.Second)
	}
	for i, p := range prefixes {
		wantPath(t, tor, p, addrs[i], addrs[i], 10*time.Second)
	}
	// Give leaked paths time to arrive: an update from n1 or n3 carrying
	// n2's prefix follows within milliseconds of the session coming up.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for i, p := range prefixes {
			ps := pathsFor(t, tor, p)
			if len(ps) != 1 || ps[0].PeerAddress != addrs[i] {
				t.Fatalf("ToR paths for %s (owner %s): %+v, want only the owner's", p, addrs[i], ps)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The nodes still reflect among themselves.
	wantPath(t, nodes[2], prefixes[1], addrs[1], addrs[0], time.Second)

	// Control: without External, n1 sends the ToR what it reflects.
	plain := torPeer
	plain.External = false
	if err := nodes[0].SetPeers(ctx, append(meshPeers(0), plain)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "ToR learns n2's prefix from n1 too", func() (bool, string) {
		ps := pathsFor(t, tor, prefixes[1])
		for _, p := range ps {
			if p.PeerAddress == addrs[0] {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", ps)
	})
	// And back: External again withdraws it.
	if err := nodes[0].SetPeers(ctx, append(meshPeers(0), torPeer)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "ToR learns n2's prefix from n2 only again", func() (bool, string) {
		ps := pathsFor(t, tor, prefixes[1])
		return len(ps) == 1 && ps[0].PeerAddress == addrs[1], fmt.Sprintf("%+v", ps)
	})
	if got, want := gobgpNeighborSet(t, nodes[0]), []string{noNeighbor, "127.10.2.10/32"}; !slices.Equal(got, want) {
		t.Errorf("n1's neighbor set = %v, want %v", got, want)
	}
	if err := nodes[0].SetPeers(ctx, meshPeers(0)); err != nil {
		t.Fatal(err)
	}
	if got, want := gobgpNeighborSet(t, nodes[0]), []string{noNeighbor}; !slices.Equal(got, want) {
		t.Errorf("n1's neighbor set after removing the ToR = %v, want %v", got, want)
	}
}

// gobgpNeighborSet is the external neighbor set as GoBGP holds it.
func gobgpNeighborSet(t *testing.T, s *Speaker) []string {
	t.Helper()
	var out []string
	err := s.srv.ListDefinedSet(context.Background(), &api.ListDefinedSetRequest{DefinedType: api.DefinedType_NEIGHBOR, Name: externalNeighborSet},
		func(d *api.DefinedSet) { out = append(out, d.GetList()...) })
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}
