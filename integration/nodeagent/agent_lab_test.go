package nodeagent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meridian-net/meridian/integration/lab"
	"github.com/meridian-net/meridian/integration/nodeagent"
)

// This test runs the agent as the lab runs it, against a real API server,
// controller manager and scheduler, with the real meridian-cni and no
// meridiand: the test writes the node state file meridiand would write.
// It needs root and the Kubernetes binaries (MERIDIAN_BIN_DIR or the
// repository's bin/); without them it skips, unless MERIDIAN_REQUIRE_LAB=1.

const node = "node-1"

func kubeBinDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := os.Getenv("MERIDIAN_BIN_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "bin")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			msg := fmt.Sprintf("%s missing in %s (hack/build-tools.sh builds it)", b, dir)
			if os.Getenv("MERIDIAN_REQUIRE_LAB") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return dir
}

// binDir is a fresh directory with the Kubernetes binaries linked in and
// meridian-lab and meridian-cni built from this tree.
func binDir(t *testing.T, kube string) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "coredns"} {
		if _, err := os.Stat(filepath.Join(kube, b)); err != nil && b == "coredns" {
			continue // the CoreDNS part of the test says it is skipped
		}
		if err := os.Symlink(filepath.Join(kube, b), filepath.Join(dir, b)); err != nil {
			t.Fatal(err)
		}
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	for name, pkg := range map[string]string{
		"meridian-lab": "../cmd/meridian-lab",
		"meridian-cni": "../../cni-plugin/cmd/meridian-cni",
	} {
		cmd := exec.Command(goBin, "build", "-o", filepath.Join(dir, name), pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, out)
		}
	}
	return dir
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func eventually(t *testing.T, ctx context.Context, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func podCondition(p *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == t {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

func podRunningReady(p *corev1.Pod) error {
	if p.Status.Phase != corev1.PodRunning {
		return fmt.Errorf("phase %s", p.Status.Phase)
	}
	if c := podCondition(p, corev1.PodReady); c == nil || c.Status != corev1.ConditionTrue {
		return fmt.Errorf("not ready: %+v", c)
	}
	return nil
}

// dialFromNode dials from the node's netns, as a process on the node would.
func dialFromNode(t *testing.T, netnsName, network, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	err := ns.WithNetNSPath(filepath.Join("/var/run/netns", netnsName), func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout(network, addr, 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s %s from %s: %v", network, addr, netnsName, err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func httpGetFromNode(t *testing.T, netnsName string, addr netip.AddrPort) (string, error) {
	var c net.Conn
	err := ns.WithNetNSPath(filepath.Join("/var/run/netns", netnsName), func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp4", addr.String(), 2*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestAgentInLab(t *testing.T) {
	kube := kubeBinDir(t)
	bins := binDir(t, kube)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	unlock, err := lab.LockHost(ctx)
	if err != nil {
		t.Fatalf("lock host: %v", err)
	}
	stateDir := t.TempDir()
	t.Cleanup(func() {
		if err := lab.Down(context.Background(), stateDir); err != nil {
			t.Errorf("lab down: %v", err)
		}
		unlock()
	})
	log := slog.New(slog.NewTextHandler(logWriter{t}, nil))
	l, err := lab.Up(ctx, lab.Options{Nodes: 1, BinDir: bins, StateDir: stateDir, NoDaemon: true, Log: log})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	agentLog := l.LogPath("agent-" + node)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(agentLog)
			t.Logf("agent log %s:\n%s", agentLog, b)
		}
	})
	cs, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	n, err := l.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WaitNodesReady(ctx); err != nil {
		t.Fatal(err)
	}

	// The Node as kubelet registers it, and its lease.
	var podCIDR netip.Prefix
	eventually(t, ctx, 90*time.Second, "node registered with a pod CIDR", func() error {
		nd, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		podCIDR, err = netip.ParsePrefix(nd.Spec.PodCIDR)
		return err
	})
	nd, _ := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	checkNode(t, nd, n.IP)
	lease, err := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("node lease: %v", err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != node || len(lease.OwnerReferences) != 1 || lease.OwnerReferences[0].UID != nd.UID {
		t.Errorf("lease %+v", lease)
	}
	firstRenew := lease.Spec.RenewTime.Time

	eventually(t, ctx, 60*time.Second, "default service account", func() error {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	})

	// Without meridiand's node state the CNI refuses ADD: the pod stays
	// Pending with the kubelet's FailedCreatePodSandBox event.
	pods := cs.CoreV1().Pods("default")
	web := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{
				{Name: "nginx", Image: "nginx"},
				{Name: "echo", Image: "agnhost", Ports: []corev1.ContainerPort{
					{ContainerPort: 8080}, {ContainerPort: 5353, Protocol: corev1.ProtocolUDP}}},
			},
			TerminationGracePeriodSeconds: new(int64(30)),
		},
	}
	if _, err := pods.Create(ctx, web, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, 60*time.Second, "FailedCreatePodSandBox", func() error {
		evs, err := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{
			FieldSelector: fields.Set{"involvedObject.name": "web", "reason": "FailedCreatePodSandBox"}.String()})
		if err != nil {
			return err
		}
		if len(evs.Items) == 0 {
			return fmt.Errorf("no event yet")
		}
		p, err := pods.Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := podCondition(p, corev1.PodReadyToStartContainers)
		if p.Status.Phase != corev1.PodPending || c == nil || c.Status != corev1.ConditionFalse || c.Reason != "FailedCreatePodSandBox" {
			return fmt.Errorf("phase %s, sandbox condition %+v", p.Status.Phase, c)
		}
		return nil
	})

	writeNodeState(t, l.NodeStateDir(node), podCIDR)
	var podIP netip.Addr
	eventually(t, ctx, 90*time.Second, "web running", func() error {
		p, err := pods.Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if err := podRunningReady(p); err != nil {
			return err
		}
		podIP, err = netip.ParseAddr(p.Status.PodIP)
		return err
	})
	p, _ := pods.Get(ctx, "web", metav1.GetOptions{})
	checkRunningPod(t, p, n.IP, podCIDR)
	webNetns := nodeagent.PodNetnsName(p.UID)

	// The stand-ins answer from the node over the pod's veth.
	page, err := httpGetFromNode(t, n.Netns, netip.AddrPortFrom(podIP, 80))
	want := fmt.Sprintf("Hello from web (namespace default, node %s, IP %s)\n", node, podIP)
	if err != nil || page != want {
		t.Errorf("GET :80 = %q, %v; want %q", page, err, want)
	}
	c := dialFromNode(t, n.Netns, "tcp4", netip.AddrPortFrom(podIP, 8080).String())
	io.WriteString(c, "echo me\n")
	buf := make([]byte, 8)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "echo me\n" {
		t.Errorf("TCP echo on 8080: %q %v", buf, err)
	}
	c.Close()
	u := dialFromNode(t, n.Netns, "udp4", netip.AddrPortFrom(podIP, 5353).String())
	u.Write([]byte("datagram"))
	nr, err := u.Read(buf)
	if err != nil || string(buf[:nr]) != "datagram" {
		t.Errorf("UDP echo on 5353: %q %v", buf[:nr], err)
	}
	u.Close()

	// hostNetwork: Running on the node's address, no netns.
	hn := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hostnet"},
		Spec:       corev1.PodSpec{HostNetwork: true, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	if _, err := pods.Create(ctx, hn, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, 60*time.Second, "hostNetwork pod running", func() error {
		p, err := pods.Get(ctx, "hostnet", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.PodIP != n.IP.String() {
			return fmt.Errorf("podIP %q", p.Status.PodIP)
		}
		return podRunningReady(p)
	})
	hp, _ := pods.Get(ctx, "hostnet", metav1.GetOptions{})
	if _, err := os.Stat(filepath.Join("/var/run/netns", nodeagent.PodNetnsName(hp.UID))); err == nil {
		t.Error("hostNetwork pod got a netns")
	}

	// A graceful delete ends like the kubelet ends it: sandbox gone, pod
	// object deleted by the agent with grace 0, well before 30 s.
	victim := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "victim"}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "c", Image: "nginx"}}}}
	if _, err := pods.Create(ctx, victim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var victimUID string
	eventually(t, ctx, 60*time.Second, "victim running", func() error {
		p, err := pods.Get(ctx, "victim", metav1.GetOptions{})
		if err != nil {
			return err
		}
		victimUID = string(p.UID)
		return podRunningReady(p)
	})
	t0 := time.Now()
	if err := pods.Delete(ctx, "victim", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, 20*time.Second, "victim deleted", func() error {
		_, err := pods.Get(ctx, "victim", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there: %v", err)
	})
	t.Logf("graceful delete took %s", time.Since(t0).Round(time.Millisecond))
	if _, err := os.Stat(filepath.Join("/var/run/netns", nodeagent.PodNetnsName(types.UID(victimUID)))); err == nil {
		t.Error("victim's netns left behind")
	}

	// Restart: stop the agent, force-delete one pod meanwhile, start it
	// again. web is adopted with the same IP and its servers come back;
	// the force-deleted pod's sandbox is torn down.
	orphan := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "orphan"}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "c", Image: "nginx"}}}}
	if _, err := pods.Create(ctx, orphan, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var orphanNetns string
	eventually(t, ctx, 60*time.Second, "orphan running", func() error {
		p, err := pods.Get(ctx, "orphan", metav1.GetOptions{})
		if err != nil {
			return err
		}
		orphanNetns = nodeagent.PodNetnsName(p.UID)
		return podRunningReady(p)
	})
	webLink := hostLinkTo(t, n.Netns, podIP)
	// The lab's CoreDNS pods run here too: the agent runs the real CoreDNS
	// in them, Ready by its probe, answering for the cluster's Services.
	dnsNetns := checkCoreDNS(t, ctx, l, n)
	stopAgent(t, l)
	// CoreDNS dies with its agent (an orphan would hold port 53 against
	// the next agent's CoreDNS).
	eventually(t, ctx, 10*time.Second, "coredns gone with the agent", func() error {
		for _, name := range dnsNetns {
			if pids := pidsInNetns(t, name); len(pids) > 0 {
				return fmt.Errorf("processes %v still in %s", pids, name)
			}
		}
		return nil
	})
	if err := pods.Delete(ctx, "orphan", metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/var/run/netns", orphanNetns)); err != nil {
		t.Fatalf("orphan netns should survive the agent's stop: %v", err)
	}
	if _, err := httpGetFromNode(t, n.Netns, netip.AddrPortFrom(podIP, 80)); err == nil {
		t.Error("web still answers with its agent stopped")
	}
	startAgent(t, l, n)
	eventually(t, ctx, 60*time.Second, "web answers after restart", func() error {
		page, err := httpGetFromNode(t, n.Netns, netip.AddrPortFrom(podIP, 80))
		if err == nil && page != want {
			err = fmt.Errorf("page %q", page)
		}
		return err
	})
	eventually(t, ctx, 60*time.Second, "orphan netns removed", func() error {
		if _, err := os.Stat(filepath.Join("/var/run/netns", orphanNetns)); err == nil {
			return fmt.Errorf("%s still there", orphanNetns)
		}
		return nil
	})
	p, _ = pods.Get(ctx, "web", metav1.GetOptions{})
	if p.Status.PodIP != podIP.String() || nodeagent.PodNetnsName(p.UID) != webNetns {
		t.Errorf("web after restart: IP %s netns %s", p.Status.PodIP, nodeagent.PodNetnsName(p.UID))
	}
	if err := podRunningReady(p); err != nil {
		t.Errorf("web after restart: %v", err)
	}
	// Adopted through CHECK, not rewired: the host end of web's veth is
	// the one it had before the restart.
	if got := hostLinkTo(t, n.Netns, podIP); got != webLink {
		t.Errorf("web's host link changed across the restart: %s, was %s", got, webLink)
	}
	// The new agent runs CoreDNS again in the adopted pods.
	checkCoreDNS(t, ctx, l, n)

	// Heartbeats continue: the lease was renewed after the first look.
	eventually(t, ctx, 30*time.Second, "lease renewed", func() error {
		l, err := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !l.Spec.RenewTime.Time.After(firstRenew) {
			return fmt.Errorf("renewTime %v", l.Spec.RenewTime)
		}
		return nil
	})
}

// checkCoreDNS waits until the lab's CoreDNS pods are Ready, checks that
// each runs one CoreDNS process in its netns that answers a real query for
// the kubernetes Service from the node, and returns their netns names.
func checkCoreDNS(t *testing.T, ctx context.Context, l *lab.Lab, n lab.Node) []string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(l.BinDir(), "coredns")); err != nil {
		t.Logf("coredns part skipped: no coredns in %s (hack/build-tools.sh builds it)", l.BinDir())
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := l.WaitDNSReady(wctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("coredns ready after %s", time.Since(t0).Round(time.Millisecond))
	cs, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	pods, err := cs.CoreV1().Pods(lab.DNSNamespace).List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=" + lab.DNSLabel})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("coredns pods: %v, %v", pods, err)
	}
	var names []string
	for _, p := range pods.Items {
		if err := podRunningReady(&p); err != nil {
			t.Errorf("coredns pod %s: %v", p.Name, err)
		}
		name := nodeagent.PodNetnsName(p.UID)
		names = append(names, name)
		if pids := pidsInNetns(t, name); len(pids) != 1 {
			t.Errorf("processes in %s: %v, want one coredns", name, pids)
		}
		ip := netip.MustParseAddr(p.Status.PodIP)
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var c net.Conn
			err := ns.WithNetNSPath(filepath.Join("/var/run/netns", n.Netns), func(ns.NetNS) error {
				var err error
				c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, netip.AddrPortFrom(ip, 53).String())
				return err
			})
			return c, err
		}}
		eventually(t, ctx, 30*time.Second, "resolve kubernetes.default via "+ip.String(), func() error {
			addrs, err := r.LookupNetIP(ctx, "ip4", "kubernetes.default.svc.cluster.local.")
			if err == nil && (len(addrs) != 1 || addrs[0] != lab.KubernetesServiceIP) {
				err = fmt.Errorf("got %v, want %s", addrs, lab.KubernetesServiceIP)
			}
			return err
		})
	}
	return names
}

// pidsInNetns lists the processes whose network namespace is the named one.
func pidsInNetns(t *testing.T, name string) []int {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/var/run/netns", name), &want); err != nil {
		t.Fatalf("stat netns %s: %v", name, err)
	}
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
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			pids = append(pids, pid)
		}
	}
	return pids
}

func checkNode(t *testing.T, nd *corev1.Node, ip netip.Addr) {
	t.Helper()
	if nd.Labels["kubernetes.io/hostname"] != node || nd.Labels["kubernetes.io/os"] != "linux" || nd.Labels["kubernetes.io/arch"] != runtime.GOARCH {
		t.Errorf("node labels %v", nd.Labels)
	}
	addrs := map[corev1.NodeAddressType]string{}
	for _, a := range nd.Status.Addresses {
		addrs[a.Type] = a.Address
	}
	if addrs[corev1.NodeInternalIP] != ip.String() || addrs[corev1.NodeHostName] != node {
		t.Errorf("node addresses %v", nd.Status.Addresses)
	}
	if q := nd.Status.Allocatable[corev1.ResourcePods]; q.Value() != 110 {
		t.Errorf("allocatable pods %v", q.String())
	}
	if !strings.HasPrefix(nd.Status.NodeInfo.KubeletVersion, "v1.") {
		t.Errorf("kubelet version %q", nd.Status.NodeInfo.KubeletVersion)
	}
	for _, c := range nd.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			t.Errorf("agent set NetworkUnavailable (meridiand owns it): %+v", c)
		}
	}
}

func checkRunningPod(t *testing.T, p *corev1.Pod, nodeIP netip.Addr, podCIDR netip.Prefix) {
	t.Helper()
	ip, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil || !podCIDR.Contains(ip) || len(p.Status.PodIPs) != 1 || p.Status.PodIPs[0].IP != p.Status.PodIP {
		t.Errorf("pod IPs %q %v outside %s", p.Status.PodIP, p.Status.PodIPs, podCIDR)
	}
	if p.Status.HostIP != nodeIP.String() || p.Status.StartTime == nil {
		t.Errorf("hostIP %q startTime %v", p.Status.HostIP, p.Status.StartTime)
	}
	for _, ct := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		if c := podCondition(p, ct); c == nil || c.Status != corev1.ConditionTrue {
			t.Errorf("condition %s = %+v", ct, c)
		}
	}
	if len(p.Status.ContainerStatuses) != len(p.Spec.Containers) {
		t.Fatalf("container statuses %+v", p.Status.ContainerStatuses)
	}
	for _, cs := range p.Status.ContainerStatuses {
		if !cs.Ready || cs.State.Running == nil || cs.RestartCount != 0 ||
			cs.ContainerID != "meridian-lab://"+string(p.UID)+"-"+cs.Name || cs.ImageID == "" {
			t.Errorf("container status %+v", cs)
		}
	}
}

// hostLinkTo names the node-side link with the route to ip, with its index,
// so that a recreated veth of the same name is told apart.
func hostLinkTo(t *testing.T, netnsName string, ip netip.Addr) string {
	t.Helper()
	h, err := netns.GetFromName(netnsName)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	routes, err := nl.RouteGet(ip.AsSlice())
	if err != nil || len(routes) == 0 {
		t.Fatalf("route to %s in %s: %v", ip, netnsName, err)
	}
	link, err := nl.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s#%d", link.Attrs().Name, link.Attrs().Index)
}

// writeNodeState stands in for meridiand: the CNI reads the node's pod
// CIDR from here.
func writeNodeState(t *testing.T, stateDir string, podCIDR netip.Prefix) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"nodeName": node, "podCIDRs": []string{podCIDR.String()}})
	p := filepath.Join(stateDir, "node.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// stopAgent ends the lab's agent process (which this test's lab started)
// by its pid.
func stopAgent(t *testing.T, l *lab.Lab) {
	t.Helper()
	procs, err := l.Processes()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if p.Name != "agent-"+node || !p.Alive {
			continue
		}
		if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100 && syscall.Kill(p.PID, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		if syscall.Kill(p.PID, 0) == nil {
			t.Fatalf("agent pid %d still runs 10s after SIGTERM", p.PID)
		}
		return
	}
	t.Fatal("no running agent process found")
}

// startAgent runs a new agent for the node the way the lab does (the
// meridian-lab CLI in the node's netns and its view of the disk) and stops
// it when the test ends.
func startAgent(t *testing.T, l *lab.Lab, n lab.Node) {
	t.Helper()
	argv, err := l.AgentExecArgv(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	logf, err := os.Create(filepath.Join(t.TempDir(), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("restarted agent log:\n%s", b)
		}
		logf.Close()
	})
}
