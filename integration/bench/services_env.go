package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/meridian-net/meridian/integration/lab"
	"github.com/meridian-net/meridian/integration/namedns"
)

// benchNet is one data path under test: the proxy's namespace, a client
// namespace routed through it, and an endpoint namespace behind it that
// answers on the real endpoints of Service 0, like a pod talking to a
// ClusterIP whose pods are on the same node.
//
//	client (10.244.252.2) --eth0/to-cli-- proxy --to-ep/eth0-- endpoints (10.244.250.1-10)
type benchNet struct {
	proxy, client, ep string
}

var (
	proxyClientSide = netip.MustParsePrefix("10.244.252.1/24")
	clientAddr      = netip.MustParsePrefix("10.244.252.2/24")
	proxyEPSide     = netip.MustParsePrefix("10.244.250.254/24")
)

func newBenchNet(short string) *benchNet {
	base := lab.NetnsPrefix + "bench-" + short
	return &benchNet{proxy: base, client: base + "-cli", ep: base + "-ep"}
}

func (b *benchNet) names() []string { return []string{b.proxy, b.client, b.ep} }

// setup creates the three namespaces afresh (leftovers of an interrupted
// run are removed first; `meridian-lab down` removes them too, being
// mlab- namespaces).
func (b *benchNet) setup() error {
	b.teardown()
	for _, n := range b.names() {
		if err := namedns.Create(n); err != nil {
			return err
		}
	}
	handles := map[string]*netlink.Handle{}
	nsFds := map[string]netns.NsHandle{}
	defer func() {
		for _, h := range handles {
			h.Close()
		}
		for _, f := range nsFds {
			f.Close()
		}
	}()
	for _, n := range b.names() {
		f, err := netns.GetFromName(n)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", n, err)
		}
		nsFds[n] = f
		h, err := netlink.NewHandleAt(f)
		if err != nil {
			return fmt.Errorf("netlink handle in %s: %w", n, err)
		}
		handles[n] = h
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("%s: find lo: %w", n, err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("%s: set lo up: %w", n, err)
		}
	}
	if err := vethPair(handles[b.proxy], "to-cli", nsFds[b.client], handles[b.client], proxyClientSide, []netip.Prefix{clientAddr}); err != nil {
		return err
	}
	var eps []netip.Prefix
	for j := range EndpointsPerService {
		eps = append(eps, netip.PrefixFrom(realEndpoint(j), realEndpointNet.Bits()))
	}
	if err := vethPair(handles[b.proxy], "to-ep", nsFds[b.ep], handles[b.ep], proxyEPSide, eps); err != nil {
		return err
	}
	for n, gw := range map[string]netip.Addr{b.client: proxyClientSide.Addr(), b.ep: proxyEPSide.Addr()} {
		if err := handles[n].RouteAdd(&netlink.Route{Gw: net.IP(gw.AsSlice())}); err != nil {
			return fmt.Errorf("%s: default route: %w", n, err)
		}
	}
	return inNetns(b.proxy, func() error {
		// /proc/sys/net belongs to the namespace of whoever opens it.
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return fmt.Errorf("%s: enable forwarding: %w", b.proxy, err)
		}
		return nil
	})
}

// vethPair links the proxy namespace (name, proxyAddr) with eth0 of peer
// (peerAddrs).
func vethPair(proxyH *netlink.Handle, name string, peerNS netns.NsHandle, peerH *netlink.Handle, proxyAddr netip.Prefix, peerAddrs []netip.Prefix) error {
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(peerNS))}
	if err := proxyH.LinkAdd(v); err != nil {
		return fmt.Errorf("create veth %s: %w", name, err)
	}
	up := func(h *netlink.Handle, link string, addrs []netip.Prefix) error {
		l, err := h.LinkByName(link)
		if err != nil {
			return fmt.Errorf("find %s: %w", link, err)
		}
		for _, a := range addrs {
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), 32)}}); err != nil {
				return fmt.Errorf("address %s on %s: %w", a, link, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", link, err)
		}
		return nil
	}
	if err := up(proxyH, name, []netip.Prefix{proxyAddr}); err != nil {
		return err
	}
	return up(peerH, "eth0", peerAddrs)
}

func (b *benchNet) teardown() {
	for _, n := range b.names() {
		_ = namedns.Delete(n)
	}
}

// inNetns runs f on a thread switched into the named namespace.
func inNetns(name string, f func() error) error {
	target, err := ns.GetNS(namedns.Path(name))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer target.Close()
	return target.Do(func(ns.NetNS) error { return f() })
}

// listenIn opens a TCP listener inside a namespace; the socket stays there
// whichever thread accepts on it.
func listenIn(name, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNetns(name, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// attachToLab gives the proxy namespace a port on the lab's bridge with
// addr, as a lab node has: the proxies reach the API server directly, and
// the bench Node's InternalIP is an address they own.
func (b *benchNet) attachToLab(port string, addr netip.Addr) error {
	fab, err := netns.GetFromName(lab.FabricNetns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", lab.FabricNetns, err)
	}
	defer fab.Close()
	fabH, err := netlink.NewHandleAt(fab)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", lab.FabricNetns, err)
	}
	defer fabH.Close()
	pns, err := netns.GetFromName(b.proxy)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", b.proxy, err)
	}
	defer pns.Close()
	ph, err := netlink.NewHandleAt(pns)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", b.proxy, err)
	}
	defer ph.Close()
	// Created from the fabric side: the port gets its name there and eth0
	// its name in the proxy namespace.
	if err := fabH.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: lab.NodeLink, PeerNamespace: netlink.NsFd(int(pns))}); err != nil {
		return fmt.Errorf("create lab port %s: %w", port, err)
	}
	br, err := fabH.LinkByName(lab.BridgeName)
	if err != nil {
		return fmt.Errorf("find %s: %w", lab.BridgeName, err)
	}
	pl, err := fabH.LinkByName(port)
	if err != nil {
		return fmt.Errorf("find %s: %w", port, err)
	}
	if err := fabH.LinkSetMaster(pl, br); err != nil {
		return fmt.Errorf("%s on %s: %w", port, lab.BridgeName, err)
	}
	if err := fabH.LinkSetUp(pl); err != nil {
		return fmt.Errorf("set %s up: %w", port, err)
	}
	el, err := ph.LinkByName(lab.NodeLink)
	if err != nil {
		return fmt.Errorf("%s: find %s: %w", b.proxy, lab.NodeLink, err)
	}
	if err := ph.AddrAdd(el, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(lab.LabSubnet.Bits(), 32)}}); err != nil {
		return fmt.Errorf("%s: address %s: %w", b.proxy, addr, err)
	}
	if err := ph.LinkSetUp(el); err != nil {
		return fmt.Errorf("%s: set %s up: %w", b.proxy, lab.NodeLink, err)
	}
	return nil
}

// proc is one proxy under test.
type proc struct {
	name  string
	cmd   *exec.Cmd
	start time.Time
	log   string
	done  chan struct{}

	mu       sync.Mutex
	peak     uint64 // VmHWM of the process
	childMax uint64 // highest VmHWM seen of any child (kube-proxy's nft)
}

// startProc starts argv inside a namespace: the fork happens on a thread
// that is in it, and the child keeps it.
func startProc(name, netnsName string, argv []string, env []string, logPath string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	// Its own process group: a stop reaches kube-proxy's nft children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	err = inNetns(netnsName, func() error {
		p.start = time.Now()
		return cmd.Start()
	})
	logf.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	go p.sample()
	return p, nil
}

// sample follows the peak RSS of the process and of its nft children (as
// kube-proxy runs them) until it exits. Children are short-lived (nft -f),
// so they are polled often.
func (p *proc) sample() {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	pid := p.cmd.Process.Pid
	for {
		if own, err := readVmHWM(pid); err == nil {
			p.mu.Lock()
			p.peak = max(p.peak, own)
			p.mu.Unlock()
		}
		for _, c := range childPIDs(pid) {
			// Only children that have exec'd: between fork and exec a
			// child shares its parent's memory and reports its RSS.
			if comm, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(c), "comm")); err != nil || strings.TrimSpace(string(comm)) != "nft" {
				continue
			}
			if v, err := readVmHWM(c); err == nil {
				p.mu.Lock()
				p.childMax = max(p.childMax, v)
				p.mu.Unlock()
			}
		}
		select {
		case <-p.done:
			return
		case <-t.C:
		}
	}
}

func (p *proc) peaks() (own, child uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peak, p.childMax
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop ends the process group: SIGTERM, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

func (p *proc) logTail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func readVmHWM(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	return ParseVmHWM(string(b))
}

// childPIDs lists the children of every thread of pid.
func childPIDs(pid int) []int {
	tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		return nil
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "task", t.Name(), "children"))
		if err != nil {
			continue
		}
		for f := range strings.FieldsSeq(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// scrape fetches a metrics page served inside a namespace.
func scrape(ctx context.Context, netnsName, url string) (string, error) {
	u, ok := strings.CutPrefix(url, "http://")
	if !ok {
		return "", fmt.Errorf("not an http URL: %s", url)
	}
	hostport, path, _ := strings.Cut(u, "/")
	var c net.Conn
	err := inNetns(netnsName, func() error {
		var err error
		c, err = net.DialTimeout("tcp", hostport, 5*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n", path, hostport); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	head, body, found := strings.Cut(string(b), "\r\n\r\n")
	if !found || !strings.Contains(strings.SplitN(head, "\r\n", 2)[0], " 200") {
		return "", errors.New("bad metrics response: " + strings.SplitN(head, "\r\n", 2)[0])
	}
	return body, nil
}

// serveEndpoints accepts and closes connections on port 8080 of every real
// endpoint address, inside the endpoint namespace.
func serveEndpoints(name string) (func(), error) {
	ln, err := listenIn(name, fmt.Sprintf("0.0.0.0:%d", endpointPort))
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return func() { ln.Close() }, nil
}

// connectLatency dials addr n times from the client namespace, one at a
// time, and returns each connect's duration (SYN to established).
func connectLatency(ctx context.Context, clientNS string, addr netip.AddrPort, n int) ([]time.Duration, error) {
	var out []time.Duration
	err := inNetns(clientNS, func() error {
		d := net.Dialer{Timeout: 2 * time.Second}
		for i := 0; i < n+n/10; i++ {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			t0 := time.Now()
			c, err := d.DialContext(ctx, "tcp", addr.String())
			el := time.Since(t0)
			if err != nil {
				return fmt.Errorf("connect %d to %s: %w", i, addr, err)
			}
			c.Close()
			// The first tenth warms caches and is not counted.
			if i >= n/10 {
				out = append(out, el)
			}
		}
		return nil
	})
	return out, err
}
