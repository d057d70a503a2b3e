package dataplane

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/daemon/services"
)

// udpFlow is a DNATed UDP entry: client -> frontend, answered by endpoint.
func udpFlow(client, frontend, endpoint netip.AddrPort) *netlink.ConntrackFlow {
	f := &netlink.ConntrackFlow{FamilyType: unix.AF_INET, TimeOut: 100}
	f.Forward = netlink.IPTuple{
		SrcIP: net.IP(client.Addr().AsSlice()), DstIP: net.IP(frontend.Addr().AsSlice()),
		SrcPort: client.Port(), DstPort: frontend.Port(), Protocol: unix.IPPROTO_UDP,
	}
	f.Reverse = netlink.IPTuple{
		SrcIP: net.IP(endpoint.Addr().AsSlice()), DstIP: net.IP(client.Addr().AsSlice()),
		SrcPort: endpoint.Port(), DstPort: client.Port(), Protocol: unix.IPPROTO_UDP,
	}
	return f
}

func TestNetlinkConntrackDeletesOnlyStaleUDPEntries(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("kernel test needs root")
	}
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := testutils.UnmountNS(n); err != nil {
			t.Errorf("unmount netns: %v", err)
		}
	})
	nh, err := netns.GetFromPath(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nh.Close() })
	h, err := netlink.NewHandleAt(nh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)

	dns := netip.MustParseAddrPort("10.96.0.10:53")
	gone := netip.MustParseAddrPort("10.244.1.6:5353")
	kept := netip.MustParseAddrPort("10.244.2.9:5353")
	other := netip.MustParseAddrPort("10.96.0.20:53")
	for _, f := range []*netlink.ConntrackFlow{
		udpFlow(netip.MustParseAddrPort("10.244.3.3:40000"), dns, gone),
		udpFlow(netip.MustParseAddrPort("10.244.3.4:40001"), dns, kept),
		udpFlow(netip.MustParseAddrPort("10.244.3.5:40002"), other, gone),
	} {
		if err := h.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, f); err != nil {
			t.Fatalf("create conntrack entry: %v", err)
		}
	}

	n2, err := NetlinkConntrack{Handle: h}.DeleteUDP([]services.StaleFlow{{Frontend: dns, Endpoint: gone}})
	if err != nil {
		t.Fatal(err)
	}
	if n2 != 1 {
		t.Fatalf("deleted %d entries, want 1", n2)
	}
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, f := range flows {
		left = append(left, f.Forward.DstIP.String()+" via "+f.Reverse.SrcIP.String())
	}
	if len(left) != 2 {
		t.Fatalf("entries left %v, want the kept endpoint's and the other frontend's", left)
	}
	for _, f := range flows {
		if f.Forward.DstIP.Equal(net.IP(dns.Addr().AsSlice())) && f.Reverse.SrcIP.Equal(net.IP(gone.Addr().AsSlice())) {
			t.Fatalf("stale entry survived: %v", left)
		}
	}

	// A frontend that had no endpoints: every entry to it goes.
	n3, err := NetlinkConntrack{Handle: h}.DeleteUDP([]services.StaleFlow{{Frontend: dns}})
	if err != nil || n3 != 1 {
		t.Fatalf("delete all of %s: %d, %v", dns, n3, err)
	}
}
