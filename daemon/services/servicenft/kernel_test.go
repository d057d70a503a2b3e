package servicenft

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/nft/kernel"
	"github.com/meridian-net/meridian/daemon/services"
)

// newNS returns a throw-away network namespace with lo up, removed when
// the test ends (also on failure).
func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() {
		_ = n.Close()
		_ = testutils.UnmountNS(n)
	})
	h := handle(t, n)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return n
}

func handle(t *testing.T, n ns.NetNS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(int(n.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// veth links node to peer (peer side eth0), addresses both ends in a /24
// and routes the peer's default via the node.
func veth(t *testing.T, node, peer ns.NetNS, name, nodeAddr, peerAddr string) {
	t.Helper()
	hn, hp := handle(t, node), handle(t, peer)
	if err := hn.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(peer.Fd()))}); err != nil {
		t.Fatalf("veth %s: %v", name, err)
	}
	for _, side := range []struct {
		h          *netlink.Handle
		link, addr string
	}{{hn, name, nodeAddr}, {hp, "eth0", peerAddr}} {
		l, err := side.h.LinkByName(side.link)
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
	if err := hp.RouteAdd(&netlink.Route{Gw: net.ParseIP(nodeAddr)}); err != nil {
		t.Fatalf("default route of %s: %v", peerAddr, err)
	}
}

// serve answers every connection on :8080 in n with "<name> <client ip>".
func serve(t *testing.T, n ns.NetNS, name string) {
	t.Helper()
	var l net.Listener
	if err := n.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp4", ":8080")
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", name, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
}

// ask connects from n to addr and returns what the server said, or the
// dial error.
func ask(n ns.NetNS, addr string) (string, error) {
	var reply string
	err := n.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		reply = strings.TrimSpace(line)
		return err
	})
	return reply, err
}

// TestKernelPackets: a client, a node (holding the rendered table) and two
// endpoint namespaces:
//
//	client 10.99.1.2 --- 10.99.1.1 node 10.99.2.1 --- 10.99.2.2 ep1
//	                                    10.99.3.1 --- 10.99.3.2 ep2
//
// with cluster CIDRs 10.99.2.0/24 and 10.99.3.0/24 (the endpoints are the
// "pods").
func TestKernelPackets(t *testing.T) {
	node, client, ep1, ep2 := newNS(t), newNS(t), newNS(t), newNS(t)
	veth(t, node, client, "to-client", "10.99.1.1", "10.99.1.2")
	veth(t, node, ep1, "to-ep1", "10.99.2.1", "10.99.2.2")
	veth(t, node, ep2, "to-ep2", "10.99.3.1", "10.99.3.2")
	if err := node.Do(func(ns.NetNS) error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	// The node reaches ClusterIPs through its nat output hook; it needs a
	// route for the lookup before DNAT (kube-proxy relies on the default).
	hn := handle(t, node)
	toClient, err := hn.LinkByName("to-client")
	if err != nil {
		t.Fatal(err)
	}
	_, vips, _ := net.ParseCIDR("10.96.0.0/16")
	_, lbs, _ := net.ParseCIDR("10.99.9.0/24")
	for _, dst := range []*net.IPNet{vips, lbs} {
		if err := hn.RouteAdd(&netlink.Route{LinkIndex: toClient.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
			t.Fatal(err)
		}
	}
	serve(t, ep1, "ep1")
	serve(t, ep2, "ep2")

	both := []ep{{addr: "10.99.2.2", node: "node-b"}, {addr: "10.99.3.2", node: "node-c"}}
	snap := services.Snapshot{
		Services: []*corev1.Service{
			svc("default", "web", "10.96.0.10", nodePortType(30080)),
			svc("default", "sticky", "10.96.0.11", affinity(60)),
			svc("default", "empty", "10.96.0.12"),
			svc("default", "self", "10.96.0.13"),
			svc("default", "empty-udp", "10.96.0.14", ports(sport("dns", corev1.ProtocolUDP, 53))),
			// Its only endpoint is on another node.
			svc("default", "local", "10.96.0.15", loadBalancer(30015, "10.99.9.9"), etpLocal),
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			v4slice("default", "web", "web-1", 8080, both...),
			v4slice("default", "sticky", "sticky-1", 8080, both...),
			v4slice("default", "self", "self-1", 8080, both[0]),
			v4slice("default", "local", "local-1", 8080, both[1]),
		},
		Config: services.DefaultConfig(),
		Node: services.Node{Name: "node-a", Addresses: []netip.Addr{netip.MustParseAddr("10.99.1.1")},
			ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.99.2.0/24"), netip.MustParsePrefix("10.99.3.0/24")}},
	}
	m, problems := services.Desired(snap)
	desired := Render(m, DefaultConfig())
	conn := kernel.New(int(node.Fd()), slog.New(slog.DiscardHandler))
	if _, err := nft.NewSyncer(conn, slog.New(slog.DiscardHandler)).Sync(desired); err != nil {
		t.Fatalf("apply rendered table: %v\nproblems %v\n%s", err, problems, desired)
	}

	t.Run("ClusterIPSpreadsAndMasqueradesOffClusterClients", func(t *testing.T) {
		hits := map[string]int{}
		for range 24 {
			reply, err := ask(client, "10.96.0.10:80")
			if err != nil {
				t.Fatalf("connect to the ClusterIP: %v", err)
			}
			hits[reply]++
		}
		// The client is outside the cluster CIDRs: masqueraded to the
		// node's address toward each endpoint. 24 picks all on one
		// endpoint has probability 2^-23.
		if hits["ep1 10.99.2.1"] == 0 || hits["ep2 10.99.3.1"] == 0 || len(hits) != 2 {
			t.Errorf("replies %v, want both endpoints, each seeing the node's address", hits)
		}
	})
	t.Run("NoEndpointsRefusedAtOnce", func(t *testing.T) {
		for _, from := range []struct {
			name string
			n    ns.NetNS
		}{{"routed client", client}, {"node itself", node}} {
			start := time.Now()
			_, err := ask(from.n, "10.96.0.12:80")
			if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
				t.Errorf("%s to a Service without endpoints: %v after %v, want connection refused at once", from.name, err, time.Since(start))
			}
		}
	})
	t.Run("NoEndpointsUDPPortUnreachable", func(t *testing.T) {
		// ICMP port unreachable turns into ECONNREFUSED on the client's
		// connected UDP socket. The node routes 10.96.0.0/16 back out of
		// the client's interface: a check in forward would be silenced by
		// the ICMP redirect's rate limit (see the package doc).
		for i := range 3 {
			err := client.Do(func(ns.NetNS) error {
				c, err := net.Dial("udp4", "10.96.0.14:53")
				if err != nil {
					return err
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Second))
				if _, err := c.Write([]byte("q")); err != nil {
					return err
				}
				_, err = c.Read(make([]byte, 16))
				return err
			})
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("UDP query %d to a Service without endpoints: %v, want connection refused", i, err)
			}
		}
	})
	t.Run("Hairpin", func(t *testing.T) {
		// ep1 reaches itself through the Service: without the hairpin
		// masquerade it would answer its own address directly and the
		// connection would never be established.
		reply, err := ask(ep1, "10.96.0.13:80")
		if err != nil {
			t.Fatalf("hairpin connect: %v", err)
		}
		if reply != "ep1 10.99.2.1" {
			t.Errorf("hairpin reply %q, want ep1 seeing the node's address", reply)
		}
	})
	t.Run("SessionAffinity", func(t *testing.T) {
		first, err := ask(client, "10.96.0.11:80")
		if err != nil {
			t.Fatal(err)
		}
		for i := range 16 {
			reply, err := ask(client, "10.96.0.11:80")
			if err != nil {
				t.Fatal(err)
			}
			if reply != first {
				t.Fatalf("connect %d went to %q, first to %q: affinity not kept", i, reply, first)
			}
		}
	})
	t.Run("NodePort", func(t *testing.T) {
		reply, err := ask(client, "10.99.1.1:30080")
		if err != nil {
			t.Fatalf("connect to the NodePort: %v", err)
		}
		if reply != "ep1 10.99.2.1" && reply != "ep2 10.99.3.1" {
			t.Errorf("NodePort reply %q, want an endpoint seeing the node's address", reply)
		}
	})
	t.Run("FromTheNode", func(t *testing.T) {
		reply, err := ask(node, "10.96.0.10:80")
		if err != nil {
			t.Fatalf("node to ClusterIP: %v", err)
		}
		if !strings.HasPrefix(reply, "ep") {
			t.Errorf("reply %q", reply)
		}
	})
	t.Run("ExternalTrafficPolicyLocal", func(t *testing.T) {
		// No endpoint on this node: an outside client is dropped (so a
		// load balancer's health check moves it elsewhere).
		if reply, err := ask(client, "10.99.9.9:80"); err == nil || errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("outside client to a Local load balancer IP without local endpoints: %q, %v; want a drop (timeout)", reply, err)
		}
		// A pod is short-circuited to the cluster's endpoints, its
		// address kept.
		if reply, err := ask(ep1, "10.99.9.9:80"); err != nil || reply != "ep2 10.99.2.2" {
			t.Errorf("pod to the load balancer IP: %q, %v; want ep2 seeing the pod", reply, err)
		}
		// The node too, masqueraded.
		if reply, err := ask(node, "10.99.9.9:80"); err != nil || reply != "ep2 10.99.3.1" {
			t.Errorf("node to the load balancer IP: %q, %v; want ep2 seeing the node's address", reply, err)
		}
	})
	t.Run("RestartSendsNothing", func(t *testing.T) {
		// A restarted meridiand: a fresh Syncer reads the kernel back and
		// plans against it.
		res, err := nft.NewSyncer(conn, slog.New(slog.DiscardHandler)).Sync(Render(m, DefaultConfig()))
		if err != nil {
			t.Fatal(err)
		}
		if !res.Dumped || res.Ops != 0 {
			t.Errorf("second apply: %+v, want a dump and zero ops", res)
		}
	})
	t.Run("SessionAffinityForgetsRemovedEndpoint", func(t *testing.T) {
		// The endpoint a client is pinned to leaves the Service (its
		// server still answers): the client must move to one that is
		// left, not stay on what it recorded.
		first, err := ask(client, "10.96.0.11:80")
		if err != nil {
			t.Fatal(err)
		}
		left := both[1]
		if strings.HasPrefix(first, "ep2") {
			left = both[0]
		}
		snap := snap
		snap.EndpointSlices = slices.Clone(snap.EndpointSlices)
		snap.EndpointSlices[1] = v4slice("default", "sticky", "sticky-1", 8080, left)
		m, _ := services.Desired(snap)
		res, err := nft.NewSyncer(conn, slog.New(slog.DiscardHandler)).Sync(Render(m, DefaultConfig()))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			reply, err := ask(client, "10.96.0.11:80")
			if err != nil {
				t.Fatal(err)
			}
			if reply == first {
				t.Fatalf("connect %d after the sync (%d ops) still went to the removed endpoint: %q", i, res.Ops, reply)
			}
		}
	})
}

// TestKernelScale applies n Services × 10 endpoints to a fresh namespace,
// then one endpoint change, then the same table from a fresh Syncer (a
// restart). It asserts on operations and logs the times.
//
// n is 2000 unless MERIDIAN_SCALE_SERVICES says otherwise. On 6.18 with
// 10k Services, per-endpoint chains reached by goto took 53 s for the full
// sync and 2.9 s for one endpoint change (a transaction that adds a goto
// makes the kernel validate the whole table); endpoints as elements of 64
// shared data maps take about 2 s and 6 ms in the kernel (plus the
// Syncer's plan of the whole table, 0.35 s).
func TestKernelScale(t *testing.T) {
	if testing.Short() {
		t.Skip("thousands of Services in the kernel")
	}
	n := newNS(t)
	services_, eps := 2000, 10
	if v := os.Getenv("MERIDIAN_SCALE_SERVICES"); v != "" {
		if _, err := fmt.Sscan(v, &services_); err != nil || services_ < 2 {
			t.Fatalf("MERIDIAN_SCALE_SERVICES=%q: want a number of Services", v)
		}
	}
	snap := scaleSnapshot(services_, eps)
	m1, _ := services.Desired(snap)
	t1 := Render(m1, DefaultConfig())
	conn := kernel.New(int(n.Fd()), slog.New(slog.DiscardHandler))
	res, err := nft.NewSyncer(conn, slog.New(slog.DiscardHandler)).Sync(t1)
	if err != nil {
		t.Fatalf("full sync: %v", err)
	}
	t.Logf("%d Services × %d endpoints, full sync: %d ops in %v", services_, eps, res.Ops, res.Duration)

	sl := snap.EndpointSlices[services_/2].DeepCopy()
	sl.Endpoints[eps-1].Addresses = []string{"10.250.0.1"}
	snap.EndpointSlices[services_/2] = sl
	m2, _ := services.Desired(snap)
	t2 := Render(m2, DefaultConfig())
	start := time.Now()
	tx := nft.Plan(t1, t2)
	plan := time.Since(start)
	start = time.Now()
	if err := conn.Apply(tx); err != nil {
		t.Fatalf("one endpoint change: %v", err)
	}
	if tx.Ops() != 4 {
		t.Errorf("one endpoint change: %d ops, want 4 (an endpoint element replaced, a hairpin pair replaced):\n%s", tx.Ops(), tx)
	}
	t.Logf("one endpoint change: %d ops; plan %v, kernel %v", tx.Ops(), plan, time.Since(start))

	res, err = nft.NewSyncer(conn, slog.New(slog.DiscardHandler)).Sync(t2)
	if err != nil {
		t.Fatalf("restart sync: %v", err)
	}
	if !res.Dumped || res.Ops != 0 {
		t.Errorf("restart sync: %+v, want a dump and zero ops", res)
	}
	t.Logf("restart (dump + plan, nothing sent): %v", res.Duration)
}
