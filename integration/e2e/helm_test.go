package e2e

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meridian-net/meridian/daemon/routes"
	"github.com/meridian-net/meridian/integration/lab"
)

// The lab installs Meridian the way admins do, with `helm install` of
// charts/meridian; these tests check that what runs on the nodes is what the
// chart says, that its RBAC is enough and that a missing grant is caught,
// and that `helm upgrade` rolls the nodes without dropping their routes.

// meridiandPID is the pid of meridiand on node, from the node agent's record.
func meridiandPID(t *testing.T, l *lab.Lab, node string) int {
	t.Helper()
	procs, err := l.Processes()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if p.Node == node && p.Name == "meridiand-"+node && p.Alive {
			return p.PID
		}
	}
	t.Fatalf("no running meridiand on %s in %+v", node, procs)
	return 0
}

func procStatusField(t *testing.T, pid int, key string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return ""
}

func cmdline(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// TestChartInstallsMeridian checks what `helm install` made: one Ready
// Meridian pod per node in the host network, as `kubectl get pods -n
// kube-system -o wide` shows them; meridiand running with exactly the
// chart's capabilities (NET_ADMIN, NET_BIND_SERVICE), no_new_privs and its
// own mount namespace, as the chart's service account; meridian-cni and the
// conflist installed on every node by the init container.
func TestChartInstallsMeridian(t *testing.T) {
	l := needLab(t)
	c := client(t, l)
	ctx := context.Background()
	pods, err := l.MeridianPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nodes := l.Nodes()
	if len(pods) != len(nodes) {
		t.Fatalf("%d meridian pods for %d nodes", len(pods), len(nodes))
	}
	for i, p := range pods {
		n := nodes[i]
		if p.Spec.NodeName != n.Name || !p.Spec.HostNetwork || p.Status.PodIP != n.IP.String() || !podReady(&p) {
			t.Errorf("pod %s: node %s (want %s), hostNetwork %v, IP %s (want %s), ready %v",
				p.Name, p.Spec.NodeName, n.Name, p.Spec.HostNetwork, p.Status.PodIP, n.IP, podReady(&p))
		}
		if len(p.OwnerReferences) != 1 || p.OwnerReferences[0].Kind != "DaemonSet" || p.OwnerReferences[0].Name != lab.DaemonSetName {
			t.Errorf("pod %s owners %+v, want the DaemonSet %s", p.Name, p.OwnerReferences, lab.DaemonSetName)
		}
	}

	// What the seed tells users to look at first.
	out, err := exec.Command(filepath.Join(labBinDir, "kubectl"), "--kubeconfig", l.Kubeconfig(),
		"get", "pods", "-n", "kube-system", "-o", "wide").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get pods: %v\n%s", err, out)
	}
	t.Logf("kubectl get pods -n kube-system -o wide:\n%s", out)
	for _, n := range nodes {
		found := false
		for _, line := range strings.Split(string(out), "\n") {
			// RESTARTS may read "1 (50s ago)": match the fields after it
			// by value.
			f := strings.Fields(line)
			if len(f) >= 7 && strings.HasPrefix(f[0], "meridian-") && f[1] == "1/1" && f[2] == "Running" &&
				slices.Contains(f, n.IP.String()) && slices.Contains(f, n.Name) {
				found = true
			}
		}
		if !found {
			t.Errorf("kubectl shows no Ready meridian pod on %s", n.Name)
		}
	}

	ds, err := c.AppsV1().DaemonSets(lab.ReleaseNamespace).Get(ctx, lab.DaemonSetName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var conflist string
	if cm, err := c.CoreV1().ConfigMaps(lab.ReleaseNamespace).Get(ctx, "meridian-cni", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else {
		conflist = cm.Data[lab.CNIConfFile]
	}
	wantCNI, err := os.ReadFile(filepath.Join(labBinDir, "meridian-cni"))
	if err != nil {
		t.Fatal(err)
	}
	hostMnt, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		pid := meridiandPID(t, l, n.Name)
		// 0x1400: CAP_NET_ADMIN (12) and CAP_NET_BIND_SERVICE (10).
		for key, want := range map[string]string{"CapBnd": "0000000000001400", "CapEff": "0000000000001400", "CapInh": "0000000000000000", "NoNewPrivs": "1"} {
			if got := procStatusField(t, pid, key); got != want {
				t.Errorf("%s: meridiand %s = %s, want %s", n.Name, key, got, want)
			}
		}
		if mnt, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err != nil || mnt == hostMnt {
			t.Errorf("%s: meridiand mount namespace %q (%v), want its own", n.Name, mnt, err)
		}
		argv := cmdline(t, pid)
		want := append([]string{"/usr/local/bin/meridiand"}, ds.Spec.Template.Spec.Containers[0].Args...)
		if !slices.Equal(argv, want) {
			t.Errorf("%s: meridiand runs %q, the chart says %q", n.Name, argv, want)
		}
		// The container's root is the image, read-only.
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/root/usr/local/bin/probe-write", pid), nil, 0o644); err == nil || !strings.Contains(err.Error(), "read-only") {
			t.Errorf("%s: writing into meridiand's root: %v, want a read-only file system", n.Name, err)
		}
		got, err := os.ReadFile(filepath.Join(l.NodeCNIConfDir(n.Name), lab.CNIConfFile))
		if err != nil || string(got) != conflist {
			t.Errorf("%s: installed conflist %q (%v), want the chart's %q", n.Name, got, err, conflist)
		}
		plugin, err := os.ReadFile(filepath.Join(l.NodeCNIBinDir(n.Name), "meridian-cni"))
		if err != nil || !bytes.Equal(plugin, wantCNI) {
			t.Errorf("%s: installed meridian-cni differs from the image's (%d bytes, %v)", n.Name, len(plugin), err)
		}
	}

	// meridiand speaks to the API server as the chart's service account.
	reqs, err := l.AuditedRequests()
	if err != nil {
		t.Fatal(err)
	}
	verbs := map[string]bool{}
	for _, r := range reqs {
		if r.User == lab.MeridianUser {
			verbs[r.Verb+" "+r.Resource] = true
		}
	}
	for _, want := range []string{"list nodes", "watch services", "list discovery.k8s.io/endpointslices", "patch nodes/status"} {
		if !verbs[want] {
			t.Errorf("the audit log has no %q by %s (it has %d kinds of request)", want, lab.MeridianUser, len(verbs))
		}
	}
	if err := chartRBACRefusals(l); err != nil {
		t.Error(err)
	}
}

// TestChartRBACRefusalIsCaught takes the endpointslices grant out of the
// chart's ClusterRole and restarts meridiand on one node: the API server
// refuses its list, the audit check finds the refusal, and the node's pod
// does not become Ready. With the grant back, it does.
func TestChartRBACRefusalIsCaught(t *testing.T) {
	l := needLab(t)
	c := client(t, l)
	ctx := context.Background()
	node := l.Nodes()[0].Name
	orig, err := c.RbacV1().ClusterRoles().Get(ctx, lab.DaemonSetName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	isOurs := func(r lab.Request) bool {
		return r.User == lab.MeridianUser && r.Resource == "discovery.k8s.io/endpointslices" && !r.Time.Before(since)
	}
	expectedRefusals.Lock()
	expectedRefusals.match = append(expectedRefusals.match, isOurs)
	expectedRefusals.Unlock()

	cut := orig.DeepCopy()
	cut.Rules = slices.DeleteFunc(cut.Rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, "endpointslices") })
	if len(cut.Rules) == len(orig.Rules) {
		t.Fatalf("the chart's ClusterRole has no endpointslices rule: %+v", orig.Rules)
	}
	restored := false
	restore := func() {
		cur, err := c.RbacV1().ClusterRoles().Get(ctx, lab.DaemonSetName, metav1.GetOptions{})
		if err != nil {
			t.Errorf("restore ClusterRole: %v", err)
			return
		}
		cur.Rules = orig.Rules
		if _, err := c.RbacV1().ClusterRoles().Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Errorf("restore ClusterRole: %v", err)
		}
		restored = true
	}
	t.Cleanup(func() {
		if !restored {
			restore()
		}
		if err := l.WaitMeridianReady(context.Background()); err != nil {
			t.Errorf("meridian after the test: %v", err)
		}
	})
	if _, err := c.RbacV1().ClusterRoles().Update(ctx, cut, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// RBAC changes reach the authorizer through its informer: give it a
	// moment before meridiand starts listing.
	time.Sleep(2 * time.Second)
	if err := l.StopDaemon(node, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := l.StartDaemon(node); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the API server refuses meridiand's endpointslices list", func() error {
		reqs, err := l.ForbiddenRequests(lab.MeridianUser)
		if err != nil {
			return err
		}
		if slices.ContainsFunc(reqs, isOurs) {
			return nil
		}
		return fmt.Errorf("no refused endpointslices request yet (%d refusals)", len(reqs))
	})
	// Without endpointslices the Service NAT never programs, so /readyz
	// keeps the pod out of Ready: the refusal is visible to kubectl too.
	time.Sleep(10 * time.Second)
	pods, err := l.MeridianPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if p.Spec.NodeName == node && podReady(&p) {
			t.Errorf("pod %s on %s is Ready while meridiand cannot list endpointslices", p.Name, node)
		}
	}
	restore()
	if err := l.WaitMeridianReady(ctx); err != nil {
		t.Fatalf("meridian with the grant back: %v", err)
	}
}

// TestHelmUpgradeKeepsRoutes changes a setting with `helm upgrade` (the
// log level, which changes meridiand's args and so rolls every pod) and
// back again, while watching every node's kernel for Meridian's routes
// going away and sending requests between pods on different nodes: a
// rolling upgrade must drop neither.
func TestHelmUpgradeKeepsRoutes(t *testing.T) {
	l := needLab(t)
	ctx := context.Background()
	nodes := l.Nodes()
	src, dstAddr := crossNodePods(t, l, "upgrade")
	if _, err := httpGet(src, dstAddr); err != nil {
		t.Fatalf("pod to pod before the upgrade: %v", err)
	}

	var deleted sync.Map // node -> []string
	stopWatch := watchRouteDeletions(t, nodes, func(node string, r netlink.Route) {
		prev, _ := deleted.LoadOrStore(node, []string{})
		deleted.Store(node, append(prev.([]string), r.String()))
	})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			sent.Add(1)
			if _, err := httpGet(src, dstAddr); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
		}
	})
	stopped := false
	finish := func() {
		if !stopped {
			close(stop)
			wg.Wait()
			stopWatch()
			stopped = true
		}
	}
	t.Cleanup(finish)

	before := podUIDs(t, l)
	t0 := time.Now()
	if err := l.HelmUpgrade(ctx, "logLevel=debug"); err != nil {
		t.Fatalf("helm upgrade: %v", err)
	}
	t.Logf("upgrade rolled %d nodes in %s", len(nodes), time.Since(t0).Round(time.Millisecond))
	after := podUIDs(t, l)
	for node, uid := range before {
		if after[node] == uid {
			t.Errorf("%s: pod %s not replaced by the upgrade", node, uid)
		}
	}
	for _, n := range nodes {
		if argv := cmdline(t, meridiandPID(t, l, n.Name)); !slices.Contains(argv, "--log-level=debug") {
			t.Errorf("%s: meridiand runs %q after the upgrade, want --log-level=debug", n.Name, argv)
		}
	}
	t0 = time.Now()
	if err := l.HelmUpgrade(ctx); err != nil {
		t.Fatalf("helm upgrade back: %v", err)
	}
	t.Logf("upgrade back rolled %d nodes in %s", len(nodes), time.Since(t0).Round(time.Millisecond))
	finish()

	deleted.Range(func(k, v any) bool {
		t.Errorf("%s: Meridian routes deleted during the upgrades: %v", k, v)
		return true
	})
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d pod-to-pod requests failed during the upgrades; first: %v", n, sent.Load(), firstErr.Load())
	}
	t.Logf("%d pod-to-pod requests during the upgrades, %d failed", sent.Load(), failed.Load())
	if sent.Load() < 20 {
		t.Errorf("only %d requests were sent during the upgrades", sent.Load())
	}
}

func podUIDs(t *testing.T, l *lab.Lab) map[string]types.UID {
	t.Helper()
	pods, err := l.MeridianPods(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]types.UID{}
	for _, p := range pods {
		out[p.Spec.NodeName] = p.UID
	}
	return out
}

// TestHelmUninstallLeavesNodesWorking uninstalls the release and checks
// what docs/install.md promises: the pods and meridiand go, while every
// node keeps its routes, its nftables table, meridian-cni and the conflist,
// so running pods keep talking; installing again adopts all of it without
// removing a route.
func TestHelmUninstallLeavesNodesWorking(t *testing.T) {
	l := needLab(t)
	c := client(t, l)
	ctx := context.Background()
	nodes := l.Nodes()
	src, dstAddr := crossNodePods(t, l, "uninstall")
	before := map[string]map[netip.Prefix][]netip.Addr{}
	for _, n := range nodes {
		before[n.Name] = meridianRoutes(t, n)
	}
	reinstalled := false
	t.Cleanup(func() {
		if !reinstalled {
			if err := l.InstallMeridian(context.Background()); err != nil {
				t.Errorf("install again: %v", err)
			}
		}
	})
	if err := l.UninstallMeridian(ctx); err != nil {
		t.Fatalf("helm uninstall: %v", err)
	}
	if _, err := c.AppsV1().DaemonSets(lab.ReleaseNamespace).Get(ctx, lab.DaemonSetName, metav1.GetOptions{}); err == nil {
		t.Errorf("the DaemonSet outlives helm uninstall")
	}
	eventually(t, 60*time.Second, "meridian pods and meridiand gone", func() error {
		pods, err := l.MeridianPods(ctx)
		if err != nil {
			return err
		}
		if len(pods) > 0 {
			return fmt.Errorf("%d meridian pods left", len(pods))
		}
		procs, err := l.Processes()
		if err != nil {
			return err
		}
		for _, p := range procs {
			if strings.HasPrefix(p.Name, "meridiand-") && p.Alive {
				return fmt.Errorf("%s still runs (pid %d)", p.Name, p.PID)
			}
		}
		return nil
	})
	for _, n := range nodes {
		if got := meridianRoutes(t, n); !maps.EqualFunc(got, before[n.Name], slices.Equal) {
			t.Errorf("%s: routes %v after uninstall, want them left as %v", n.Name, got, before[n.Name])
		}
		if out, err := l.ExecNode(ctx, n.Name, "nft", "list", "table", "inet", "meridian"); err != nil {
			t.Errorf("%s: table inet meridian gone after uninstall: %v\n%s", n.Name, err, out)
		}
		for _, f := range []string{filepath.Join(l.NodeCNIConfDir(n.Name), lab.CNIConfFile), filepath.Join(l.NodeCNIBinDir(n.Name), "meridian-cni")} {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("%s: %v after uninstall, want it left", n.Name, err)
			}
		}
	}
	if _, err := httpGet(src, dstAddr); err != nil {
		t.Errorf("pod to pod across nodes without meridiand: %v", err)
	}

	// Install again: the new meridiand adopts what the old one left.
	var deleted atomic.Int64
	stop := watchRouteDeletions(t, nodes, func(string, netlink.Route) { deleted.Add(1) })
	reinstalled = true
	if err := l.InstallMeridian(ctx); err != nil {
		stop()
		t.Fatalf("install again: %v", err)
	}
	stop()
	if n := deleted.Load(); n > 0 {
		t.Errorf("installing again deleted %d Meridian routes", n)
	}
	if _, err := httpGet(src, dstAddr); err != nil {
		t.Errorf("pod to pod after installing again: %v", err)
	}
}

// watchRouteDeletions calls deleted for every route of Meridian's protocol
// a node's kernel deletes, until the returned stop is called.
func watchRouteDeletions(t *testing.T, nodes []lab.Node, deleted func(node string, r netlink.Route)) (stop func()) {
	t.Helper()
	quit := make(chan struct{})
	var wg sync.WaitGroup
	for _, n := range nodes {
		ns, err := netns.GetFromName(n.Netns)
		if err != nil {
			t.Fatal(err)
		}
		updates := make(chan netlink.RouteUpdate, 256)
		done := make(chan struct{})
		err = netlink.RouteSubscribeWithOptions(updates, done, netlink.RouteSubscribeOptions{Namespace: &ns})
		ns.Close()
		if err != nil {
			close(quit)
			wg.Wait()
			t.Fatal(err)
		}
		wg.Go(func() {
			defer close(done)
			for {
				select {
				case <-quit:
					return
				case u := <-updates:
					if u.Type == syscall.RTM_DELROUTE && u.Protocol == routes.Protocol {
						deleted(n.Name, u.Route)
					}
				}
			}
		})
	}
	var once sync.Once
	stop = func() { once.Do(func() { close(quit); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// crossNodePods runs a pod on each of the first two nodes and returns the
// first and the address of the second's HTTP stand-in.
func crossNodePods(t *testing.T, l *lab.Lab, prefix string) (*corev1.Pod, string) {
	t.Helper()
	nodes := l.Nodes()
	if len(nodes) < 2 {
		t.Skip("needs two nodes")
	}
	c := client(t, l)
	src := runPod(t, c, prefix+"-src", nodes[0].Name)
	dst := runPod(t, c, prefix+"-dst", nodes[1].Name)
	return src, fmt.Sprintf("%s:%d", dst.Status.PodIP, tcpPort)
}
