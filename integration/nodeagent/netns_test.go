package nodeagent

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
}

func randHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// testNetns creates a uniquely named netns through the agent's own
// createNetns and removes it when the test ends, whatever happened. The
// names start with "mlab-test-", never the agents' "mlab-pod-".
func testNetns(t *testing.T, role string) string {
	t.Helper()
	if err := ensureNetnsDir(); err != nil {
		t.Fatal(err)
	}
	name := "mlab-test-" + role + "-" + randHex(t, 4)
	if err := createNetns(name); err != nil {
		t.Fatalf("createNetns: %v", err)
	}
	t.Cleanup(func() {
		if err := deleteNetns(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return name
}

func assertNoNetns(t *testing.T, name string) {
	t.Helper()
	if _, err := os.Lstat(podNetnsPath(name)); !os.IsNotExist(err) {
		t.Errorf("netns %s still present (lstat err %v)", name, err)
	}
}

// inNetns runs fn with the calling thread in the named netns: sockets made
// by fn stay in that netns after it returns.
func inNetns(t *testing.T, name string, fn func() error) {
	t.Helper()
	if err := ns.WithNetNSPath(podNetnsPath(name), func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

func TestNetnsCreateDeleteIdempotent(t *testing.T) {
	requireRoot(t)
	if err := ensureNetnsDir(); err != nil {
		t.Fatal(err)
	}
	name := "mlab-test-idem-" + randHex(t, 4)
	t.Cleanup(func() { deleteNetns(name) })
	before, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := createNetns(name); err != nil {
			t.Fatalf("createNetns: %v", err)
		}
	}
	if !netnsExists(name) {
		t.Fatal("netns not mounted after create")
	}
	// The netns is a different one from ours, with lo up.
	var lo *net.Interface
	inNetns(t, name, func() error {
		cur, err := os.Readlink("/proc/thread-self/ns/net")
		if err != nil {
			return err
		}
		if cur == before {
			return fmt.Errorf("pod netns is the test's own netns")
		}
		lo, err = net.InterfaceByName("lo")
		return err
	})
	if lo.Flags&net.FlagUp == 0 {
		t.Error("lo is down in the new netns")
	}
	// A leftover plain file (create died before the mount) is replaced.
	stale := "mlab-test-stale-" + randHex(t, 4)
	t.Cleanup(func() { deleteNetns(stale) })
	if err := os.WriteFile(podNetnsPath(stale), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := createNetns(stale); err != nil {
		t.Fatalf("createNetns over a stale file: %v", err)
	}
	if !netnsExists(stale) {
		t.Error("stale file not replaced by a netns")
	}

	for _, n := range []string{name, name, stale} {
		if err := deleteNetns(n); err != nil {
			t.Errorf("deleteNetns(%s): %v", n, err)
		}
	}
	assertNoNetns(t, name)
	assertNoNetns(t, stale)
	if after, _ := os.Readlink("/proc/thread-self/ns/net"); after != before {
		t.Errorf("test thread left in another netns: %s, was %s", after, before)
	}
}

// TestServersInPodNetns is the stand-in containers of a fake pod with ports
// 8080/TCP and 5353/UDP, in a netns of their own, reached from inside it.
func TestServersInPodNetns(t *testing.T) {
	requireRoot(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	name := testNetns(t, "pod")

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-5c6d-xyz12", Namespace: "lab", UID: types.UID("uid-" + name)},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "echo", Image: "agnhost",
			Ports: []corev1.ContainerPort{{ContainerPort: 8080}, {ContainerPort: 5353, Protocol: corev1.ProtocolUDP}},
		}}},
	}
	id := podIdentity{Name: pod.Name, Namespace: pod.Namespace, Node: "node-1", IP: "10.244.1.9"}
	s, err := startServers(podNetnsPath(name), podPorts(pod), id, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()

	// The servers are not in the test's netns.
	if c, err := net.DialTimeout("tcp4", "127.0.0.1:8080", time.Second); err == nil {
		c.Close()
		t.Fatal("server reachable from the test's own netns")
	}

	var httpConn, echoConn net.Conn
	var udpConn *net.UDPConn
	inNetns(t, name, func() error {
		var err error
		if httpConn, err = net.Dial("tcp4", "127.0.0.1:8080"); err != nil {
			return err
		}
		if echoConn, err = net.Dial("tcp4", "127.0.0.1:8080"); err != nil {
			return err
		}
		udpConn, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353})
		return err
	})
	defer httpConn.Close()
	defer echoConn.Close()
	defer udpConn.Close()
	deadline := time.Now().Add(10 * time.Second)
	for _, c := range []net.Conn{httpConn, echoConn, udpConn} {
		c.SetDeadline(deadline)
	}

	io.WriteString(httpConn, "GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(httpConn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	want := "Hello from echo-5c6d-xyz12 (namespace lab, node node-1, IP 10.244.1.9)\n"
	if resp.StatusCode != 200 || string(body) != want {
		t.Errorf("HTTP: %d %q, want 200 %q", resp.StatusCode, body, want)
	}

	msg := "not http, just bytes\n"
	io.WriteString(echoConn, msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(echoConn, got); err != nil || string(got) != msg {
		t.Errorf("TCP echo: %q %v", got, err)
	}

	if _, err := udpConn.Write([]byte("dns-ish datagram")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := udpConn.Read(buf)
	if err != nil || string(buf[:n]) != "dns-ish datagram" {
		t.Errorf("UDP echo: %q %v", buf[:n], err)
	}

	s.Stop()
	if err := deleteNetns(name); err != nil {
		t.Fatal(err)
	}
	assertNoNetns(t, name)
}

// TestSandboxWithRealCNI drives the agent's sandbox code (named netns,
// libcni ADD/CHECK/DEL with the cache in the state dir, cache recovery)
// with the reference ptp and host-local plugins, all inside a throwaway
// "node" netns, and reaches the stand-in server over the pod's veth.
func TestSandboxWithRealCNI(t *testing.T) {
	requireRoot(t)
	const cniBin = "/usr/lib/cni"
	for _, p := range []string{"ptp", "host-local"} {
		if _, err := os.Stat(filepath.Join(cniBin, p)); err != nil {
			t.Skipf("reference plugin %s missing: %v", p, err)
		}
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	nodeNS := testNetns(t, "node")
	podNS := testNetns(t, "pod")

	dir := t.TempDir()
	confDir := filepath.Join(dir, "net.d")
	os.MkdirAll(confDir, 0o755)
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"mlabtest","plugins":[{"type":"ptp",
		"ipam":{"type":"host-local","ranges":[[{"subnet":"10.251.7.0/24"}]],"dataDir":%q}}]}`, filepath.Join(dir, "ipam"))
	// A later file in lexical order must not be chosen.
	os.WriteFile(filepath.Join(confDir, "20-other.conflist"), []byte(`{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"nonexistent"}]}`), 0o644)
	if err := os.WriteFile(filepath.Join(confDir, "10-test.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newCNIRunner(confDir, []string{cniBin}, filepath.Join(dir, "cni-cache"))
	st := podState{UID: types.UID("0000-test-" + randHex(t, 4)), Namespace: "lab", Name: "web-1", Netns: podNS}
	ctx := context.Background()

	// The plugins run as children of a thread in the node netns: that is
	// where the host end of the veth and the pod route go.
	var ips []netip.Addr
	inNetns(t, nodeNS, func() error {
		var err error
		ips, err = r.add(ctx, st)
		return err
	})
	t.Cleanup(func() {
		ns.WithNetNSPath(podNetnsPath(nodeNS), func(ns.NetNS) error { return r.del(ctx, st) })
	})
	if len(ips) != 1 || !netip.MustParsePrefix("10.251.7.0/24").Contains(ips[0]) {
		t.Fatalf("ADD gave IPs %v", ips)
	}

	// After a "restart": the cache names the sandbox and its pod, and
	// CHECK against it confirms the same address.
	cached, err := r.cachedSandboxes()
	if err != nil {
		t.Fatal(err)
	}
	if len(cached) != 1 || cached[0].UID != st.UID || cached[0].key() != "lab/web-1" || cached[0].Netns != podNS {
		t.Errorf("cachedSandboxes = %+v", cached)
	}
	inNetns(t, nodeNS, func() error {
		got, err := r.check(ctx, st)
		if err == nil && !slices.Equal(got, ips) {
			err = fmt.Errorf("CHECK result %v, ADD gave %v", got, ips)
		}
		return err
	})

	// The stand-in server in the pod netns answers on the pod IP, from the
	// node netns, through the routed veth.
	id := podIdentity{Name: st.Name, Namespace: st.Namespace, Node: "node-t", IP: ips[0].String()}
	s, err := startServers(podNetnsPath(podNS), []servicePort{{corev1.ProtocolTCP, 8080}}, id, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	var c net.Conn
	inNetns(t, nodeNS, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(ips[0], 8080).String(), 5*time.Second)
		return err
	})
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
	b, _ := io.ReadAll(c)
	c.Close()
	if !strings.Contains(string(b), "Hello from web-1 (namespace lab, node node-t, IP "+ips[0].String()+")") {
		t.Errorf("reply over the veth: %q", b)
	}
	s.Stop()

	// DEL releases the address and the cache, twice without error, also
	// once the netns is gone.
	inNetns(t, nodeNS, func() error { return r.del(ctx, st) })
	if err := deleteNetns(podNS); err != nil {
		t.Fatal(err)
	}
	inNetns(t, nodeNS, func() error { return r.del(ctx, st) })
	if cached, err := r.cachedSandboxes(); err != nil || len(cached) != 0 {
		t.Errorf("cache after DEL: %+v %v", cached, err)
	}
	leases, _ := os.ReadDir(filepath.Join(dir, "ipam", "mlabtest"))
	for _, e := range leases {
		if strings.HasPrefix(e.Name(), "10.") {
			t.Errorf("host-local still holds %s after DEL", e.Name())
		}
	}
	assertNoNetns(t, podNS)
}
