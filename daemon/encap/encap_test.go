package encap

import (
	"net/netip"
	"slices"
	"testing"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestDecide(t *testing.T) {
	// Node 198.18.1.11 in rack 1 (198.18.1.0/24, tor1 at 198.18.1.1); the
	// remote node 198.18.2.11 sits in rack 2.
	rack1 := prefixes("198.18.1.11/24", "10.244.1.0/32")
	owner := netip.MustParseAddr("198.18.2.11")
	sameRack := netip.MustParseAddr("198.18.1.12")
	for _, tc := range []struct {
		name string
		in   Input
		want Decision
	}{
		{"never keeps the BGP next hop even off-subnet",
			Input{Mode: ModeNever, NextHops: addrs("198.18.2.11"), Endpoint: owner, Connected: rack1},
			Decision{NextHops: addrs("198.18.2.11"), Reason: ReasonModeNever}},
		{"never with a ToR path routes through the ToR",
			Input{Mode: ModeNever, NextHops: addrs("198.18.2.11"), FabricPeers: addrs("198.18.1.1"), Endpoint: owner, Connected: rack1},
			Decision{NextHops: addrs("198.18.1.1"), Reason: ReasonFabricHasPrefix}},
		{"always tunnels to a connected node",
			Input{Mode: ModeAlways, NextHops: addrs("198.18.1.12"), Endpoint: sameRack, Connected: rack1},
			Decision{Encapsulate: true, Endpoint: sameRack, Reason: ReasonModeAlways}},
		{"always tunnels even when the fabric has the prefix",
			Input{Mode: ModeAlways, NextHops: addrs("198.18.2.11"), FabricPeers: addrs("198.18.1.1"), Endpoint: owner, Connected: rack1},
			Decision{Encapsulate: true, Endpoint: owner, Reason: ReasonModeAlways}},
		{"always without an owner routes natively",
			Input{Mode: ModeAlways, NextHops: addrs("198.18.1.12"), Connected: rack1},
			Decision{NextHops: addrs("198.18.1.12"), Reason: ReasonNoTunnelEndpoint}},
		{"cross-subnet, same subnet: native",
			Input{Mode: ModeCrossSubnet, NextHops: addrs("198.18.1.12"), Endpoint: sameRack, Connected: rack1},
			Decision{NextHops: addrs("198.18.1.12"), Reason: ReasonNextHopConnected}},
		{"cross-subnet, other subnet, no ToR path: tunnel to the owner",
			Input{Mode: ModeCrossSubnet, NextHops: addrs("198.18.2.11"), Endpoint: owner, Connected: rack1},
			Decision{Encapsulate: true, Endpoint: owner, Reason: ReasonNextHopNotConnected}},
		{"cross-subnet, other subnet, ToR announced it: native through the ToR",
			Input{Mode: ModeCrossSubnet, NextHops: addrs("198.18.2.11"), FabricPeers: addrs("198.18.1.1"), Endpoint: owner, Connected: rack1},
			Decision{NextHops: addrs("198.18.1.1"), Reason: ReasonFabricHasPrefix}},
		{"cross-subnet, two ToRs: ECMP over both, sorted and unique",
			Input{Mode: ModeCrossSubnet, NextHops: addrs("198.18.2.11"), FabricPeers: addrs("198.18.1.2", "198.18.1.1", "198.18.1.2"), Endpoint: owner, Connected: rack1},
			Decision{NextHops: addrs("198.18.1.1", "198.18.1.2"), Reason: ReasonFabricHasPrefix}},
		{"cross-subnet, a multihop ToR is no usable gateway: tunnel",
			Input{Mode: ModeCrossSubnet, NextHops: addrs("198.18.2.11"), FabricPeers: addrs("192.0.2.1"), Endpoint: owner, Connected: rack1},
			Decision{Encapsulate: true, Endpoint: owner, Reason: ReasonNextHopNotConnected}},
		{"cross-subnet, one of two ECMP next hops off-subnet: tunnel",
			Input{Mode: ModeCrossSubnet, NextHops: addrs("198.18.1.12", "198.18.2.11"), Endpoint: owner, Connected: rack1},
			Decision{Encapsulate: true, Endpoint: owner, Reason: ReasonNextHopNotConnected}},
		{"cross-subnet, not a node's pod CIDR: native, nothing would decapsulate",
			Input{Mode: ModeCrossSubnet, NextHops: addrs("198.18.2.11"), Connected: rack1},
			Decision{NextHops: addrs("198.18.2.11"), Reason: ReasonNoTunnelEndpoint}},
		{"cross-subnet, a /0 is not a connected subnet",
			Input{Mode: ModeCrossSubnet, NextHops: addrs("198.18.2.11"), Endpoint: owner, Connected: prefixes("0.0.0.0/0")},
			Decision{Encapsulate: true, Endpoint: owner, Reason: ReasonNextHopNotConnected}},
		{"cross-subnet, a point-to-point /32 peer counts",
			Input{Mode: ModeCrossSubnet, NextHops: addrs("192.0.2.7"), Endpoint: netip.MustParseAddr("192.0.2.7"), Connected: prefixes("192.0.2.7/32")},
			Decision{NextHops: addrs("192.0.2.7"), Reason: ReasonNextHopConnected}},
		{"unknown mode behaves as the default, cross-subnet",
			Input{Mode: "", NextHops: addrs("198.18.2.11"), Endpoint: owner, Connected: rack1},
			Decision{Encapsulate: true, Endpoint: owner, Reason: ReasonNextHopNotConnected}},
		{"4in6-mapped addresses are unmapped",
			Input{Mode: ModeAlways, Endpoint: netip.MustParseAddr("::ffff:198.18.2.11")},
			Decision{Encapsulate: true, Endpoint: owner, Reason: ReasonModeAlways}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Decide(tc.in)
			if got.Encapsulate != tc.want.Encapsulate || got.Endpoint != tc.want.Endpoint || got.Reason != tc.want.Reason ||
				!slices.Equal(got.NextHops, tc.want.NextHops) {
				t.Errorf("Decide = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestPodMTU(t *testing.T) {
	for _, tc := range []struct {
		host     int
		mode     Mode
		typ      Type
		override int
		want     int
	}{
		{1500, ModeNever, TypeIPIP, 0, 1500},
		{1500, ModeCrossSubnet, TypeIPIP, 0, 1480},
		{1500, ModeAlways, TypeIPIP, 0, 1480},
		{1500, ModeCrossSubnet, TypeVXLAN, 0, 1450},
		{9000, ModeAlways, TypeVXLAN, 0, 8950},
		{9000, ModeNever, TypeVXLAN, 0, 9000},
		{1500, ModeCrossSubnet, TypeIPIP, 1400, 1400},
		{1500, ModeNever, TypeIPIP, 9000, 9000},
		{600, ModeAlways, TypeVXLAN, 0, MinMTU},
		{0, ModeNever, TypeIPIP, 0, MinMTU},
	} {
		if got := PodMTU(tc.host, tc.mode, tc.typ, tc.override); got != tc.want {
			t.Errorf("PodMTU(%d, %s, %s, %d) = %d, want %d", tc.host, tc.mode, tc.typ, tc.override, got, tc.want)
		}
	}
	if got := TunnelMTU(1500, TypeIPIP); got != 1480 {
		t.Errorf("TunnelMTU(1500, IPIP) = %d, want 1480", got)
	}
	if got := TunnelMTU(1500, TypeVXLAN); got != 1450 {
		t.Errorf("TunnelMTU(1500, VXLAN) = %d, want 1450", got)
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeCrossSubnet, "Never": ModeNever, "CrossSubnet": ModeCrossSubnet, "Always": ModeAlways} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"never", "IPIP", "cross-subnet"} {
		if _, err := ParseMode(bad); err == nil {
			t.Errorf("ParseMode(%q) accepted", bad)
		}
	}
	for in, want := range map[string]Type{"": TypeIPIP, "IPIP": TypeIPIP, "VXLAN": TypeVXLAN} {
		if got, err := ParseType(in); err != nil || got != want {
			t.Errorf("ParseType(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"vxlan", "GRE", "Always"} {
		if _, err := ParseType(bad); err == nil {
			t.Errorf("ParseType(%q) accepted", bad)
		}
	}
}

func TestTunnelAddressAndVTEPMAC(t *testing.T) {
	for in, want := range map[string]string{"10.244.3.0/24": "10.244.3.0", "10.244.3.77/24": "10.244.3.0", "10.244.4.0/30": "10.244.4.0", "10.244.0.0/16": "10.244.0.0"} {
		got, ok := TunnelAddress(netip.MustParsePrefix(in))
		if !ok || got.String() != want {
			t.Errorf("TunnelAddress(%s) = %s, %v; want %s", in, got, ok, want)
		}
	}
	for _, in := range []string{"10.244.3.0/31", "10.244.3.1/32", "0.0.0.0/0", "fd00::/64"} {
		if got, ok := TunnelAddress(netip.MustParsePrefix(in)); ok {
			t.Errorf("TunnelAddress(%s) = %s, want none", in, got)
		}
	}
	if _, ok := TunnelAddress(netip.Prefix{}); ok {
		t.Error("TunnelAddress of the zero prefix returned an address")
	}
	mac := VTEPMAC(netip.MustParseAddr("198.18.2.11"))
	if mac.String() != "0e:4d:c6:12:02:0b" {
		t.Errorf("VTEPMAC = %s", mac)
	}
	// Locally administered unicast (IEEE 802 bit 1 set, bit 0 clear), so it
	// never collides with a vendor MAC and is never a multicast address.
	if mac[0]&0x02 == 0 || mac[0]&0x01 != 0 {
		t.Errorf("VTEPMAC %s is not locally administered unicast", mac)
	}
	if VTEPMAC(netip.MustParseAddr("198.18.2.12")).String() == mac.String() {
		t.Error("two nodes got the same VTEP MAC")
	}
}
