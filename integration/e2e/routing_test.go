package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meridian-net/meridian/cni-plugin/ipam"
	"github.com/meridian-net/meridian/daemon/cluster"
	"github.com/meridian-net/meridian/daemon/routes"
	"github.com/meridian-net/meridian/integration/lab"
)

func cidrsOf(t *testing.T, c kubernetes.Interface, nodes []lab.Node) map[string]netip.Prefix {
	m := map[string]netip.Prefix{}
	for _, n := range nodes {
		m[n.Name] = podCIDR(t, c, n.Name)
	}
	return m
}

func waitMesh(t *testing.T, c kubernetes.Interface, nodes []lab.Node) {
	t.Helper()
	cidrs := cidrsOf(t, c, nodes)
	for _, n := range nodes {
		eventually(t, 90*time.Second, "BGP routes on "+n.Name, func() error { return checkMeshRoutes(t, n, cidrs, nodes) })
	}
}

// Pods on every node reach pods on every other node over TCP and UDP,
// through routes that meridiand learned over BGP.
func TestPodsReachEachOtherAcrossNodes(t *testing.T) {
	l := needLab(t)
	c := client(t, l)
	nodes := l.Nodes()
	if len(nodes) < 3 {
		t.Fatalf("lab has %d nodes, want 3", len(nodes))
	}
	waitMesh(t, c, nodes)
	for _, n := range nodes {
		eventually(t, 30*time.Second, n.Name+" NetworkUnavailable=False", func() error {
			node, err := c.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !cluster.NetworkAvailable(node) {
				return fmt.Errorf("conditions %v", node.Status.Conditions)
			}
			return nil
		})
	}

	var pods []*podOnNode
	for i, n := range nodes {
		p := runPod(t, c, fmt.Sprintf("reach-%d", i+1), n.Name)
		pods = append(pods, &podOnNode{pod: p, node: n})
	}
	for _, p := range pods {
		ip := netip.MustParseAddr(p.pod.Status.PodIP)
		cidr := podCIDR(t, c, p.node.Name)
		if !cidr.Contains(ip) {
			t.Errorf("pod %s IP %s outside its node's pod CIDR %s", p.pod.Name, ip, cidr)
		}
		if err := hostRoute(t, p.node, ip); err != nil {
			t.Error(err)
		}
	}
	for _, src := range pods {
		for _, dst := range pods {
			if src == dst {
				continue
			}
			addr := net.JoinHostPort(dst.pod.Status.PodIP, fmt.Sprint(tcpPort))
			body, err := httpGet(src.pod, addr)
			if err != nil {
				t.Errorf("TCP %s(%s) -> %s(%s): %v", src.pod.Name, src.node.Name, dst.pod.Name, dst.node.Name, err)
			} else if !strings.Contains(body, dst.pod.Name) {
				t.Errorf("TCP %s -> %s answered %q, want a page naming %s", src.pod.Name, addr, body, dst.pod.Name)
			}
			msg := fmt.Sprintf("hello %s from %s", dst.pod.Name, src.pod.Name)
			echo, err := udpEcho(src.pod, net.JoinHostPort(dst.pod.Status.PodIP, fmt.Sprint(udpPort)), msg)
			if err != nil {
				t.Errorf("UDP %s -> %s: %v", src.pod.Name, dst.pod.Name, err)
			} else if echo != msg {
				t.Errorf("UDP %s -> %s echoed %q, want %q", src.pod.Name, dst.pod.Name, echo, msg)
			}
		}
	}
}

type podOnNode struct {
	pod  *corev1.Pod
	node lab.Node
}

// hostRoute checks the CNI's /32 route to a pod on its node.
func hostRoute(t *testing.T, node lab.Node, ip netip.Addr) error {
	h := nodeHandle(t, node)
	defer h.Close()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}, Table: 254}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list routes to %s on %s: %w", ip, node.Name, err)
	}
	if len(rs) != 1 {
		return fmt.Errorf("%s: %d routes to pod %s/32, want 1: %v", node.Name, len(rs), ip, rs)
	}
	link, err := h.LinkByIndex(rs[0].LinkIndex)
	if err != nil {
		return fmt.Errorf("%s: link of route to %s: %w", node.Name, ip, err)
	}
	if !strings.HasPrefix(link.Attrs().Name, "mer") {
		return fmt.Errorf("%s: route to pod %s via %s, want a Meridian veth (mer*)", node.Name, ip, link.Attrs().Name)
	}
	return nil
}

// Deleting a pod frees its address and its host route on the node.
func TestPodDeleteFreesIPAndRoute(t *testing.T) {
	l := needLab(t)
	c := client(t, l)
	node := l.Nodes()[0]
	p := runPod(t, c, "short-lived", node.Name)
	ip := netip.MustParseAddr(p.Status.PodIP)
	if err := hostRoute(t, node, ip); err != nil {
		t.Fatal(err)
	}
	deletePod(t, c, p.Name)
	eventually(t, 30*time.Second, "host route to deleted pod gone", func() error {
		if err := hostRoute(t, node, ip); err == nil {
			return fmt.Errorf("route to %s still on %s", ip, node.Name)
		}
		return nil
	})
	eventually(t, 30*time.Second, "pod netns gone", func() error {
		if h, err := netns.GetFromPath(podNetns(p)); err == nil {
			h.Close()
			return fmt.Errorf("netns %s still there", podNetns(p))
		}
		return nil
	})
	if used, err := ipAllocated(node.Name, ip); err != nil {
		t.Fatalf("read IPAM state: %v", err)
	} else if used {
		t.Fatalf("IP %s still allocated on %s after its pod was deleted", ip, node.Name)
	}
}

// routeWatch records every deletion of a Meridian route in a node's netns.
type routeWatch struct {
	mu      sync.Mutex
	deleted []string
	// broke is set when the subscription failed before stop: a watch that
	// died early would see no deletion and prove nothing.
	broke   error
	stopped bool
	done    chan struct{}
}

func watchRouteDeletes(t *testing.T, node lab.Node) *routeWatch {
	t.Helper()
	nsh, err := netns.GetFromName(node.Netns)
	if err != nil {
		t.Fatal(err)
	}
	w := &routeWatch{done: make(chan struct{})}
	ch := make(chan netlink.RouteUpdate, 256)
	if err := netlink.RouteSubscribeWithOptions(ch, w.done, netlink.RouteSubscribeOptions{Namespace: &nsh, ErrorCallback: func(err error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.stopped && w.broke == nil {
			w.broke = err
		}
	}}); err != nil {
		t.Fatalf("subscribe to routes in %s: %v", node.Name, err)
	}
	go func() {
		defer nsh.Close()
		for u := range ch {
			if u.Type == unix.RTM_DELROUTE && int(u.Route.Protocol) == routes.Protocol {
				w.mu.Lock()
				w.deleted = append(w.deleted, fmt.Sprintf("%s: %v", node.Name, u.Route))
				w.mu.Unlock()
			}
		}
	}()
	return w
}

func (w *routeWatch) stop() ([]string, error) {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	close(w.done)
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.deleted...), w.broke
}

// kill -9 (and SIGTERM) of meridiand on one node, then a restart, while a TCP stream runs
// between pods on two nodes: the stream keeps flowing and no node ever loses
// a Meridian route (graceful restart on the peers, adoption on the restarted
// node).
func TestDaemonKillAndRestartKeepsTraffic(t *testing.T) {
	// SIGKILL is a crash; SIGTERM is what a DaemonSet rollout sends, and
	// meridiand is meant to leave its peers forwarding then too.
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) { restartKeepsTraffic(t, sig) })
	}
}

func restartKeepsTraffic(t *testing.T, sig syscall.Signal) {
	l := needLab(t)
	c := client(t, l)
	nodes := l.Nodes()
	waitMesh(t, c, nodes)
	a := runPod(t, c, "stream-a", nodes[0].Name)
	b := runPod(t, c, "stream-b", nodes[1].Name)

	var watches []*routeWatch
	for _, n := range nodes {
		watches = append(watches, watchRouteDeletes(t, n))
	}

	var conn net.Conn
	addr := net.JoinHostPort(b.Status.PodIP, fmt.Sprint(tcpPort))
	if err := inNetns(podNetns(a), func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, 3*time.Second)
		return err
	}); err != nil {
		t.Fatalf("open stream %s -> %s: %v", a.Name, addr, err)
	}
	defer conn.Close()

	// One line every 20 ms, each echoed back; count echoes per phase.
	var mu sync.Mutex
	phase := "before"
	echoes := map[string]int{}
	streamErr := make(chan error, 2)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			_ = conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := fmt.Fprintf(conn, "line %d\n", i); err != nil {
				streamErr <- fmt.Errorf("write: %w", err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		r := bufio.NewReader(conn)
		for {
			_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			line, err := readLine(r)
			if err != nil {
				select {
				case <-stop:
				default:
					streamErr <- fmt.Errorf("read: %w", err)
				}
				return
			}
			if strings.HasPrefix(line, "line ") {
				mu.Lock()
				echoes[phase]++
				mu.Unlock()
			}
		}
	}()
	setPhase := func(p string) { mu.Lock(); phase = p; mu.Unlock() }

	time.Sleep(2 * time.Second)
	before := daemonProcess(t, l, nodes[0].Name)
	setPhase("daemon down")
	if err := l.StopDaemon(nodes[0].Name, sig); err != nil {
		t.Fatalf("stop meridiand on %s with %s: %v", nodes[0].Name, sig, err)
	}
	time.Sleep(5 * time.Second)
	setPhase("restarting")
	if err := l.StartDaemon(nodes[0].Name); err != nil {
		t.Fatalf("start meridiand on %s: %v", nodes[0].Name, err)
	}
	// Long enough for the sessions to come back and end-of-RIB to pass, the
	// point at which a wrong implementation prunes routes.
	time.Sleep(15 * time.Second)
	setPhase("after")
	time.Sleep(2 * time.Second)
	after := daemonProcess(t, l, nodes[0].Name)
	if !after.Alive || after.PID == before.PID {
		t.Errorf("meridiand on %s was not restarted: before %+v, after %+v", nodes[0].Name, before, after)
	}
	if logText, err := os.ReadFile(after.Log); err != nil {
		t.Errorf("read meridiand log: %v", err)
	} else if !strings.Contains(string(logText), "adopting routes from a previous run") {
		t.Errorf("restarted meridiand did not adopt the kernel routes; log:\n%s", logText)
	}

	close(stop)
	_ = conn.SetDeadline(time.Now())
	wg.Wait()
	select {
	case err := <-streamErr:
		t.Errorf("TCP stream %s -> %s broke: %v", a.Name, b.Name, err)
	default:
	}
	for _, w := range watches {
		d, err := w.stop()
		if err != nil {
			t.Errorf("route watch failed during the test, so deletions may have gone unseen: %v", err)
		}
		if len(d) > 0 {
			t.Errorf("Meridian routes were removed during the restart: %v", d)
		}
	}
	mu.Lock()
	t.Logf("echoes per phase: %v", echoes)
	for _, p := range []string{"before", "daemon down", "restarting", "after"} {
		if echoes[p] == 0 {
			t.Errorf("no echo came back in phase %q: the stream stalled", p)
		}
	}
	mu.Unlock()
	waitMesh(t, c, nodes)
}

// A node removed from the cluster loses its route on every other node; a
// node added gets one everywhere, and routes to everyone else.
func TestNodeRemovedAndAdded(t *testing.T) {
	l := needLab(t)
	c := client(t, l)
	nodes := l.Nodes()
	waitMesh(t, c, nodes)
	gone := nodes[len(nodes)-1]
	goneCIDR := podCIDR(t, c, gone.Name)
	if err := l.RemoveNode(context.Background(), gone.Name); err != nil {
		t.Fatalf("remove node %s: %v", gone.Name, err)
	}
	rest := l.Nodes()
	if len(rest) != len(nodes)-1 {
		t.Fatalf("after removing %s the lab has %d nodes", gone.Name, len(rest))
	}
	for _, n := range rest {
		eventually(t, 60*time.Second, gone.Name+"'s route gone from "+n.Name, func() error {
			for _, r := range nodeRoutes(t, n) {
				if r.Dst != nil && r.Dst.String() == goneCIDR.String() {
					return fmt.Errorf("still have %v", r)
				}
			}
			return nil
		})
	}
	waitMesh(t, c, rest)

	added, err := l.AddNode(context.Background())
	if err != nil {
		t.Fatalf("add node: %v", err)
	}
	t.Logf("added node %s (%s)", added.Name, added.IP)
	all := l.Nodes()
	waitMesh(t, c, all)
	// And traffic flows to it.
	p := runPod(t, c, "on-new-node", added.Name)
	q := runPod(t, c, "on-old-node", rest[0].Name)
	body, err := httpGet(q, net.JoinHostPort(p.Status.PodIP, fmt.Sprint(tcpPort)))
	if err != nil || !strings.Contains(body, p.Name) {
		t.Fatalf("pod on %s -> pod on new node %s: %q, %v", rest[0].Name, added.Name, body, err)
	}
}

// ipAllocated reads the node's IPAM store as meridian-cni left it.
func ipAllocated(node string, ip netip.Addr) (bool, error) {
	allocs, err := ipam.NewStore(theLab.NodeStateDir(node)).List()
	if err != nil {
		return false, err
	}
	for _, a := range allocs {
		if a.Addr == ip {
			return true, nil
		}
	}
	return false, nil
}

func daemonProcess(t *testing.T, l *lab.Lab, node string) lab.Process {
	t.Helper()
	procs, err := l.Processes()
	if err != nil {
		t.Fatalf("lab processes: %v", err)
	}
	for _, p := range procs {
		if p.Node == node && strings.Contains(p.Name, "meridiand") {
			return p
		}
	}
	t.Fatalf("no meridiand process for %s in %+v", node, procs)
	return lab.Process{}
}
