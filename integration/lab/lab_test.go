package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meridian-net/meridian/integration/nodeagent/container"
)

// Integration tests bring up real labs: root, the lab's fixed names on the
// host (serialised with LockHost), and for TestLabUpDown the Kubernetes
// binaries from MERIDIAN_BIN_DIR or the repository's bin/.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// controlPlaneBinDir returns the directory with the Kubernetes binaries,
// skipping the test when they are missing unless MERIDIAN_REQUIRE_LAB=1.
func controlPlaneBinDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("MERIDIAN_BIN_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "bin")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if !isExecutable(filepath.Join(dir, b)) {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		msg := "missing in " + dir + ": " + strings.Join(missing, ", ") + " (hack/build-tools.sh builds them)"
		if os.Getenv("MERIDIAN_REQUIRE_LAB") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return dir
}

var labBinOnce struct {
	sync.Once
	path string
	err  error
	out  []byte
}

// labBinary builds this package's meridian-lab command once per test
// binary: the lab re-executes it to enter namespaces and run node agents.
func labBinary(t *testing.T) string {
	t.Helper()
	labBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "meridian-lab-test-bin-")
		if err != nil {
			labBinOnce.err = err
			return
		}
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			goBin = "go"
		}
		p := filepath.Join(dir, labBinName)
		cmd := exec.Command(goBin, "build", "-o", p, "../cmd/meridian-lab")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		labBinOnce.out, labBinOnce.err = cmd.CombinedOutput()
		labBinOnce.path = p
	})
	if labBinOnce.err != nil {
		t.Fatalf("build meridian-lab: %v\n%s", labBinOnce.err, labBinOnce.out)
	}
	return labBinOnce.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if labBinOnce.path != "" {
		os.RemoveAll(filepath.Dir(labBinOnce.path))
	}
	os.Exit(code)
}

// lockHost takes the host's lab for the test and makes sure no lab is left
// when it ends, whatever happened.
func lockHost(t *testing.T, stateDir string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	unlock, err := LockHost(ctx)
	if err != nil {
		t.Fatalf("lock host: %v", err)
	}
	t.Cleanup(func() {
		if err := Down(context.Background(), stateDir); err != nil {
			t.Errorf("cleanup Down: %v", err)
		}
		unlock()
	})
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testLogWriter{t}, nil))
}

func assertNothingLeft(t *testing.T, stateDir string, pids []int) {
	t.Helper()
	left, err := Leftovers(stateDir)
	if err != nil {
		t.Fatalf("Leftovers: %v", err)
	}
	if len(left) > 0 {
		t.Errorf("left behind: %s", strings.Join(left, "; "))
	}
	for _, pid := range pids {
		if container.Alive(pid, 0) {
			t.Errorf("lab process %d still runs", pid)
		}
	}
}

// waitPodCIDRs waits until the named nodes are registered and hold pod CIDRs
// and returns them.
func waitPodCIDRs(t *testing.T, ctx context.Context, l *Lab, names ...string) map[string]netip.Prefix {
	t.Helper()
	cs, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for {
		got := map[string]netip.Prefix{}
		var lastErr error
		for _, name := range names {
			n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				lastErr = err
				continue
			}
			if p, err := netip.ParsePrefix(n.Spec.PodCIDR); err == nil {
				got[name] = p
			}
		}
		if len(got) == len(names) {
			return got
		}
		select {
		case <-ctx.Done():
			var logs []string
			for _, name := range names {
				p := l.LogPath(agentProc(name))
				logs = append(logs, p+":\n"+tailFile(p, 1500))
			}
			t.Fatalf("nodes %v have pod CIDRs %v after 90s (last error %v); agent logs:\n%s",
				names, got, lastErr, strings.Join(logs, "\n"))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func TestLabUpDown(t *testing.T) {
	requireRoot(t)
	binDir := controlPlaneBinDir(t)
	labBin := labBinary(t)
	stateDir := filepath.Join(t.TempDir(), "lab")
	lockHost(t, stateDir)
	ctx := context.Background()

	t0 := time.Now()
	l, err := Up(ctx, Options{Nodes: 2, BinDir: binDir, StateDir: stateDir, NoDaemon: true, LabBin: labBin, Log: testLogger(t)})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Logf("Up took %s", time.Since(t0).Round(time.Millisecond))

	procs, err := l.Processes()
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	var names []string
	for _, p := range procs {
		pids = append(pids, p.PID)
		names = append(names, p.Name)
		if !p.Alive {
			t.Errorf("%s (pid %d) is not running; %s:\n%s", p.Name, p.PID, p.Log, tailFile(p.Log, 2048))
		}
	}
	want := "etcd kube-apiserver kube-controller-manager kube-scheduler agent-node-1 agent-node-2"
	if strings.Join(names, " ") != want {
		t.Errorf("processes %q, want %q", names, want)
	}

	// The API server answers the host over mlab0, as the admin.
	cs, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	t.Logf("API server %s", v.GitVersion)
	// The controller manager gives each node its own /24 of the cluster CIDR.
	cidrs := waitPodCIDRs(t, ctx, l, "node-1", "node-2")
	if cidrs["node-1"] == cidrs["node-2"] {
		t.Errorf("nodes share pod CIDR %s", cidrs["node-1"])
	}
	for n, p := range cidrs {
		if p.Bits() != 24 || !ClusterCIDR.Contains(p.Addr()) {
			t.Errorf("%s pod CIDR %s is not a /24 of %s", n, p, ClusterCIDR)
		}
	}

	// The node agents keep their nodes Ready.
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := l.WaitNodesReady(wctx); err != nil {
		t.Errorf("WaitNodesReady: %v", err)
	}

	// Nodes reach each other across the bridge; eth0 carries the node IP.
	out, err := l.ExecNode(ctx, "node-1", "ping", "-c", "1", "-W", "5", NodeIP(2).String())
	if err != nil {
		t.Errorf("ping node-2 from node-1: %v\n%s", err, out)
	}
	out, err = l.ExecNode(ctx, "node-2", "ip", "-4", "-o", "addr", "show", "dev", NodeLink)
	if err != nil || !strings.Contains(string(out), NodeIP(2).String()+"/24") {
		t.Errorf("node-2 eth0: %q, %v", out, err)
	}

	// The host has exactly one route into the lab: the connected /24.
	host, err := netlink.LinkByName(HostLink)
	if err != nil {
		t.Fatalf("host link: %v", err)
	}
	routes, err := netlink.RouteList(host, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[0].Dst == nil || routes[0].Dst.String() != LabSubnet.String() {
		t.Errorf("host routes via %s: %v, want only %s", HostLink, routes, LabSubnet)
	}

	// Load reattaches to the same lab.
	loaded, err := Load(stateDir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(loaded.Nodes()) != 2 || loaded.Kubeconfig() != l.Kubeconfig() {
		t.Errorf("Load: nodes %v kubeconfig %s", loaded.Nodes(), loaded.Kubeconfig())
	}

	// A node added later joins like the first ones; a removed one leaves
	// no Node object, namespace or process behind.
	n3, err := l.AddNode(ctx)
	if err != nil {
		t.Fatalf("AddNode: %v", err)
	}
	if n3.Name != "node-3" || n3.IP != NodeIP(3) {
		t.Errorf("AddNode = %+v", n3)
	}
	agent3, err := l.launch.read(agentProc("node-3"))
	if err != nil {
		t.Fatal(err)
	}
	pids = append(pids, agent3.PID)
	waitPodCIDRs(t, ctx, l, "node-3")
	if err := l.RemoveNode(ctx, "node-3"); err != nil {
		t.Fatalf("RemoveNode: %v", err)
	}
	if _, err := cs.CoreV1().Nodes().Get(ctx, "node-3", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("node-3 object after RemoveNode: %v", err)
	}
	if netnsExists(NodeNetns("node-3")) || container.Alive(agent3.PID, agent3.Start) || len(l.Nodes()) != 2 {
		t.Errorf("node-3 remains after RemoveNode: netns %v, agent alive %v, nodes %v",
			netnsExists(NodeNetns("node-3")), container.Alive(agent3.PID, agent3.Start), l.Nodes())
	}

	t0 = time.Now()
	if err := Down(ctx, stateDir); err != nil {
		t.Fatalf("Down: %v", err)
	}
	t.Logf("Down took %s", time.Since(t0).Round(time.Millisecond))
	assertNothingLeft(t, stateDir, pids)
	if err := Down(ctx, stateDir); err != nil {
		t.Errorf("second Down: %v", err)
	}
}

// daemonBinDir returns a bin dir with the Kubernetes binaries and helm from
// kube linked in and Meridian's image binaries built from this tree (Up
// builds the image from them). When they do not build, the test skips
// (fails with MERIDIAN_REQUIRE_LAB=1).
func daemonBinDir(t *testing.T, kube string) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "helm", "kubectl", "coredns"} {
		if (b == "coredns" || b == "kubectl") && !isExecutable(filepath.Join(kube, b)) {
			continue // only the DNS test needs it, and says so
		}
		if err := os.Symlink(filepath.Join(kube, b), filepath.Join(dir, b)); err != nil {
			t.Fatal(err)
		}
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", dir+"/", "../../daemon/cmd/meridiand", "../../daemon/cmd/meridianctl",
		"../../cni-plugin/cmd/meridian-cni", "../../hack/image/meridian-install-cni")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		msg := fmt.Sprintf("build meridian binaries: %v\n%s", err, out)
		if os.Getenv("MERIDIAN_REQUIRE_LAB") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return dir
}

// TestLabWithDaemon runs the lab with meridiand and the CNI plugin and
// exercises what tests of Meridian use: daemon stop and start, a pod wired
// on a node and commands run inside it, and Down removing pod namespaces.
func TestLabWithDaemon(t *testing.T) {
	requireRoot(t)
	kube := controlPlaneBinDir(t)
	labBin := labBinary(t)
	binDir := daemonBinDir(t, kube)
	stateDir := filepath.Join(t.TempDir(), "lab")
	lockHost(t, stateDir)
	ctx := context.Background()

	t0 := time.Now()
	l, err := Up(ctx, Options{Nodes: 2, BinDir: binDir, StateDir: stateDir, LabBin: labBin, Log: testLogger(t)})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Logf("Up took %s", time.Since(t0).Round(time.Millisecond))
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := l.WaitNodesReady(wctx); err != nil {
		t.Fatalf("WaitNodesReady: %v", err)
	}

	// Stop and start meridiand on node-1: a new process replaces the old.
	before, err := l.launch.read(daemonProc("node-1"))
	if err != nil || !before.Alive {
		t.Fatalf("meridiand on node-1 before stop: %+v, %v\n%s", before, err, tailFile(before.Log, 2048))
	}
	if err := l.StopDaemon("node-1", syscall.SIGTERM); err != nil {
		t.Fatalf("StopDaemon: %v", err)
	}
	if container.Alive(before.PID, before.Start) {
		t.Fatalf("meridiand pid %d runs after StopDaemon(SIGTERM)", before.PID)
	}
	if err := l.StopDaemon("node-1", syscall.SIGTERM); err == nil {
		t.Errorf("StopDaemon of a stopped daemon succeeded")
	}
	if err := l.StartDaemon("node-1"); err != nil {
		t.Fatalf("StartDaemon: %v", err)
	}
	after, err := l.launch.read(daemonProc("node-1"))
	if err != nil || !after.Alive || after.PID == before.PID {
		t.Fatalf("meridiand on node-1 after start: %+v (before pid %d), %v", after, before.PID, err)
	}
	if err := l.StartDaemon("node-1"); err == nil {
		t.Errorf("StartDaemon of a running daemon succeeded")
	}

	// A pod on node-2, wired by the agent through meridian-cni.
	cs, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: metav1.NamespaceDefault},
		Spec: corev1.PodSpec{
			NodeName: "node-2",
			Containers: []corev1.Container{{
				Name: "web", Image: "registry.invalid/web",
				Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
			}},
		},
	}
	if _, err := cs.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	var podIP string
	pctx, pcancel := context.WithTimeout(ctx, 60*time.Second)
	defer pcancel()
	for podIP == "" {
		p, err := cs.CoreV1().Pods(pod.Namespace).Get(pctx, pod.Name, metav1.GetOptions{})
		if err == nil && p.Status.Phase == corev1.PodRunning {
			podIP = p.Status.PodIP
			break
		}
		select {
		case <-pctx.Done():
			t.Fatalf("pod not running within 60s: %+v, %v\nagent log:\n%s", p.Status, err,
				tailFile(l.LogPath(agentProc("node-2")), 3000))
		case <-time.After(250 * time.Millisecond):
		}
	}
	out, err := l.ExecPod(ctx, pod.Namespace, pod.Name, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if err != nil || !strings.Contains(string(out), " "+podIP+"/") {
		t.Errorf("ExecPod ip addr: %q, %v; want pod IP %s", out, err, podIP)
	}
	podNS, err := l.PodNetns(ctx, pod.Namespace, pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.ExecPod(ctx, pod.Namespace, "absent"); err == nil {
		t.Errorf("ExecPod of a missing pod succeeded")
	}

	procs, err := l.Processes()
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, p := range procs {
		pids = append(pids, p.PID)
	}
	t0 = time.Now()
	if err := Down(ctx, stateDir); err != nil {
		t.Fatalf("Down: %v", err)
	}
	t.Logf("Down took %s", time.Since(t0).Round(time.Millisecond))
	if netnsExists(podNS) {
		t.Errorf("pod netns %s left after Down", podNS)
	}
	assertNothingLeft(t, stateDir, pids)
}

// TestFailedUpLeavesNothing makes Up fail before anything is made (no bin
// dir) and midway (an API server that exits at once, after the namespaces,
// certificates and etcd exist), and checks that nothing remains either way.
func TestFailedUpLeavesNothing(t *testing.T) {
	requireRoot(t)
	labBin := labBinary(t)
	stateDir := filepath.Join(t.TempDir(), "lab")
	lockHost(t, stateDir)
	ctx := context.Background()

	t.Run("missing bin dir", func(t *testing.T) {
		_, err := Up(ctx, Options{Nodes: 1, BinDir: filepath.Join(t.TempDir(), "absent"), StateDir: stateDir, LabBin: labBin})
		if err == nil || !strings.Contains(err.Error(), "kube-apiserver is missing") {
			t.Fatalf("Up with a missing bin dir: %v", err)
		}
		assertNothingLeft(t, stateDir, nil)
	})

	t.Run("api server exits", func(t *testing.T) {
		falseBin, err := exec.LookPath("false")
		if err != nil {
			t.Skip("no false(1)")
		}
		binDir := t.TempDir()
		for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
			if err := os.Symlink(falseBin, filepath.Join(binDir, b)); err != nil {
				t.Fatal(err)
			}
		}
		log := testLogger(t)
		t0 := time.Now()
		_, err = Up(ctx, Options{Nodes: 2, BinDir: binDir, StateDir: stateDir, NoDaemon: true, LabBin: labBin, Log: log})
		if err == nil || !strings.Contains(err.Error(), "kube-apiserver exited during start-up") {
			t.Fatalf("Up with a failing API server: %v", err)
		}
		t.Logf("failed Up took %s: %v", time.Since(t0).Round(time.Millisecond), err)
		var uerr *UpError
		if !errors.As(err, &uerr) || uerr.LogDir == "" {
			t.Errorf("failed Up kept no logs: %v", err)
		} else {
			t.Cleanup(func() { os.RemoveAll(filepath.Dir(uerr.LogDir)) })
			if _, err := os.Stat(filepath.Join(uerr.LogDir, "kube-apiserver.log")); err != nil {
				t.Errorf("kept logs lack the API server's: %v", err)
			}
		}
		// etcd ran: it must be gone although its namespace no longer
		// exists to find it by.
		if pids := procsWithArg(t, "--data-dir="+filepath.Join(stateDir, "etcd")); len(pids) > 0 {
			t.Errorf("the lab's etcd still runs after the failed Up: pids %v", pids)
		}
		assertNothingLeft(t, stateDir, nil)
	})
}

// procsWithArg returns the live processes with arg on their command line.
func procsWithArg(t *testing.T, arg string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, a := range strings.Split(string(b), "\x00") {
			if a == arg && container.Alive(pid, 0) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// TestCreateNetnsLeavesThreadsInPlace guards against a thread, above all
// the main one (whose namespace /proc/PID/ns/net shows and the runtime
// cannot discard), staying in a namespace the lab created: the host link
// would then be made in the wrong namespace.
func TestCreateNetnsLeavesThreadsInPlace(t *testing.T) {
	requireRoot(t)
	want, err := statNS("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	// Not mlab-*: a concurrent Down must not take these, nor these it.
	prefix := fmt.Sprintf("mlabtest-%d-", os.Getpid())
	for i := range 40 {
		name := fmt.Sprintf("%s%d", prefix, i)
		if err := createNetns(name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = deleteNetns(name) })
		id, err := statNS(netnsPath(name))
		if err != nil || id == want {
			t.Fatalf("netns %s: %v (same as host: %v)", name, err, id == want)
		}
	}
	if got, _ := statNS("/proc/self/ns/net"); got != want {
		t.Errorf("main thread left in another namespace")
	}
	h, err := hostNetns()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(h), &st); err != nil {
		t.Fatal(err)
	}
	if (nsID{dev: st.Dev, ino: st.Ino}) != want {
		t.Errorf("hostNetns is not the host's namespace")
	}
	// Every thread the runtime runs goroutines on is back in the host's.
	var wg sync.WaitGroup
	var bad sync.Map
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if id, err := statNS("/proc/thread-self/ns/net"); err != nil || id != want {
				bad.Store(true, err)
			}
		}()
	}
	wg.Wait()
	if _, ok := bad.Load(true); ok {
		t.Errorf("a thread runs goroutines in another namespace")
	}
}
