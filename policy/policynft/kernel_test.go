package policynft

import (
	"bufio"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/nft/kernel"
	"github.com/meridian-net/meridian/policy"
)

// The kernel tests build one node: a namespace with forwarding on, holding
// the table, and a namespace per pod wired like meridian-cni does it, a
// routed veth with the pod's /32 and no bridge. The node also has an
// address of its own, reached through the input hook.

const (
	gatewayAddr = "169.254.1.1"
	nodeAddr    = "10.98.255.1"
	probeWait   = 500 * time.Millisecond
)

func newNetNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() {
		_ = n.Close()
		_ = testutils.UnmountNS(n)
	})
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

func mustDo(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

type testNode struct {
	ns   ns.NetNS
	conn *kernel.Conn
	pods map[string]ns.NetNS // by pod IP
}

func newTestNode(t *testing.T) *testNode {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	n := &testNode{ns: newNetNS(t), pods: map[string]ns.NetNS{}}
	n.conn = kernel.New(int(n.ns.Fd()), slog.New(slog.DiscardHandler))
	mustDo(t, n.ns.Do(func(ns.NetNS) error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	}), "enable forwarding")
	h := handle(t, n.ns)
	lo, err := h.LinkByName("lo")
	mustDo(t, err, "node lo")
	mustDo(t, h.LinkSetUp(lo), "node lo up")
	a, _ := netlink.ParseAddr(nodeAddr + "/32")
	mustDo(t, h.AddrAdd(lo, a), "node address")
	return n
}

// addPod wires a pod namespace to the node: eth0 with ip/32, a default
// route through the link-local gateway the node answers for.
func (n *testNode) addPod(t *testing.T, ip string) ns.NetNS {
	t.Helper()
	p := newNetNS(t)
	hn, hp := handle(t, n.ns), handle(t, p)
	name := fmt.Sprintf("pol%d", len(n.pods))
	mustDo(t, hn.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(p.Fd()))}), "veth")
	host, err := hn.LinkByName(name)
	mustDo(t, err, "host veth")
	gw, _ := netlink.ParseAddr(gatewayAddr + "/32")
	mustDo(t, hn.AddrAdd(host, gw), "gateway address")
	mustDo(t, hn.LinkSetUp(host), "host veth up")
	mustDo(t, hn.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: netlink.NewIPNet(net.ParseIP(ip)), Scope: netlink.SCOPE_LINK}), "pod route")
	eth0, err := hp.LinkByName("eth0")
	mustDo(t, err, "pod eth0")
	pa, _ := netlink.ParseAddr(ip + "/32")
	mustDo(t, hp.AddrAdd(eth0, pa), "pod address")
	mustDo(t, hp.LinkSetUp(eth0), "pod eth0 up")
	mustDo(t, hp.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: netlink.NewIPNet(net.ParseIP(gatewayAddr)), Scope: netlink.SCOPE_LINK}), "gateway route")
	mustDo(t, hp.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP(gatewayAddr)}), "default route")
	n.pods[ip] = p
	return p
}

// serve starts TCP echo servers on tcpPorts and a UDP echo server on
// udpPorts, on ip inside n.
func serve(t *testing.T, n ns.NetNS, ip string, tcpPorts, udpPorts []int) {
	t.Helper()
	mustDo(t, n.Do(func(ns.NetNS) error {
		for _, port := range tcpPorts {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						r := bufio.NewReader(c)
						for {
							line, err := r.ReadString('\n')
							if err != nil {
								return
							}
							if _, err := c.Write([]byte(line)); err != nil {
								return
							}
						}
					}()
				}
			}()
		}
		for _, port := range udpPorts {
			pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, fmt.Sprint(port)))
			if err != nil {
				return err
			}
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 1500)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					_, _ = pc.WriteTo(buf[:n], from)
				}
			}()
		}
		return nil
	}), "start servers on "+ip)
}

// echo sends one line over c and waits for it to come back.
func echo(c net.Conn) bool {
	_ = c.SetDeadline(time.Now().Add(probeWait))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return false
	}
	buf := make([]byte, 5)
	n, err := c.Read(buf)
	return err == nil && string(buf[:n]) == "ping\n"
}

// probe reports whether a connection from netns src to dst gets an answer:
// for TCP a handshake and an echoed line (the replies are new traffic to
// the client's ingress, allowed because they are established), for UDP an
// echoed datagram.
func probe(t *testing.T, src ns.NetNS, p policy.Packet) bool {
	t.Helper()
	ok := false
	dst := net.JoinHostPort(p.Dst.String(), fmt.Sprint(p.DstPort))
	err := src.Do(func(ns.NetNS) error {
		switch p.Protocol {
		case corev1.ProtocolTCP:
			c, err := net.DialTimeout("tcp", dst, probeWait)
			if err != nil {
				return nil
			}
			defer c.Close()
			ok = echo(c)
		case corev1.ProtocolUDP:
			c, err := net.Dial("udp", dst)
			if err != nil {
				return err
			}
			defer c.Close()
			ok = echo(c)
		}
		return nil
	})
	mustDo(t, err, "probe")
	return ok
}

func apply(t *testing.T, conn nft.Conn, cur *nft.Table, desired nft.Table) {
	t.Helper()
	tx := nft.Plan(*cur, desired)
	mustDo(t, conn.Apply(tx), "apply policy table")
	got, err := conn.Dump()
	mustDo(t, err, "dump")
	if got.String() != desired.Sorted().String() {
		t.Fatalf("kernel holds\n%s\nwant\n%s", got, desired)
	}
	*cur = desired
}

// kernelSnapshot: x/a (http = TCP 8080), x/b, y/c (web = TCP 80) and z/d,
// all on n1, in namespaces x, y (team=blue) and z (team=red).
func kernelSnapshot() policy.Snapshot {
	return policy.Snapshot{
		Node: "n1",
		Namespaces: []*corev1.Namespace{
			namespace("x"), namespace("y", "team", "blue"), namespace("z", "team", "red"),
		},
		Pods: []*corev1.Pod{
			pod("x", "a", "n1", "10.98.0.2", map[string]string{"app": "a"}, cport("http", 8080, "")),
			pod("x", "b", "n1", "10.98.0.3", map[string]string{"app": "b"}),
			pod("y", "c", "n1", "10.98.0.4", map[string]string{"app": "c"}, cport("web", 80, corev1.ProtocolTCP)),
			pod("z", "d", "n1", "10.98.0.5", map[string]string{"app": "d"}),
		},
		Policies: []*networkingv1.NetworkPolicy{
			// Default deny ingress in x; a may be reached from team blue on
			// its named port.
			netpol("x", "default-deny", match(), ingressOnly),
			netpol("x", "a-from-blue", match("app", "a"), ingress(peers(nsPeer(matchP("team", "blue"))), port("TCP", "http"))),
			// c takes TCP 80 from x and z.
			netpol("y", "c-ingress", match("app", "c"), ingress(peers(nsPeer(&metav1.LabelSelector{
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "ns", Operator: metav1.LabelSelectorOpIn, Values: []string{"x", "z"}}},
			})), port("TCP", 80))),
			// d may reach team blue on the port named web and UDP 5353,
			// and the node's addresses on TCP 80.
			netpol("z", "d-egress", match("app", "d"), egressOnly,
				egress(peers(nsPeer(matchP("team", "blue"))), port("TCP", "web"), port("UDP", 5353)),
				egress(peers(blockPeer("10.98.255.0/24")), port("TCP", 80))),
		},
	}
}

func TestKernelPolicy(t *testing.T) {
	node := newTestNode(t)
	snap := kernelSnapshot()
	for _, p := range snap.Pods {
		ip := p.Status.PodIP
		serve(t, node.addPod(t, ip), ip, []int{80, 8080}, []int{5353})
	}
	serve(t, node.ns, nodeAddr, []int{80, 8080}, nil)

	m, problems := policy.Compile(snap)
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
	var cur nft.Table
	apply(t, node.conn, &cur, Render(m))

	type probeCase struct {
		src string // pod IP
		pkt policy.Packet
	}
	var cases []probeCase
	ips := []string{"10.98.0.2", "10.98.0.3", "10.98.0.4", "10.98.0.5"}
	for _, s := range ips {
		for _, d := range append(slices.Clone(ips), nodeAddr) {
			if s == d {
				continue
			}
			for _, pp := range []struct {
				proto corev1.Protocol
				port  uint16
			}{{corev1.ProtocolTCP, 80}, {corev1.ProtocolTCP, 8080}, {corev1.ProtocolUDP, 5353}} {
				if d == nodeAddr && pp.proto == corev1.ProtocolUDP {
					continue
				}
				cases = append(cases, probeCase{s, policy.Packet{Src: addr(s), Dst: addr(d), Protocol: pp.proto, DstPort: pp.port}})
			}
		}
	}
	names := map[string]string{"10.98.0.2": "x/a", "10.98.0.3": "x/b", "10.98.0.4": "y/c", "10.98.0.5": "z/d", nodeAddr: "node"}
	got := map[string]bool{}
	allowed, denied := 0, 0
	for _, c := range cases {
		key := fmt.Sprintf("%s -> %s %s/%d", names[c.pkt.Src.String()], names[c.pkt.Dst.String()], c.pkt.Protocol, c.pkt.DstPort)
		ok := probe(t, node.pods[c.src], c.pkt)
		got[key] = ok
		if ok {
			allowed++
		} else {
			denied++
		}
		v := m.Evaluate(c.pkt)
		ref := policy.Reference(snap, c.pkt)
		if ok != v.Allowed || ok != ref {
			t.Errorf("%s: kernel allowed=%v, model %v (egress %+v ingress %+v), reference %v", key, ok, v.Allowed, v.Egress, v.Ingress, ref)
		}
	}
	t.Logf("%d probes: %d allowed, %d denied", len(cases), allowed, denied)
	// The cases the scenario is about, spelled out so the comparison above
	// cannot pass vacuously.
	for key, want := range map[string]bool{
		"x/b -> x/a TCP/8080":  false, // default deny ingress in x
		"y/c -> x/a TCP/8080":  true,  // from namespace team=blue on the named port
		"y/c -> x/a TCP/80":    false, // not the named port
		"x/a -> y/c TCP/80":    true,  // reply reaches ingress-isolated x/a as established
		"z/d -> y/c TCP/80":    true,  // egress named port set and c's ingress
		"z/d -> y/c UDP/5353":  false, // egress allows, c's ingress does not
		"y/c -> z/d UDP/5353":  true,  // d is not ingress isolated; the reply passes its egress as established
		"z/d -> x/b TCP/80":    false, // egress deny
		"z/d -> node TCP/80":   true,  // input hook: egress to an ipBlock
		"z/d -> node TCP/8080": false,
		"x/b -> node TCP/8080": true,
	} {
		if g, ok := got[key]; !ok || g != want {
			t.Errorf("%s: allowed=%v (probed %v), want %v", key, g, ok, want)
		}
	}

	t.Run("counters", func(t *testing.T) {
		read := func() map[string]DropCount {
			cs, err := node.conn.Counters()
			mustDo(t, err, "counters")
			out := map[string]DropCount{}
			for _, d := range Drops(cs) {
				out[d.Pod+" "+d.Direction] = d
			}
			return out
		}
		before := read()
		if probe(t, node.pods["10.98.0.3"], policy.Packet{Src: addr("10.98.0.3"), Dst: addr("10.98.0.2"), Protocol: corev1.ProtocolTCP, DstPort: 8080}) {
			t.Fatal("x/b reached x/a")
		}
		after := read()
		d := after["x/a ingress"]
		if d.Packets <= before["x/a ingress"].Packets {
			t.Errorf("x/a's ingress drop did not count: before %+v after %+v", before["x/a ingress"], d)
		}
		if want := []string{"x/a-from-blue", "x/default-deny"}; !slices.Equal(d.Policies, want) {
			t.Errorf("drop attributed to %v, want %v", d.Policies, want)
		}
		if e := after["z/d egress"]; e.Packets != before["z/d egress"].Packets {
			t.Errorf("z/d's egress drop counted %d packets of x/b's probe", e.Packets-before["z/d egress"].Packets)
		}
		hits := 0
		for _, h := range after["x/a ingress"].Allowed {
			if h.Policy == "x/a-from-blue" && h.Index == 0 {
				hits += int(h.Packets)
			}
		}
		if hits == 0 {
			t.Error("x/a-from-blue's rule counted none of y/c's allowed probes")
		}
		t.Logf("x/a ingress: %+v", d)
	})

	t.Run("hairpin through a Service", func(t *testing.T) {
		// x/b is ingress isolated (default deny). Through a virtual IP
		// DNATed back to itself it reaches itself, as policy always lets a
		// pod do; masquerade keeps its kernel from calling its own source
		// address martian, as a Service's hairpin does.
		nat := nft.Table{Chains: []nft.Chain{
			{Name: "test-nat-prerouting", Type: nft.TypeNAT, Hook: nft.HookPrerouting, Priority: nft.PriorityDstNAT, Rules: []nft.Rule{
				{Match: []nft.Match{{Keys: []nft.Field{nft.IPDaddr}, Value: "10.96.0.1"}, {Keys: []nft.Field{nft.L4Proto}, Value: "tcp"}}, Action: nft.Action{Kind: nft.ActDNAT, Addr: "10.98.0.3", Port: 80}},
			}},
			{Name: "test-nat-postrouting", Type: nft.TypeNAT, Hook: nft.HookPostrouting, Priority: nft.PrioritySrcNAT, Rules: []nft.Rule{
				{Match: []nft.Match{{Keys: []nft.Field{nft.IPSaddr}, Value: "10.98.0.3"}, {Keys: []nft.Field{nft.IPDaddr}, Value: "10.98.0.3"}}, Action: nft.Action{Kind: nft.ActMasquerade}},
			}},
		}}
		merged, err := nft.Merge(cur, nat)
		mustDo(t, err, "merge")
		apply(t, node.conn, &cur, merged)
		if !probe(t, node.pods["10.98.0.3"], policy.Packet{Src: addr("10.98.0.3"), Dst: addr("10.96.0.1"), Protocol: corev1.ProtocolTCP, DstPort: 80}) {
			t.Error("x/b could not reach itself through the virtual IP")
		}
		if probe(t, node.pods["10.98.0.2"], policy.Packet{Src: addr("10.98.0.2"), Dst: addr("10.96.0.1"), Protocol: corev1.ProtocolTCP, DstPort: 80}) {
			t.Error("x/a reached x/b through the virtual IP: policy was judged before DNAT")
		}
		apply(t, node.conn, &cur, Render(m))
	})

	t.Run("policy change keeps open connection", func(t *testing.T) {
		var c net.Conn
		mustDo(t, node.pods["10.98.0.4"].Do(func(ns.NetNS) error {
			var err error
			c, err = net.DialTimeout("tcp", "10.98.0.2:8080", probeWait)
			return err
		}), "y/c connects to x/a")
		defer c.Close()
		if !echo(c) {
			t.Fatal("no echo before the change")
		}
		// x/a's chain is rewritten (a new policy also lets x/b in on TCP
		// 80) while the connection is open and still allowed.
		snap2 := kernelSnapshot()
		snap2.Policies = append(snap2.Policies, netpol("x", "a-from-b", match("app", "a"), ingress(peers(podPeer(matchP("app", "b"))), port("TCP", 80))))
		m2, _ := policy.Compile(snap2)
		tx := nft.Plan(cur, Render(m2))
		if !slices.Contains(tx.FlushChains, PodChain("x/a", Ingress)) {
			t.Fatalf("the change does not rewrite x/a's chain:\n%s", tx)
		}
		apply(t, node.conn, &cur, Render(m2))
		if !echo(c) {
			t.Error("the open connection broke when its pod's chain was rewritten")
		}
		pkt := policy.Packet{Src: addr("10.98.0.3"), Dst: addr("10.98.0.2"), Protocol: corev1.ProtocolTCP, DstPort: 80}
		if ok := probe(t, node.pods["10.98.0.3"], pkt); !ok || !m2.Evaluate(pkt).Allowed || !policy.Reference(snap2, pkt) {
			t.Errorf("x/b -> x/a TCP/80 after the change: kernel %v, model %v, reference %v, want allowed", ok, m2.Evaluate(pkt).Allowed, policy.Reference(snap2, pkt))
		}
	})

	t.Run("fail closed", func(t *testing.T) {
		// x/a's rules cannot be programmed: its isolated direction drops
		// everything, every other pod keeps its enforcement.
		fb := RenderWith(m, RenderOptions{FailClosed: []string{"x/a"}})
		apply(t, node.conn, &cur, fb)
		for _, c := range []struct {
			src, dst string
			port     uint16
			want     bool
		}{
			{"10.98.0.4", "10.98.0.2", 8080, false}, // allowed before, now failed closed
			{"10.98.0.2", "10.98.0.4", 80, true},    // x/a is not egress isolated; the reply is established
			{"10.98.0.5", "10.98.0.4", 80, true},    // other pods unchanged
			{"10.98.0.3", "10.98.0.4", 8080, false},
		} {
			pkt := policy.Packet{Src: addr(c.src), Dst: addr(c.dst), Protocol: corev1.ProtocolTCP, DstPort: c.port}
			if ok := probe(t, node.pods[c.src], pkt); ok != c.want {
				t.Errorf("%s -> %s TCP/%d: allowed=%v, want %v", names[c.src], names[c.dst], c.port, ok, c.want)
			}
		}
	})
}

// TestKernelTransitions applies every golden case's table after every
// other to the kernel, which must take each plan and hold the render.
func TestKernelTransitions(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	conn := kernel.New(int(newNetNS(t).Fd()), slog.New(slog.DiscardHandler))
	var cur nft.Table
	for _, a := range renderCases {
		for _, b := range renderCases {
			apply(t, conn, &cur, Render(compile(t, a.policies)))
			apply(t, conn, &cur, Render(compile(t, b.policies)))
		}
	}
	mustDo(t, conn.Apply(nft.Plan(cur, nft.Table{})), "delete the table")
	if got, _ := conn.Dump(); !got.Empty() {
		t.Errorf("table left after Plan to empty:\n%s", got)
	}
}

// TestKernelNFTList applies a table with every kind of object Render writes
// and compares what the nft binary lists (what an operator reads) with
// testdata/kernel-table.nft.
func TestKernelNFTList(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("nsenter not installed")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed")
	}
	n := newNetNS(t)
	conn := kernel.New(int(n.Fd()), slog.New(slog.DiscardHandler))
	var pols []*networkingv1.NetworkPolicy
	for _, c := range renderCases {
		if c.name != "invalid-fails-closed" {
			pols = append(pols, c.policies...)
		}
	}
	var cur nft.Table
	apply(t, conn, &cur, Render(compile(t, pols)))
	out, err := exec.Command("nsenter", "--net="+n.Path(), "nft", "list", "table", "inet", "meridian").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, out)
	}
	got := regexp.MustCompile(`# handle \d+`).ReplaceAllString(string(out), "")
	golden(t, "kernel-table.nft", got)
}
