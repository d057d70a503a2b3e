package tunnel

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/meridian-net/meridian/daemon/encap"
	"github.com/meridian-net/meridian/daemon/routes"
)

func TestDesired(t *testing.T) {
	self := netip.MustParseAddr("198.18.1.11")
	pods := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}
	nodeC, nodeD := netip.MustParseAddr("198.18.2.11"), netip.MustParseAddr("198.18.2.12")
	vxlan := func(dst string, vtep string, ep netip.Addr) routes.Route {
		return routes.Route{Dst: netip.MustParsePrefix(dst), NextHops: []netip.Addr{netip.MustParseAddr(vtep)}, Dev: encap.VXLANDevice, Endpoint: ep}
	}
	rs := []routes.Route{
		{Dst: pods[0], Blackhole: true},
		{Dst: netip.MustParsePrefix("10.244.2.0/24"), NextHops: []netip.Addr{netip.MustParseAddr("198.18.1.12")}},
		vxlan("10.244.4.0/24", "10.244.4.0", nodeD),
		vxlan("10.244.3.0/24", "10.244.3.0", nodeC),
		// A route read back from the kernel has no endpoint: no peer.
		vxlan("10.244.5.0/24", "10.244.5.0", netip.Addr{}),
	}
	addr := netip.MustParseAddr("10.244.1.0")
	for _, tc := range []struct {
		name string
		mode encap.Mode
		typ  encap.Type
		want Config
	}{
		{"never: no tunnel, the address still known for release", encap.ModeNever, encap.TypeVXLAN, Config{NodeIP: self, Address: addr}},
		{"unset mode: no tunnel", "", encap.TypeIPIP, Config{NodeIP: self, Address: addr}},
		{"cross-subnet IPIP: tunl0, no peers", encap.ModeCrossSubnet, encap.TypeIPIP, Config{Type: encap.TypeIPIP, NodeIP: self, Address: addr, MTU: 1480}},
		{"default type is IPIP", encap.ModeAlways, "", Config{Type: encap.TypeIPIP, NodeIP: self, Address: addr, MTU: 1480}},
		{"VXLAN: one peer per VXLAN route, sorted", encap.ModeCrossSubnet, encap.TypeVXLAN, Config{Type: encap.TypeVXLAN, NodeIP: self, Address: addr, MTU: 1450, Peers: []Peer{
			{VTEP: netip.MustParseAddr("10.244.3.0"), MAC: encap.VTEPMAC(nodeC), Endpoint: nodeC},
			{VTEP: netip.MustParseAddr("10.244.4.0"), MAC: encap.VTEPMAC(nodeD), Endpoint: nodeD},
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Desired(tc.mode, tc.typ, self, pods, 1500, rs); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Desired =\n %+v\nwant\n %+v", got, tc.want)
			}
		})
	}
	if got := Desired(encap.ModeAlways, encap.TypeIPIP, self, []netip.Prefix{netip.MustParsePrefix("10.244.1.0/31")}, 1500, nil); got.Address.IsValid() {
		t.Errorf("a /31 pod CIDR gave tunnel address %s", got.Address)
	}
}
