package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/cni-plugin/ipam"
	"github.com/meridian-net/meridian/cni-plugin/opstats"
	"github.com/meridian-net/meridian/cni-plugin/plumbing"
)

// pluginPath is the real plugin binary, built once by TestMain.
var pluginPath string

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "meridian-cni-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		pluginPath = filepath.Join(dir, "meridian-cni")
		build := exec.Command("go", "build", "-o", pluginPath, ".")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build plugin:", err)
			os.Exit(1)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
}

func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		_ = testutils.UnmountNS(n)
	})
	return n
}

// node is a throw-away "node": a netns the plugin runs in, standing for the
// host namespace, and a state directory with meridiand's node.json.
type node struct {
	ns       ns.NetNS
	stateDir string
}

func newNode(t *testing.T, podCIDR string) *node {
	t.Helper()
	n := &node{ns: newNS(t), stateDir: t.TempDir()}
	if podCIDR != "" {
		st := ipam.NodeState{NodeName: "node-1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix(podCIDR)}}
		if err := st.Write(n.stateDir); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

func (n *node) conf(version string, extra string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":%q,"name":"meridian","type":"meridian-cni","stateDir":%q,"mtu":1400%s}`,
		version, n.stateDir, extra))
}

type invocation struct {
	cmd, containerID, netns, ifName string
	conf                            []byte
}

// run executes the built plugin inside the node netns, as a runtime would
// exec it in the host's. It returns stdout and the exit error.
func (n *node) run(t *testing.T, inv invocation) ([]byte, error) {
	t.Helper()
	var out bytes.Buffer
	var runErr error
	err := n.ns.Do(func(ns.NetNS) error {
		// The child is forked from this thread, so it starts in the node netns.
		c := exec.Command(pluginPath)
		c.Env = []string{
			"CNI_COMMAND=" + inv.cmd,
			"CNI_CONTAINERID=" + inv.containerID,
			"CNI_NETNS=" + inv.netns,
			"CNI_IFNAME=" + inv.ifName,
			"CNI_PATH=" + filepath.Dir(pluginPath),
		}
		c.Stdin = bytes.NewReader(inv.conf)
		c.Stdout = &out
		c.Stderr = os.Stderr
		runErr = c.Run()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), runErr
}

func (n *node) add(t *testing.T, id string, pod ns.NetNS) *types100.Result {
	t.Helper()
	out, err := n.run(t, invocation{"ADD", id, pod.Path(), "eth0", n.conf("1.1.0", "")})
	if err != nil {
		t.Fatalf("ADD %s: %v: %s", id, err, out)
	}
	r, err := types100.NewResult(out)
	if err != nil {
		t.Fatalf("ADD result %s: %v", out, err)
	}
	res, err := types100.GetResult(r)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (n *node) del(t *testing.T, id string, podPath string) {
	t.Helper()
	if out, err := n.run(t, invocation{"DEL", id, podPath, "eth0", n.conf("1.1.0", "")}); err != nil {
		t.Fatalf("DEL %s: %v: %s", id, err, out)
	}
}

func wantError(t *testing.T, out []byte, runErr error, code uint, msg string) {
	t.Helper()
	var ee *exec.ExitError
	if !errors.As(runErr, &ee) {
		t.Fatalf("plugin exit: %v, want a non-zero exit; stdout %s", runErr, out)
	}
	var e types.Error
	if err := json.Unmarshal(out, &e); err != nil {
		t.Fatalf("stdout %q is not a CNI error: %v", out, err)
	}
	if e.Code != code || !strings.Contains(e.Msg, msg) {
		t.Fatalf("error %+v, want code %d mentioning %q", e, code, msg)
	}
}

func handle(t *testing.T, n ns.NetNS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(int(n.Fd())), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func linkNames(t *testing.T, n ns.NetNS) []string {
	t.Helper()
	links, err := handle(t, n).LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names
}

func allocFiles(t *testing.T, n *node) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(n.stateDir, ipam.DirName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

func podIP(t *testing.T, r *types100.Result) netip.Addr {
	t.Helper()
	if len(r.IPs) != 1 {
		t.Fatalf("result IPs %v", r.IPs)
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	return a
}

func hostRoutes(t *testing.T, n *node) []netlink.Route {
	t.Helper()
	rs, err := handle(t, n.ns).RouteListFiltered(unix.AF_INET, &netlink.Route{Protocol: plumbing.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestAddCheckDel(t *testing.T) {
	requireRoot(t)
	n := newNode(t, "10.244.1.0/24")
	pod := newNS(t)
	const id = "c-add-check-del"
	res := n.add(t, id, pod)
	hostVeth := plumbing.HostVethName("mer", id, "eth0")

	// The result: host veth, pod eth0 in its sandbox, a /32 on eth0, and
	// the default route via the link-local gateway.
	if len(res.Interfaces) != 2 || res.Interfaces[0].Name != hostVeth || res.Interfaces[0].Sandbox != "" ||
		res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != pod.Path() ||
		res.Interfaces[0].Mac == "" || res.Interfaces[1].Mac == "" || res.Interfaces[1].Mtu != 1400 {
		t.Fatalf("interfaces %+v %+v", res.Interfaces[0], res.Interfaces[1])
	}
	ip := podIP(t, res)
	if *res.IPs[0].Interface != 1 || res.IPs[0].Address.String() != ip.String()+"/32" ||
		!netip.MustParsePrefix("10.244.1.0/24").Contains(ip) || res.IPs[0].Gateway.String() != "169.254.1.1" {
		t.Fatalf("ip config %+v", res.IPs[0])
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != "169.254.1.1" {
		t.Fatalf("routes %v", res.Routes)
	}

	// The kernel agrees: pod side.
	podH := handle(t, pod)
	eth0, err := podH.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth0.Attrs().MTU != 1400 || eth0.Attrs().HardwareAddr.String() != res.Interfaces[1].Mac {
		t.Errorf("eth0 %+v", eth0.Attrs())
	}
	addrs, _ := podH.AddrList(eth0, unix.AF_INET)
	if len(addrs) != 1 || addrs[0].IPNet.String() != ip.String()+"/32" {
		t.Errorf("eth0 addresses %v", addrs)
	}
	routes, _ := podH.RouteList(eth0, unix.AF_INET)
	var defaultOK bool
	for _, r := range routes {
		defaultOK = defaultOK || (r.Dst.String() == "0.0.0.0/0" && r.Gw.String() == "169.254.1.1" && r.Flags&int(netlink.FLAG_ONLINK) != 0)
	}
	if !defaultOK {
		t.Errorf("pod routes %v lack default via 169.254.1.1 onlink", routes)
	}
	neighs, _ := podH.NeighList(eth0.Attrs().Index, unix.AF_INET)
	if len(neighs) != 1 || neighs[0].IP.String() != "169.254.1.1" || neighs[0].State != netlink.NUD_PERMANENT ||
		neighs[0].HardwareAddr.String() != res.Interfaces[0].Mac {
		t.Errorf("pod neighbours %+v", neighs)
	}
	// Node side.
	hr := hostRoutes(t, n)
	if len(hr) != 1 || hr[0].Dst.String() != ip.String()+"/32" || hr[0].Scope != netlink.SCOPE_LINK {
		t.Fatalf("node routes with proto 202: %+v", hr)
	}
	if l, err := handle(t, n.ns).LinkByIndex(hr[0].LinkIndex); err != nil || l.Attrs().Name != hostVeth {
		t.Fatalf("route dev %v, %v, want %s", l, err, hostVeth)
	}
	if files := allocFiles(t, n); len(files) != 1 || files[0] != ip.String() {
		t.Fatalf("allocation files %v", files)
	}

	// A repeated ADD of the same attachment (a runtime retrying after a
	// timeout) keeps the address and rewires the pod.
	res = n.add(t, id, pod)
	if again := podIP(t, res); again != ip {
		t.Fatalf("repeated ADD got %s, first got %s", again, ip)
	}
	if hr = hostRoutes(t, n); len(hr) != 1 || len(allocFiles(t, n)) != 1 {
		t.Fatalf("after repeated ADD: routes %v, allocations %v", hr, allocFiles(t, n))
	}

	// CHECK against the ADD result passes, and fails once the host route is gone.
	prev, _ := json.Marshal(res)
	checkConf := n.conf("1.1.0", `,"prevResult":`+string(prev))
	if out, err := n.run(t, invocation{"CHECK", id, pod.Path(), "eth0", checkConf}); err != nil {
		t.Fatalf("CHECK: %v: %s", err, out)
	}
	if err := handle(t, n.ns).RouteDel(&hr[0]); err != nil {
		t.Fatal(err)
	}
	out, err := n.run(t, invocation{"CHECK", id, pod.Path(), "eth0", checkConf})
	wantError(t, out, err, ErrCodeCheckFailed, "proto 202")

	// DEL removes links, route and allocation; again is fine, also without netns.
	n.del(t, id, pod.Path())
	if names := linkNames(t, n.ns); len(names) != 1 {
		t.Errorf("node links after DEL: %v", names)
	}
	if names := linkNames(t, pod); len(names) != 1 {
		t.Errorf("pod links after DEL: %v", names)
	}
	if files := allocFiles(t, n); len(files) != 0 {
		t.Errorf("allocation files after DEL: %v", files)
	}
	n.del(t, id, pod.Path())
	n.del(t, id, "")

	// Every operation left its record for meridiand's metrics, failures
	// with their code.
	recs, skipped, err := opstats.Drain(n.stateDir)
	if err != nil || skipped != 0 {
		t.Fatalf("drain operation records: %v, %d bytes skipped", err, skipped)
	}
	var got []string
	for _, r := range recs {
		got = append(got, fmt.Sprintf("%s/%d", r.Op, r.Code))
		if r.Duration <= 0 || time.Since(r.Start) > time.Minute {
			t.Errorf("record %+v: implausible start or duration", r)
		}
	}
	want := []string{"add/0", "add/0", "check/0", "check/101", "del/0", "del/0", "del/0"}
	if !slices.Equal(got, want) {
		t.Errorf("operation records %v, want %v", got, want)
	}
}

func TestAddOldVersionResult(t *testing.T) {
	requireRoot(t)
	n := newNode(t, "10.244.3.0/24")
	pod := newNS(t)
	out, err := n.run(t, invocation{"ADD", "c-040", pod.Path(), "eth0", n.conf("0.4.0", "")})
	if err != nil {
		t.Fatalf("ADD: %v: %s", err, out)
	}
	var r struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Version string `json:"version"`
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.CNIVersion != "0.4.0" || len(r.IPs) != 1 || r.IPs[0].Version != "4" ||
		!strings.HasPrefix(r.IPs[0].Address, "10.244.3.") {
		t.Fatalf("0.4.0 result %s (%v)", out, err)
	}
	if out, err := n.run(t, invocation{"DEL", "c-040", pod.Path(), "eth0", n.conf("0.4.0", "")}); err != nil {
		t.Fatalf("DEL: %v: %s", err, out)
	}
}

// TestPodToPod puts two pods on one node and connects them over TCP through
// the node's routing, then deletes one and checks its address and route go.
func TestPodToPod(t *testing.T) {
	requireRoot(t)
	n := newNode(t, "10.244.2.0/24")
	podA, podB := newNS(t), newNS(t)
	ipA := podIP(t, n.add(t, "pod-a", podA))
	ipB := podIP(t, n.add(t, "pod-b", podB))
	if ipA == ipB {
		t.Fatalf("both pods got %s", ipA)
	}

	var ln net.Listener
	if err := podB.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp4", net.JoinHostPort(ipB.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil {
			served <- err
			return
		}
		_, err = c.Write([]byte(c.RemoteAddr().String()))
		served <- err
	}()
	var got string
	if err := podA.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	}); err != nil {
		t.Fatalf("pod A -> pod B: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	// Pod B saw pod A's own address: routed, not masqueraded.
	if host, _, _ := net.SplitHostPort(got); host != ipA.String() {
		t.Fatalf("pod B saw the peer as %q, want %s", got, ipA)
	}

	n.del(t, "pod-b", podB.Path())
	for _, r := range hostRoutes(t, n) {
		if r.Dst.String() == ipB.String()+"/32" {
			t.Errorf("route to deleted pod B remains: %v", r)
		}
	}
	if files := allocFiles(t, n); len(files) != 1 || files[0] != ipA.String() {
		t.Errorf("allocation files after DEL of B: %v", files)
	}
	n.del(t, "pod-a", podA.Path())
}

func TestBadInputChangesNothing(t *testing.T) {
	requireRoot(t)
	cases := []struct {
		name     string
		podCIDR  string
		prefill  int // successful ADDs before the bad one
		inv      func(n *node, pod ns.NetNS) invocation
		wantCode uint
		wantMsg  string
	}{
		{"malformed json", "10.244.1.0/24", 0, func(n *node, pod ns.NetNS) invocation {
			return invocation{"ADD", "bad", pod.Path(), "eth0", []byte(`{"cniVersion":"1.1.0","name":`)}
		}, types.ErrDecodingFailure, ""},
		{"unknown cniVersion", "10.244.1.0/24", 0, func(n *node, pod ns.NetNS) invocation {
			return invocation{"ADD", "bad", pod.Path(), "eth0", n.conf("7.0.0", "")}
		}, types.ErrIncompatibleCNIVersion, "incompatible"},
		{"invalid mtu", "10.244.1.0/24", 0, func(n *node, pod ns.NetNS) invocation {
			return invocation{"ADD", "bad", pod.Path(), "eth0", bytes.Replace(n.conf("1.1.0", ""), []byte(`"mtu":1400`), []byte(`"mtu":100`), 1)}
		}, types.ErrInvalidNetworkConfig, "mtu"},
		{"missing CNI_NETNS", "10.244.1.0/24", 0, func(n *node, pod ns.NetNS) invocation {
			return invocation{"ADD", "bad", "", "eth0", n.conf("1.1.0", "")}
		}, types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"netns path does not exist", "10.244.1.0/24", 0, func(n *node, pod ns.NetNS) invocation {
			return invocation{"ADD", "bad", "/var/run/netns/meridian-no-such-ns", "eth0", n.conf("1.1.0", "")}
		}, types.ErrInvalidNetNS, "no-such-ns"},
		{"netns is the node's own", "10.244.1.0/24", 0, func(n *node, pod ns.NetNS) invocation {
			return invocation{"ADD", "bad", n.ns.Path(), "eth0", n.conf("1.1.0", "")}
		}, types.ErrInvalidNetNS, "own netns"},
		{"no node.json", "", 0, func(n *node, pod ns.NetNS) invocation {
			return invocation{"ADD", "bad", pod.Path(), "eth0", n.conf("1.1.0", "")}
		}, types.ErrTryAgainLater, "no pod CIDR yet"},
		{"exhausted pool", "10.244.1.0/30", 2, func(n *node, pod ns.NetNS) invocation {
			return invocation{"ADD", "bad", pod.Path(), "eth0", n.conf("1.1.0", "")}
		}, ErrCodeNoFreeAddress, "no free address in 10.244.1.0/30"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, tc.podCIDR)
			for i := range tc.prefill {
				n.add(t, fmt.Sprintf("fill-%d", i), newNS(t))
			}
			linksBefore := linkNames(t, n.ns)
			filesBefore := allocFiles(t, n)
			pod := newNS(t)

			out, err := n.run(t, tc.inv(n, pod))
			wantError(t, out, err, tc.wantCode, tc.wantMsg)

			if got := linkNames(t, n.ns); len(got) != len(linksBefore) {
				t.Errorf("node links %v, before %v", got, linksBefore)
			}
			if got := linkNames(t, pod); len(got) != 1 {
				t.Errorf("pod links %v, want only lo", got)
			}
			if got := allocFiles(t, n); len(got) != len(filesBefore) {
				t.Errorf("allocation files %v, before %v", got, filesBefore)
			}
			if rs := hostRoutes(t, n); len(rs) != tc.prefill {
				t.Errorf("node routes %v", rs)
			}
		})
	}
}

func TestStatusAndVersion(t *testing.T) {
	requireRoot(t)
	n := newNode(t, "")
	out, err := n.run(t, invocation{cmd: "STATUS", conf: n.conf("1.1.0", "")})
	wantError(t, out, err, types.ErrPluginNotAvailable, "no pod CIDR")
	if err := (ipam.NodeState{NodeName: "n", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.9.0/24")}}).Write(n.stateDir); err != nil {
		t.Fatal(err)
	}
	if out, err := n.run(t, invocation{cmd: "STATUS", conf: n.conf("1.1.0", "")}); err != nil || len(out) != 0 {
		t.Fatalf("STATUS with node.json: %v %s", err, out)
	}
	out, err = n.run(t, invocation{cmd: "VERSION"})
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Supported []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &v); err != nil || strings.Join(v.Supported, ",") != "0.4.0,1.0.0,1.1.0" {
		t.Fatalf("VERSION %s (%v)", out, err)
	}
}

func TestGC(t *testing.T) {
	requireRoot(t)
	n := newNode(t, "10.244.4.0/24")
	keep, drop := newNS(t), newNS(t)
	ipKeep := podIP(t, n.add(t, "keep", keep))
	n.add(t, "drop", drop)
	conf := n.conf("1.1.0", `,"cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]`)
	if out, err := n.run(t, invocation{cmd: "GC", conf: conf}); err != nil {
		t.Fatalf("GC: %v %s", err, out)
	}
	if files := allocFiles(t, n); len(files) != 1 || files[0] != ipKeep.String() {
		t.Errorf("allocations after GC %v", files)
	}
	names := linkNames(t, n.ns)
	if len(names) != 2 || names[1] != plumbing.HostVethName("mer", "keep", "eth0") {
		t.Errorf("node links after GC %v", names)
	}
	n.del(t, "keep", keep.Path())
}

// TestConcurrentAdds runs 50 plugin processes at once on one node and
// checks every pod got its own address and route.
func TestConcurrentAdds(t *testing.T) {
	requireRoot(t)
	n := newNode(t, "10.244.5.0/24")
	const count = 50
	pods := make([]ns.NetNS, count)
	for i := range pods {
		pods[i] = newNS(t)
	}
	outs := make([][]byte, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = n.run(t, invocation{"ADD", fmt.Sprintf("conc-%d", i), pods[i].Path(), "eth0", n.conf("1.1.0", "")})
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range count {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v: %s", i, errs[i], outs[i])
		}
		r, err := types100.NewResult(outs[i])
		if err != nil {
			t.Fatal(err)
		}
		res, _ := types100.GetResult(r)
		ip := podIP(t, res).String()
		if j, dup := seen[ip]; dup {
			t.Fatalf("%s given to pods %d and %d", ip, j, i)
		}
		seen[ip] = i
	}
	if rs := hostRoutes(t, n); len(rs) != count {
		t.Errorf("%d host routes, want %d", len(rs), count)
	}
	for i := range count {
		n.del(t, fmt.Sprintf("conc-%d", i), pods[i].Path())
	}
	if files := allocFiles(t, n); len(files) != 0 {
		t.Errorf("allocations left: %v", files)
	}
}
