package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestDNSObjects(t *testing.T) {
	sa, role, binding, cm, dep, svc := dnsObjects()
	if svc.Spec.ClusterIP != "10.96.0.10" || !ServiceCIDR.Contains(DNSServiceIP) {
		t.Errorf("kube-dns ClusterIP %s", svc.Spec.ClusterIP)
	}
	var ports []string
	for _, p := range svc.Spec.Ports {
		ports = append(ports, fmt.Sprintf("%d/%s", p.Port, p.Protocol))
	}
	if strings.Join(ports, " ") != "53/UDP 53/TCP 9153/TCP" {
		t.Errorf("kube-dns ports %v", ports)
	}
	pod := dep.Spec.Template.Spec
	if pod.ServiceAccountName != sa.Name || binding.Subjects[0].Name != sa.Name || binding.RoleRef.Name != role.Name ||
		pod.Volumes[0].ConfigMap.Name != cm.Name || *dep.Spec.Replicas != 2 {
		t.Errorf("coredns objects do not refer to each other: %+v %+v %+v", pod, binding, dep.Spec.Replicas)
	}
	// The agent must take the container for CoreDNS: its rule is the
	// image's repository name.
	if img := pod.Containers[0].Image; !strings.Contains(img, "/coredns:") {
		t.Errorf("coredns image %q", img)
	}
	c := cm.Data["Corefile"]
	for _, want := range []string{"kubernetes cluster.local in-addr.arpa ip6.arpa", "ready :8181", "health :8080", "pods insecure"} {
		if !strings.Contains(c, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, c)
		}
	}
	if strings.Contains(c, "forward") {
		t.Errorf("Corefile forwards out of the lab:\n%s", c)
	}
}

// lookupVia resolves name with a real DNS query sent to server:53 from
// inside the named netns (the socket is made there, so the query takes the
// pod's routes).
func lookupVia(ctx context.Context, netnsName string, server netip.Addr, name string) ([]netip.Addr, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var c net.Conn
		err := ns.WithNetNSPath(netnsPath(netnsName), func(ns.NetNS) error {
			var err error
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, netip.AddrPortFrom(server, 53).String())
			return err
		})
		return c, err
	}}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return r.LookupNetIP(ctx, "ip4", name)
}

// coreDNSPID is the process running in the pod's netns: the agent runs
// CoreDNS there and nothing else.
func coreDNSPID(t *testing.T, netnsName string) procInfo {
	t.Helper()
	id, err := statNS(netnsPath(netnsName))
	if err != nil {
		t.Fatal(err)
	}
	procs, err := procsInNetns(map[nsID]string{id: netnsName})
	if err != nil {
		t.Fatal(err)
	}
	if len(procs) != 1 {
		t.Fatalf("processes in coredns pod netns %s: %+v, want one", netnsName, procs)
	}
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", procs[0].PID))
	if filepath.Base(exe) != "coredns" {
		t.Fatalf("process %d in %s runs %s, not coredns", procs[0].PID, netnsName, exe)
	}
	return procs[0]
}

// TestLabDNS brings up a lab with meridiand and checks the cluster DNS:
// CoreDNS pods answer for Services with real queries from another pod,
// every pod gets the cluster resolv.conf, a killed CoreDNS comes back, and
// a deleted pod's resolv.conf goes. Through the kube-dns Service address it
// needs Service NAT in meridiand, and skips that part until the nodes have
// it.
func TestLabDNS(t *testing.T) {
	requireRoot(t)
	kube := controlPlaneBinDir(t)
	if !isExecutable(filepath.Join(kube, "coredns")) {
		msg := "no coredns in " + kube + " (hack/build-tools.sh builds it)"
		if os.Getenv("MERIDIAN_REQUIRE_LAB") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	labBin := labBinary(t)
	binDir := daemonBinDir(t, kube)
	stateDir := filepath.Join(t.TempDir(), "lab")
	lockHost(t, stateDir)
	ctx := context.Background()

	l, err := Up(ctx, Options{Nodes: 2, BinDir: binDir, StateDir: stateDir, LabBin: labBin, Log: testLogger(t)})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	agentLogs := func() string {
		var b strings.Builder
		for _, n := range l.Nodes() {
			p := l.LogPath(agentProc(n.Name))
			fmt.Fprintf(&b, "%s:\n%s\n", p, tailFile(p, 3000))
		}
		return b.String()
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := l.WaitNodesReady(wctx); err != nil {
		t.Fatalf("WaitNodesReady: %v", err)
	}
	t0 := time.Now()
	if err := l.WaitDNSReady(wctx); err != nil {
		t.Fatalf("WaitDNSReady: %v\n%s", err, agentLogs())
	}
	t.Logf("coredns ready %s after nodes", time.Since(t0).Round(time.Millisecond))

	cs, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	web := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: metav1.NamespaceDefault},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(80)}},
		},
	}
	web, err = cs.CoreV1().Services(web.Namespace).Create(ctx, web, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	for name, labels := range map[string]map[string]string{"web": {"app": "web"}, "client": nil} {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceDefault, Labels: labels},
			Spec:       corev1.PodSpec{NodeName: "node-2", Containers: []corev1.Container{{Name: name, Image: "nginx"}}},
		}
		if _, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod %s: %v", name, err)
		}
	}
	var clientNS string
	waitFor(t, ctx, time.Minute, "client pod running", func() error {
		p, err := cs.CoreV1().Pods(metav1.NamespaceDefault).Get(ctx, "client", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		clientNS, err = l.PodNetns(ctx, p.Namespace, p.Name)
		return err
	})

	// The client's resolv.conf, as `ip netns exec` shows it to commands.
	resolv := filepath.Join(etcNetnsDir, clientNS, "resolv.conf")
	b, err := os.ReadFile(resolv)
	want := "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if err != nil || string(b) != want {
		t.Errorf("%s: %q, %v; want %q", resolv, b, err, want)
	}
	out, err := l.ExecPod(ctx, metav1.NamespaceDefault, "client", "cat", "/etc/resolv.conf")
	if err != nil || string(out) != want {
		t.Errorf("/etc/resolv.conf inside the pod: %q, %v", out, err)
	}

	dnsPods, err := cs.CoreV1().Pods(DNSNamespace).List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=" + DNSLabel})
	if err != nil || len(dnsPods.Items) != dnsReplicas {
		t.Fatalf("coredns pods: %v, %v", dnsPods, err)
	}
	wantWeb := netip.MustParseAddr(web.Spec.ClusterIP)
	check := func(server netip.Addr) {
		t.Helper()
		for name, want := range map[string]netip.Addr{
			"kubernetes.default.svc.cluster.local.": KubernetesServiceIP,
			"web.default.svc.cluster.local.":        wantWeb,
		} {
			var got []netip.Addr
			waitFor(t, ctx, 30*time.Second, "resolve "+name+" via "+server.String(), func() error {
				var err error
				got, err = lookupVia(ctx, clientNS, server, name)
				return err
			})
			if !slices.Equal(got, []netip.Addr{want}) {
				t.Errorf("%s via %s = %v, want %s", name, server, got, want)
			}
		}
		if got, err := lookupVia(ctx, clientNS, server, "absent.default.svc.cluster.local."); err == nil {
			t.Errorf("absent service resolved via %s: %v", server, got)
		} else if dnsErr := new(net.DNSError); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
			t.Errorf("absent service via %s: %v, want NXDOMAIN", server, err)
		}
	}
	for _, p := range dnsPods.Items {
		check(netip.MustParseAddr(p.Status.PodIP))
	}

	// A killed CoreDNS is started again by its node's agent, and the pod
	// becomes Ready again.
	victim := dnsPods.Items[0]
	victimNS, err := l.PodNetns(ctx, victim.Namespace, victim.Name)
	if err != nil {
		t.Fatal(err)
	}
	old := coreDNSPID(t, victimNS)
	if err := unix.Kill(old.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, time.Minute, "coredns restarted and ready", func() error {
		id, err := statNS(netnsPath(victimNS))
		if err != nil {
			return err
		}
		procs, err := procsInNetns(map[nsID]string{id: victimNS})
		if err != nil || len(procs) != 1 || procs[0].PID == old.PID {
			return fmt.Errorf("processes %+v, %v", procs, err)
		}
		p, err := cs.CoreV1().Pods(victim.Namespace).Get(ctx, victim.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return errors.New("pod not ready")
	})
	check(netip.MustParseAddr(victim.Status.PodIP))

	t.Run("through the kube-dns Service", func(t *testing.T) {
		// Service NAT is meridiand's; until it programs Services in its
		// table, 10.96.0.10 leads nowhere.
		out, err := l.ExecNode(ctx, "node-2", "nft", "list", "table", "inet", "meridian")
		if err != nil || !strings.Contains(string(out), "services") {
			t.Skipf("node-2 has no Service NAT yet (nft list table inet meridian: %v); un-skip when meridiand programs Services", err)
		}
		check(DNSServiceIP)
		for _, name := range []string{"web", "web.default", "web.default.svc.cluster.local"} {
			out, err := l.ExecPod(ctx, metav1.NamespaceDefault, "client", "getent", "hosts", name)
			if err != nil || !strings.HasPrefix(string(out), wantWeb.String()+" ") {
				t.Errorf("getent hosts %s in client: %q, %v; want %s", name, out, err, wantWeb)
			}
		}
		// The seed's check, by name.
		out, err = l.ExecPod(ctx, metav1.NamespaceDefault, "client", "wget", "-qO-", "-T", "5", "http://web")
		if err != nil || !strings.Contains(string(out), "web") {
			t.Errorf("wget http://web from client: %q, %v", out, err)
		}
	})

	// A deleted pod's resolv.conf goes with its netns.
	if err := cs.CoreV1().Pods(metav1.NamespaceDefault).Delete(ctx, "client", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, time.Minute, "client netns and resolv.conf removed", func() error {
		if netnsExists(clientNS) {
			return errors.New("netns remains")
		}
		if _, err := os.Stat(filepath.Join(etcNetnsDir, clientNS)); err == nil {
			return errors.New(filepath.Join(etcNetnsDir, clientNS) + " remains")
		}
		return nil
	})

	if err := Down(ctx, stateDir); err != nil {
		t.Fatalf("Down: %v", err)
	}
	assertNothingLeft(t, stateDir, nil)
}

func waitFor(t *testing.T, ctx context.Context, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := fn()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
