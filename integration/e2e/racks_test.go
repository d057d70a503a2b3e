package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meridian-net/meridian/daemon/encap"
	"github.com/meridian-net/meridian/integration/lab"
)

// racksLab replaces the shared lab with a three-node racks lab (node-1 and
// node-3 in rack 1 behind tor1, node-2 in rack 2 behind tor2) whose routers
// run tor, and removes it when the test ends.
func racksLab(t *testing.T, tor lab.ToRKind, password string) *lab.Lab {
	t.Helper()
	if labBinDir == "" {
		t.Skip("lab not running (needs root and MERIDIAN_BIN_DIR)")
	}
	switch tor {
	case lab.ToRFRR:
		for _, b := range []string{lab.FRRZebra, lab.FRRBgpd} {
			if _, err := os.Stat(b); err != nil {
				t.Skipf("%s not installed", b)
			}
		}
	case lab.ToRBIRD:
		if _, err := os.Stat(lab.BIRDBin); err != nil {
			t.Skipf("%s not installed", lab.BIRDBin)
		}
	}
	dropSharedLab(t)
	// Other test binaries may hold the host for a while: wait for them
	// before the clock of Up starts.
	unlock, err := lab.LockHost(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	stateDir, err := os.MkdirTemp("", "meridian-e2e-racks-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	l, err := lab.Up(ctx, lab.Options{Nodes: 3, BinDir: labBinDir, StateDir: stateDir,
		Topology: lab.TopologyRacks, ToR: tor, ToRPassword: password})
	if err != nil {
		t.Fatalf("racks lab up: %v", err)
	}
	t.Cleanup(func() {
		if err := chartRBACRefusals(l); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			dumpLogs(stateDir)
		}
		if err := lab.Down(context.Background(), stateDir); err != nil {
			t.Errorf("racks lab down: %v", err)
		}
	})
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer wcancel()
	if err := l.WaitNodesReady(wctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("racks lab (%s) up and ready in %s", tor, time.Since(t0).Round(time.Millisecond))
	return l
}

// racksPods runs one pod per node and returns them by node name.
func racksPods(t *testing.T, l *lab.Lab) map[string]*corev1.Pod {
	t.Helper()
	c := client(t, l)
	pods := map[string]*corev1.Pod{}
	for _, n := range l.Nodes() {
		pods[n.Name] = runPod(t, c, "racks-"+n.Name, n.Name)
	}
	return pods
}

func podAddr(p *corev1.Pod) string {
	return netip.AddrPortFrom(netip.MustParseAddr(p.Status.PodIP), tcpPort).String()
}

// reachAll checks TCP from every pod to every other pod.
func reachAll(t *testing.T, pods map[string]*corev1.Pod) {
	t.Helper()
	for from, src := range pods {
		for to, dst := range pods {
			if from == to {
				continue
			}
			eventually(t, 60*time.Second, fmt.Sprintf("pod on %s reaches pod on %s", from, to), func() error {
				body, err := httpGet(src, podAddr(dst))
				if err != nil {
					return err
				}
				if !strings.Contains(body, dst.Name) && !strings.Contains(body, dst.Status.PodIP) {
					return fmt.Errorf("answer from someone else: %q", body)
				}
				return nil
			})
		}
	}
}

// tunnelPackets sums the packet counters of every tunnel link (ipip,
// vxlan, gre and the like) in the node's namespace: what a native path
// must leave untouched.
func tunnelPackets(t *testing.T, node lab.Node) (uint64, []string) {
	t.Helper()
	h := nodeHandle(t, node)
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var sum uint64
	var names []string
	for _, ln := range links {
		switch ln.Type() {
		case "ipip", "vxlan", "gre", "gretap", "sit", "ip6tnl", "geneve":
		default:
			continue
		}
		names = append(names, ln.Attrs().Name)
		if s := ln.Attrs().Statistics; s != nil {
			sum += s.TxPackets + s.RxPackets
		}
	}
	return sum, names
}

// linkTxPackets reads a link's transmitted packets in a namespace.
func linkTxPackets(t *testing.T, nsName, link string) uint64 {
	t.Helper()
	nsh, err := netns.GetFromName(nsName)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ln, err := h.LinkByName(link)
	if err != nil {
		t.Fatalf("%s in %s: %v", link, nsName, err)
	}
	return ln.Attrs().Statistics.TxPackets
}

// checkNative sends traffic between pods in different racks and checks it
// crossed the routers' core link, natively: no tunnel link on any node
// counted a packet, and each node routes the other rack's pod CIDR
// through its own router.
func checkNative(t *testing.T, l *lab.Lab, pods map[string]*corev1.Pod, cidrs map[string]netip.Prefix) {
	t.Helper()
	nodes := l.Nodes()
	for _, n := range nodes {
		for _, other := range nodes {
			if other.Rack == n.Rack {
				continue
			}
			gw := lab.RouterRackIP(n.Rack)
			eventually(t, 90*time.Second, fmt.Sprintf("%s routes %s's pod CIDR through its router", n.Name, other.Name), func() error {
				got := meridianRoutes(t, n)[cidrs[other.Name]]
				if !slices.Equal(got, []netip.Addr{gw}) {
					return fmt.Errorf("%s via %v, want via %s; routes %v", cidrs[other.Name], got, gw, meridianRoutes(t, n))
				}
				return nil
			})
		}
	}
	before := map[string]uint64{}
	for _, n := range nodes {
		before[n.Name], _ = tunnelPackets(t, n)
	}
	core := linkTxPackets(t, lab.RouterNetns("tor1"), lab.RouterCoreLink)
	reachAll(t, pods)
	const rounds = 20
	for i := 0; i < rounds; i++ {
		if _, err := httpGet(pods["node-1"], podAddr(pods["node-2"])); err != nil {
			t.Fatalf("node-1's pod to node-2's pod: %v", err)
		}
	}
	for _, n := range nodes {
		after, names := tunnelPackets(t, n)
		if after != before[n.Name] {
			t.Errorf("%s: tunnel links %v counted %d packets across racks, want none", n.Name, names, after-before[n.Name])
		}
	}
	// Each TCP exchange is several packets from rack 1 to rack 2.
	if sent := linkTxPackets(t, lab.RouterNetns("tor1"), lab.RouterCoreLink) - core; sent < rounds*3 {
		t.Errorf("tor1 sent %d packets to the core during %d cross-rack exchanges: the traffic did not go through the routers", sent, rounds)
	}
}

// routerKernelRoutes are the routes in a router's main table, as
// prefix -> protocol number.
func routerKernelRoutes(t *testing.T, router string) map[netip.Prefix]int {
	t.Helper()
	nsh, err := netns.GetFromName(lab.RouterNetns(router))
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rs, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.Prefix]int{}
	for _, r := range rs {
		if r.Dst == nil {
			continue
		}
		got[netip.MustParsePrefix(r.Dst.String())] = int(r.Protocol)
	}
	return got
}

// Protocol numbers of /etc/iproute2/rt_protos.
const (
	rtprotBIRD = 12
	rtprotBGP  = 186
)

// checkRoutersForward: each router has every pod CIDR in its kernel, put
// there by its daemon, so it forwards pod traffic between racks.
func checkRoutersForward(t *testing.T, l *lab.Lab, cidrs map[string]netip.Prefix, proto int) {
	t.Helper()
	for _, r := range l.Routers() {
		for node, cidr := range cidrs {
			eventually(t, 60*time.Second, fmt.Sprintf("%s's kernel routes %s (%s)", r.Name, cidr, node), func() error {
				got, ok := routerKernelRoutes(t, r.Name)[cidr]
				if !ok || got != proto {
					return fmt.Errorf("route %v (protocol %d, want %d)", ok, got, proto)
				}
				return nil
			})
		}
	}
}

// frrNeighbors is `show bgp neighbors json` of an FRR router.
func frrNeighbors(ctx context.Context, l *lab.Lab, router string) (map[string]frrPeer, error) {
	out, err := l.ExecRouter(ctx, router, "vtysh", "-c", "show bgp neighbors json")
	if err != nil {
		return nil, err
	}
	var peers map[string]frrPeer
	if err := json.Unmarshal(out, &peers); err != nil {
		return nil, fmt.Errorf("decode %s: %w", out, err)
	}
	return peers, nil
}

// frrEstablished waits until the router's sessions with addrs are up.
func frrEstablished(t *testing.T, l *lab.Lab, router string, addrs ...netip.Addr) map[string]frrPeer {
	t.Helper()
	var peers map[string]frrPeer
	eventually(t, 90*time.Second, router+" sessions established", func() error {
		var err error
		if peers, err = frrNeighbors(context.Background(), l, router); err != nil {
			return err
		}
		for _, a := range addrs {
			if peers[a.String()].State != "Established" {
				return fmt.Errorf("%s: %+v", a, peers)
			}
		}
		return nil
	})
	return peers
}

func rackNodes(l *lab.Lab, rack int) []netip.Addr {
	var out []netip.Addr
	for _, n := range l.Nodes() {
		if n.Rack == rack {
			out = append(out, n.IP)
		}
	}
	return out
}

// pingLoss runs count pings 10 ms apart from a pod and returns how many
// were lost.
func pingLoss(ctx context.Context, l *lab.Lab, from *corev1.Pod, to string, count int) (int, string, error) {
	out, err := l.ExecPod(ctx, "default", from.Name, "ping", "-q", "-n", "-i", "0.01", "-W", "1", "-c", strconv.Itoa(count), to)
	m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(string(out))
	if m == nil {
		return 0, string(out), fmt.Errorf("no ping summary: %w", err)
	}
	sent, _ := strconv.Atoi(m[1])
	got, _ := strconv.Atoi(m[2])
	return sent - got, string(out), nil
}

// FRR as both ToRs, with MD5 on every node session: pods reach each other
// across racks through the routers without a tunnel, FRR shows every pod
// CIDR, a wrong key keeps a session down, what a ToR must not announce is
// refused, and restarting meridiand loses no packet.
func TestRacksFRR(t *testing.T) {
	const key = "e2e-racks-md5"
	l := racksLab(t, lab.ToRFRR, key)
	c := client(t, l)
	nodes := l.Nodes()
	cidrs := cidrsOf(t, c, nodes)
	ctx := context.Background()

	frrEstablished(t, l, "tor1", append(rackNodes(l, 1), lab.RouterCoreIP(2))...)
	frrEstablished(t, l, "tor2", append(rackNodes(l, 2), lab.RouterCoreIP(1))...)
	pods := racksPods(t, l)

	t.Run("show ip bgp lists every pod CIDR", func(t *testing.T) {
		for _, r := range []string{"tor1", "tor2"} {
			eventually(t, 60*time.Second, r+" show ip bgp", func() error {
				// What `meridian-lab exec tor1 -- vtysh -c 'show ip bgp'` runs.
				out, err := l.ExecRouter(ctx, r, "vtysh", "-c", "show ip bgp")
				if err != nil {
					return err
				}
				for node, cidr := range cidrs {
					if !strings.Contains(string(out), cidr.String()) {
						return fmt.Errorf("no %s (%s):\n%s", cidr, node, out)
					}
				}
				return nil
			})
		}
		checkRoutersForward(t, l, cidrs, rtprotBGP)
	})

	t.Run("pods across racks natively", func(t *testing.T) { checkNative(t, l, pods, cidrs) })

	t.Run("hijacks refused", func(t *testing.T) { frrHijacks(t, l, pods, cidrs) })

	t.Run("meridiand restart loses no packet", func(t *testing.T) {
		n1 := nodes[0]
		before := frrEstablished(t, l, "tor1", n1.IP)[n1.IP.String()].Established
		type result struct {
			lost int
			out  string
			err  error
		}
		done := make(chan result, 1)
		go func() {
			// 12 s of pings from rack 2 to node-1's pod.
			lost, out, err := pingLoss(ctx, l, pods["node-2"], pods["node-1"].Status.PodIP, 1200)
			done <- result{lost, out, err}
		}()
		time.Sleep(2 * time.Second)
		if err := l.StopDaemon(n1.Name, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if err := l.StartDaemon(n1.Name); err != nil {
			t.Fatal(err)
		}
		r := <-done
		if r.err != nil {
			t.Fatalf("ping: %v\n%s", r.err, r.out)
		}
		if r.lost != 0 {
			t.Errorf("%d packets lost while meridiand restarted on %s:\n%s", r.lost, n1.Name, r.out)
		}
		eventually(t, 60*time.Second, "tor1's session with node-1 back", func() error {
			p, err := frrNeighbors(ctx, l, "tor1")
			if err != nil {
				return err
			}
			if got := p[n1.IP.String()]; got.State != "Established" || got.Established <= before {
				return fmt.Errorf("%+v (established %d times before the restart)", got, before)
			}
			return nil
		})
		reachAll(t, pods)
	})

	// Last: it takes node-1's session down and back.
	t.Run("md5 wrong key keeps the session down", func(t *testing.T) {
		n1 := nodes[0]
		sec, err := c.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, lab.ToRPasswordSecret, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		setKey := func(k string) {
			sec.Data = map[string][]byte{"password": []byte(k)}
			if sec, err = c.CoreV1().Secrets(metav1.NamespaceSystem).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		md5Fail := func() uint64 { return tcpExtCounter(t, lab.RouterNetns("tor1"), "TCPMD5Failure") }
		fails := md5Fail()
		setKey("not-" + key)
		t.Cleanup(func() {
			setKey(key)
			frrEstablished(t, l, "tor1", rackNodes(l, 1)...)
		})
		eventually(t, 60*time.Second, "node-1's session with tor1 down", func() error {
			p, err := frrNeighbors(ctx, l, "tor1")
			if err != nil {
				return err
			}
			if st := p[n1.IP.String()].State; st == "Established" {
				return fmt.Errorf("still %s", st)
			}
			return nil
		})
		// Longer than a hold time and several connect retries: it stays down.
		time.Sleep(12 * time.Second)
		p, err := frrNeighbors(ctx, l, "tor1")
		if err != nil {
			t.Fatal(err)
		}
		if st := p[n1.IP.String()].State; st == "Established" {
			t.Errorf("session with a wrong MD5 key came up: %+v", p[n1.IP.String()])
		}
		// The reason: the router's kernel drops the nodes' SYNs for a bad
		// signature (RFC 2385 section 3).
		eventually(t, 60*time.Second, "tor1 counts TCP MD5 failures", func() error {
			if got := md5Fail(); got <= fails {
				return fmt.Errorf("TCPMD5Failure %d before, %d now", fails, got)
			}
			return nil
		})
		t.Logf("node-1's session with tor1: %+v; tor1 TCPMD5Failure %d -> %d", p[n1.IP.String()], fails, md5Fail())
	})
}

// tcpExtCounter reads a TcpExt counter (/proc/net/netstat) of a namespace.
func tcpExtCounter(t *testing.T, nsName, name string) uint64 {
	t.Helper()
	var v uint64
	err := inNetns("/var/run/netns/"+nsName, func() error {
		// thread-self: /proc/self/net shows the main thread's namespace.
		b, err := os.ReadFile("/proc/thread-self/net/netstat")
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(keys) == 0 || keys[0] != "TcpExt:" {
				continue
			}
			for j, k := range keys {
				if k == name && j < len(vals) {
					v, err = strconv.ParseUint(vals[j], 10, 64)
					return err
				}
			}
		}
		return fmt.Errorf("no TcpExt %s", name)
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// frrHijacks makes tor1 announce to its rack what a ToR must never be
// believed about: a default route, node-1's own pod CIDR, a /25 carved out
// of node-2's, and a prefix outside the cluster. Every node refuses each
// with its reason, and pod traffic keeps going where it belongs.
func frrHijacks(t *testing.T, l *lab.Lab, pods map[string]*corev1.Pod, cidrs map[string]netip.Prefix) {
	ctx := context.Background()
	nodes := l.Nodes()
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	own := cidrs[n1.Name]
	carved := netip.PrefixFrom(cidrs[n2.Name].Addr(), cidrs[n2.Name].Bits()+1)
	outside := netip.MustParsePrefix("192.0.2.0/24")
	dflt := netip.MustParsePrefix("0.0.0.0/0")
	hijacks := []netip.Prefix{dflt, own, carved, outside}

	// A `network` statement for node-1's CIDR makes tor1's own path the
	// best and takes the learned one out of tor1's FIB: a static route
	// keeps tor1 itself forwarding to node-1, so what the test sees is
	// only what the nodes do with the announcement.
	if out, err := l.ExecRouter(ctx, "tor1", "ip", "route", "add", own.String(), "via", n1.IP.String(), "metric", "500"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	vty := func(lines ...string) {
		t.Helper()
		argv := []string{"vtysh", "-c", "configure terminal"}
		for _, ln := range lines {
			argv = append(argv, "-c", ln)
		}
		if out, err := l.ExecRouter(ctx, "tor1", argv...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	var permit, network, noNetwork []string
	for i, p := range hijacks {
		permit = append(permit, fmt.Sprintf("ip prefix-list HIJACK seq %d permit %s", 5*(i+1), p))
		network = append(network, "network "+p.String())
		noNetwork = append(noNetwork, "no network "+p.String())
	}
	vty(permit...)
	vty("route-map NODES-OUT permit 5", "match ip address prefix-list HIJACK")
	vty(append([]string{"router bgp " + strconv.Itoa(int(lab.RouterASN(1))), "no bgp network import-check", "address-family ipv4 unicast"}, network...)...)
	t.Cleanup(func() {
		vty(append([]string{"router bgp " + strconv.Itoa(int(lab.RouterASN(1))), "address-family ipv4 unicast"}, noNetwork...)...)
		vty("no route-map NODES-OUT permit 5", "no ip prefix-list HIJACK")
		_, _ = l.ExecRouter(ctx, "tor1", "ip", "route", "del", own.String(), "via", n1.IP.String(), "metric", "500")
	})

	checks := []struct {
		node   lab.Node
		prefix netip.Prefix
		reason string
	}{
		{n1, dflt, "defaultRoute"},
		{n1, own, "ownPodCIDR"},
		{n1, carved, "podCIDRMoreSpecific"},
		{n1, outside, "outsideAllowed"},
		{n3, dflt, "defaultRoute"},
		{n3, carved, "podCIDRMoreSpecific"},
		{n3, outside, "outsideAllowed"},
	}
	for _, ck := range checks {
		eventually(t, 60*time.Second, fmt.Sprintf("%s refuses %s from tor1 as %s", ck.node.Name, ck.prefix, ck.reason), func() error {
			if !logHas(l, ck.node.Name, "path rejected by import policy", `"prefix":"`+ck.prefix.String()+`"`,
				`"peer":"`+lab.RouterRackIP(1).String()+`"`, `"reason":"`+ck.reason+`"`) {
				return errors.New("not in the log")
			}
			return nil
		})
	}
	for _, n := range []lab.Node{n1, n3} {
		got := meridianRoutes(t, n)
		for _, p := range []netip.Prefix{dflt, carved, outside} {
			if hops, ok := got[p]; ok {
				t.Errorf("%s installed refused %s via %v", n.Name, p, hops)
			}
		}
		if hops := got[own]; n.Name == n1.Name && len(hops) != 0 {
			t.Errorf("%s routes its own pod CIDR %s via %v", n.Name, own, hops)
		}
	}
	// Traffic still reaches the right pods: node-2's from rack 1 (the /25
	// did not divert it) and node-1's from everywhere.
	reachAll(t, pods)
}

// BIRD as both ToRs: the same sessions, pod CIDRs installed in the
// routers' kernels through BIRD's kernel protocol, pods across racks
// reach each other natively.
func TestRacksBIRD(t *testing.T) {
	l := racksLab(t, lab.ToRBIRD, "")
	c := client(t, l)
	nodes := l.Nodes()
	cidrs := cidrsOf(t, c, nodes)
	ctx := context.Background()
	for _, r := range []string{"tor1", "tor2"} {
		eventually(t, 90*time.Second, r+" sessions established", func() error {
			out, err := l.ExecRouter(ctx, r, "birdc", "show", "protocols")
			if err != nil {
				return err
			}
			// The other router, and one dynamic session per node.
			rack := int(r[len(r)-1] - '0')
			want := 1 + len(rackNodes(l, rack))
			if got := strings.Count(string(out), "Established"); got < want {
				return fmt.Errorf("%d of %d sessions established:\n%s", got, want, out)
			}
			return nil
		})
	}
	pods := racksPods(t, l)
	t.Run("birdc shows every pod CIDR", func(t *testing.T) {
		for _, r := range []string{"tor1", "tor2"} {
			eventually(t, 60*time.Second, r+" routes", func() error {
				out, err := l.ExecRouter(ctx, r, "birdc", "show", "route")
				if err != nil {
					return err
				}
				for node, cidr := range cidrs {
					if !strings.Contains(string(out), cidr.String()) {
						return fmt.Errorf("no %s (%s):\n%s", cidr, node, out)
					}
				}
				return nil
			})
		}
		checkRoutersForward(t, l, cidrs, rtprotBIRD)
	})
	t.Run("pods across racks natively", func(t *testing.T) { checkNative(t, l, pods, cidrs) })
}

// Routers that know no pod CIDR (static routes for the node subnets only):
// the node mesh runs across the racks, and with VXLAN as the encapsulation
// (CrossSubnet, the default mode) pods in different racks reach each other
// through the tunnel, while rack-mates stay native.
func TestRacksNoneVXLAN(t *testing.T) {
	l := racksLab(t, lab.ToRNone, "")
	c := client(t, l)
	nodes := l.Nodes()
	cidrs := cidrsOf(t, c, nodes)
	// The lab installs a --tor none lab with encapsulationType=VXLAN in
	// the chart's values, so meridiand runs with --encapsulation-type=VXLAN.
	for _, r := range l.Routers() {
		for _, cidr := range cidrs {
			if _, ok := routerKernelRoutes(t, r.Name)[cidr]; ok {
				t.Fatalf("%s routes pod CIDR %s: with --tor none it must know none", r.Name, cidr)
			}
		}
	}
	pods := racksPods(t, l)
	n1, n2 := nodes[0], nodes[1]
	eventually(t, 90*time.Second, n1.Name+" has a VXLAN device", func() error {
		if _, names := tunnelPackets(t, n1); !slices.Contains(names, encap.VXLANDevice) {
			return fmt.Errorf("tunnel links %v", names)
		}
		return nil
	})
	reachAll(t, pods)
	before, _ := tunnelPackets(t, n1)
	const rounds = 20
	for i := 0; i < rounds; i++ {
		if _, err := httpGet(pods[n1.Name], podAddr(pods[n2.Name])); err != nil {
			t.Fatalf("%s's pod to %s's pod: %v", n1.Name, n2.Name, err)
		}
	}
	after, names := tunnelPackets(t, n1)
	if after-before < rounds*3 {
		t.Errorf("%s: tunnel links %v counted %d packets over %d cross-rack exchanges, want at least %d", n1.Name, names, after-before, rounds, rounds*3)
	}
	// The rack-mate is on the node's own subnet: routed natively.
	n3 := nodes[2]
	if got := meridianRoutes(t, n1)[cidrs[n3.Name]]; !slices.Equal(got, []netip.Addr{n3.IP}) {
		t.Errorf("%s routes rack-mate %s's %s via %v, want natively via %s", n1.Name, n3.Name, cidrs[n3.Name], got, n3.IP)
	}
}
