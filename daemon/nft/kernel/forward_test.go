package kernel

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/meridian-net/meridian/daemon/nft"
)

// link adds a veth pair from the router namespace to peer and addresses
// both ends (/24).
func link(t *testing.T, router, peer ns.NetNS, name, routerAddr, peerAddr string) {
	t.Helper()
	hr, err := netlink.NewHandleAt(netns.NsHandle(int(router.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer hr.Close()
	hp, err := netlink.NewHandleAt(netns.NsHandle(int(peer.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer hp.Close()
	if err := hr.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(peer.Fd()))}); err != nil {
		t.Fatalf("veth %s: %v", name, err)
	}
	for _, side := range []struct {
		h    *netlink.Handle
		name string
		addr string
	}{{hr, name, routerAddr}, {hp, "eth0", peerAddr}} {
		l, err := side.h.LinkByName(side.name)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(side.addr + "/24")
		if err := side.h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := side.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
}

// TestForwardDNATMasquerade routes a client through a router namespace
// holding the table: the client's connect to the virtual IP is DNATed in
// nat-prerouting to a server in a third namespace, marked, and masqueraded
// in nat-postrouting. The server has no route back to the client, so the
// connection works only if masquerade does, and it sees the router's
// address.
func TestForwardDNATMasquerade(t *testing.T) {
	router, c := newNS(t)
	client, _ := newNS(t)
	server, _ := newNS(t)
	link(t, router, client, "to-client", "10.0.1.1", "10.0.1.2")
	link(t, router, server, "to-server", "10.0.2.1", "10.0.2.2")
	if err := router.Do(func(ns.NetNS) error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	hc, err := netlink.NewHandleAt(netns.NsHandle(int(client.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	if err := hc.RouteAdd(&netlink.Route{Gw: net.ParseIP("10.0.1.1")}); err != nil {
		t.Fatalf("client default route: %v", err)
	}

	mustApply(t, c, nft.Table{
		Chains: []nft.Chain{
			{Name: nft.ChainNATPrerouting, Type: nft.TypeNAT, Hook: nft.HookPrerouting, Priority: nft.PriorityDstNAT, Rules: []nft.Rule{
				{Action: nft.Action{Kind: nft.ActVMap, Keys: []nft.Field{nft.IPDaddr, nft.L4Proto, nft.THDport}, Map: "service-ips"}},
			}},
			{Name: nft.ChainNATPostrouting, Type: nft.TypeNAT, Hook: nft.HookPostrouting, Priority: nft.PrioritySrcNAT, Rules: []nft.Rule{
				{Match: []nft.Match{{Keys: []nft.Field{nft.MetaMark}, Mask: 0x4000, Value: "0x00004000"}}, Counter: true, Action: nft.Action{Kind: nft.ActMasquerade}},
			}},
			{Name: "svc-empty", Rules: []nft.Rule{{Action: nft.Action{Kind: nft.ActReject}}}},
			{Name: "svc-web", Rules: []nft.Rule{
				{Match: []nft.Match{{Keys: []nft.Field{nft.IPSaddr}, Set: "cluster-cidrs", Neg: true}}, MarkOr: 0x4000},
				{Match: []nft.Match{{Keys: []nft.Field{nft.L4Proto}, Value: "tcp"}}, Action: nft.Action{Kind: nft.ActDNAT, Addr: "10.0.2.2", Port: 8080}},
			}},
		},
		Sets: []nft.Set{{Name: "cluster-cidrs", KeyType: []nft.DataType{nft.TypeIPv4Addr}, Interval: true, Elements: []nft.Element{{Key: "10.244.0.0/16"}}}},
		Maps: []nft.Map{{Name: "service-ips", KeyType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetProto, nft.TypeInetService}, DataType: []nft.DataType{nft.TypeVerdict},
			Elements: []nft.Element{{Key: "10.96.0.10 . tcp . 80", Value: "goto svc-web"}, {Key: "10.96.0.11 . tcp . 80", Value: "goto svc-empty"}}}},
	})

	var l net.Listener
	if err := server.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", "10.0.2.2:8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer := make(chan string, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			peer <- err.Error()
			return
		}
		peer <- conn.RemoteAddr().(*net.TCPAddr).IP.String()
		conn.Close()
	}()
	if err := client.Do(func(ns.NetNS) error {
		conn, err := net.DialTimeout("tcp", "10.96.0.10:80", 3*time.Second)
		if err != nil {
			return fmt.Errorf("connect through the router: %w", err)
		}
		return conn.Close()
	}); err != nil {
		t.Fatal(err)
	}
	// A Service without endpoints answers a routed client with ICMP
	// port-unreachable (plain reject, as kube-proxy), refused at once.
	if err := client.Do(func(ns.NetNS) error {
		start := time.Now()
		conn, err := net.DialTimeout("tcp", "10.96.0.11:80", 2*time.Second)
		if err == nil {
			conn.Close()
			return fmt.Errorf("connect to a Service without endpoints succeeded")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
			return fmt.Errorf("connect to a Service without endpoints: %v after %v, want refused at once", err, time.Since(start))
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if got := <-peer; got != "10.0.2.1" {
		t.Errorf("server saw the client as %s, want the router's masquerade address 10.0.2.1", got)
	}
}
