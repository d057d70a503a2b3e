package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/meridian-net/meridian/daemon/nft"
)

// TestDNATConnect sends real TCP connections through the table: a connect to
// the virtual IP 10.96.0.10:80 from inside the namespace is DNATed at the
// nat output hook, through the concatenated-key verdict map and a
// numgen random mod 2 endpoint map, to one of two local listeners.
func TestDNATConnect(t *testing.T) {
	n, c := newNS(t)
	h, err := netlink.NewHandleAt(netns.NsHandle(int(n.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	eps := []string{"10.244.1.2", "10.244.1.3"}
	for _, ep := range eps {
		addr, _ := netlink.ParseAddr(ep + "/32")
		if err := h.AddrAdd(lo, addr); err != nil {
			t.Fatalf("add %s: %v", ep, err)
		}
	}
	// The virtual IP is nowhere; a route lets the connect reach the output
	// hook, where it is rewritten to a local address.
	_, vipNet, _ := net.ParseCIDR("10.96.0.0/16")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: vipNet, Scope: netlink.SCOPE_LINK, Src: net.ParseIP(eps[0])}); err != nil {
		t.Fatalf("route: %v", err)
	}

	desired := nft.Table{
		Chains: []nft.Chain{
			{Name: nft.ChainNATOutput, Type: nft.TypeNAT, Hook: nft.HookOutput, Priority: nft.PriorityDstNAT, Rules: []nft.Rule{
				{Action: nft.Action{Kind: nft.ActVMap, Keys: []nft.Field{nft.IPDaddr, nft.L4Proto, nft.THDport}, Map: "service-ips"}},
			}},
			{Name: "svc-web", Rules: []nft.Rule{{Counter: true, Action: nft.Action{Kind: nft.ActVMap, Keys: []nft.Field{nft.Numgen(2)}, Map: "svc-web-eps"}}}},
			// ICMP port-unreachable (plain reject) does not reach a socket
			// of this namespace that connected over the lo route (also with
			// the nft binary); a TCP reset does.
			{Name: "svc-empty", Rules: []nft.Rule{
				{Match: []nft.Match{{Keys: []nft.Field{nft.L4Proto}, Value: "tcp"}}, Action: nft.Action{Kind: nft.ActRejectTCP}},
				{Action: nft.Action{Kind: nft.ActReject}},
			}},
			{Name: "ep-a", Rules: []nft.Rule{{Match: []nft.Match{{Keys: []nft.Field{nft.L4Proto}, Value: "tcp"}}, Action: nft.Action{Kind: nft.ActDNAT, Addr: eps[0], Port: 8080}}}},
			{Name: "ep-b", Rules: []nft.Rule{{Match: []nft.Match{{Keys: []nft.Field{nft.L4Proto}, Value: "tcp"}}, Action: nft.Action{Kind: nft.ActDNAT, Addr: eps[1], Port: 8081}}}},
		},
		Maps: []nft.Map{
			{Name: "service-ips", KeyType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetProto, nft.TypeInetService}, DataType: []nft.DataType{nft.TypeVerdict},
				Elements: []nft.Element{{Key: "10.96.0.10 . tcp . 80", Value: "goto svc-web"}, {Key: "10.96.0.11 . tcp . 80", Value: "goto svc-empty"}}},
			{Name: "svc-web-eps", KeyType: []nft.DataType{nft.TypeMark}, DataType: []nft.DataType{nft.TypeVerdict},
				Elements: []nft.Element{{Key: "0", Value: "goto ep-a"}, {Key: "1", Value: "goto ep-b"}}},
		},
	}
	mustApply(t, c, desired)

	hits := map[string]int{}
	err = n.Do(func(ns.NetNS) error {
		accepted := make(chan string)
		for i, ep := range eps {
			l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ep, 8080+i))
			if err != nil {
				return err
			}
			defer l.Close()
			go func() {
				for {
					conn, err := l.Accept()
					if err != nil {
						return
					}
					accepted <- conn.LocalAddr().String()
					conn.Close()
				}
			}()
		}
		// A Service without endpoints rejects at once instead of timing out.
		start := time.Now()
		if conn, err := net.DialTimeout("tcp", "10.96.0.11:80", 2*time.Second); err == nil {
			conn.Close()
			return fmt.Errorf("connect to a Service without endpoints succeeded")
		} else if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
			return fmt.Errorf("connect to a Service without endpoints: %v after %v, want connection refused at once", err, time.Since(start))
		}
		for range 24 {
			conn, err := net.DialTimeout("tcp", "10.96.0.10:80", 2*time.Second)
			if err != nil {
				return fmt.Errorf("connect to the virtual IP: %w", err)
			}
			// The socket still sees the virtual IP: conntrack undoes the
			// DNAT on replies.
			if got := netip.MustParseAddrPort(conn.RemoteAddr().String()); got.String() != "10.96.0.10:80" {
				conn.Close()
				return fmt.Errorf("remote address %s, want the virtual IP", got)
			}
			select {
			case ep := <-accepted:
				hits[ep]++
			case <-time.After(2 * time.Second):
				conn.Close()
				return fmt.Errorf("no listener accepted the connection")
			}
			conn.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// 24 random picks between two endpoints all landing on one has
	// probability 2^-23.
	if hits["10.244.1.2:8080"] == 0 || hits["10.244.1.3:8081"] == 0 {
		t.Errorf("numgen spread over endpoints = %v, want both used", hits)
	}

	// Without its map element the virtual IP is not translated: the
	// connect goes nowhere (nothing owns 10.96.0.10) and fails.
	desired.Maps[0].Elements = nil
	mustApply(t, c, desired)
	err = n.Do(func(ns.NetNS) error {
		conn, err := net.DialTimeout("tcp", "10.96.0.10:80", 500*time.Millisecond)
		if err == nil {
			conn.Close()
			return fmt.Errorf("connect succeeded after the service was removed")
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
