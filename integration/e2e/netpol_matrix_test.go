package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/meridian-net/meridian/daemon/nft/kernel"
	"github.com/meridian-net/meridian/integration/lab"
	"github.com/meridian-net/meridian/policy/policynft"
)

// The probe matrix of the upstream network policy e2e tests
// (kubernetes/test/e2e/network/netpol), reimplemented for the lab: three
// namespaces x, y, z with three pods a, b, c each, every pod serving TCP and
// UDP on 80 and 81 under named container ports. A scenario states, per
// port and protocol, which of the 81 (from, to) pairs must connect; the
// matrix is probed from inside the client pods' network namespaces and
// compared with that truth table until they agree or a deadline passes,
// since policy is programmed asynchronously.

var (
	npNamespaces = []string{"x", "y", "z"}
	npPodNames   = []string{"a", "b", "c"}
)

// npNSPrefix keeps the test's namespaces apart from other tests'.
const npNSPrefix = "netpol-"

func npNS(short string) string { return npNSPrefix + short }

// npPod is one pod of the matrix.
type npPod struct {
	NS, Name string // short names: "x", "a"
	Pod      *corev1.Pod
}

func (p *npPod) String() string { return p.NS + "/" + p.Name }

// Key is the pod's namespace/name as the API and the policy counters spell
// it.
func (p *npPod) Key() string { return npNS(p.NS) + "/" + p.Name }

func (p *npPod) IP() string { return p.Pod.Status.PodIP }

// npPort is one probed port and protocol.
type npPort struct {
	Proto corev1.Protocol
	Port  int
}

func (p npPort) String() string { return fmt.Sprintf("%s/%d", p.Proto, p.Port) }

var (
	tcp80 = npPort{corev1.ProtocolTCP, 80}
	tcp81 = npPort{corev1.ProtocolTCP, 81}
	udp80 = npPort{corev1.ProtocolUDP, 80}
	udp81 = npPort{corev1.ProtocolUDP, 81}
)

// npCluster is the shared set of pods and what the tests need to reach
// them.
type npCluster struct {
	lab   *lab.Lab
	c     kubernetes.Interface
	pods  []*npPod // x/a x/b x/c y/a … z/c
	nodes map[string]lab.Node
}

func (cl *npCluster) pod(s string) *npPod {
	for _, p := range cl.pods {
		if p.String() == s {
			return p
		}
	}
	panic("no pod " + s)
}

// npPodSpec is a pod serving the four ports upstream's agnhost pods serve,
// under upstream's port names.
func npPodSpec(ns, name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: npNS(ns), Name: name,
			Labels: map[string]string{"pod": name},
		},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name:  "cont-80-81",
				Image: "registry.k8s.io/e2e-test-images/agnhost:2.53",
				Ports: []corev1.ContainerPort{
					{Name: "serve-80-tcp", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
					{Name: "serve-81-tcp", ContainerPort: 81, Protocol: corev1.ProtocolTCP},
					{Name: "serve-80-udp", ContainerPort: 80, Protocol: corev1.ProtocolUDP},
					{Name: "serve-81-udp", ContainerPort: 81, Protocol: corev1.ProtocolUDP},
				},
			}},
		},
	}
}

// setupNetpolCluster creates the three namespaces (labelled ns=<short>) and
// nine pods, pod j of namespace i on node (i+j) mod 3, so every namespace
// has one pod on each node and each node holds an a, a b and a c.
func setupNetpolCluster(t *testing.T, l *lab.Lab) *npCluster {
	t.Helper()
	c := client(t, l)
	ctx := context.Background()
	nodes := l.Nodes()
	cl := &npCluster{lab: l, c: c, nodes: map[string]lab.Node{}}
	for _, n := range nodes {
		cl.nodes[n.Name] = n
	}
	for _, ns := range npNamespaces {
		obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: npNS(ns), Labels: map[string]string{"ns": ns}}}
		if _, err := c.CoreV1().Namespaces().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create namespace %s: %v", obj.Name, err)
		}
		t.Cleanup(func() { deleteNamespaceAndWait(t, c, obj.Name) })
	}
	for i, ns := range npNamespaces {
		for j, name := range npPodNames {
			node := nodes[(i+j)%len(nodes)].Name
			if _, err := c.CoreV1().Pods(npNS(ns)).Create(ctx, npPodSpec(ns, name, node), metav1.CreateOptions{}); err != nil {
				t.Fatalf("create pod %s/%s: %v", ns, name, err)
			}
			cl.pods = append(cl.pods, &npPod{NS: ns, Name: name})
		}
	}
	for _, p := range cl.pods {
		eventually(t, 120*time.Second, "pod "+p.String()+" ready", func() error {
			got, err := c.CoreV1().Pods(npNS(p.NS)).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if got.Status.PodIP == "" || !podReady(got) {
				return fmt.Errorf("phase %s, IP %q", got.Status.Phase, got.Status.PodIP)
			}
			p.Pod = got
			return nil
		})
	}
	return cl
}

// deleteNamespaceAndWait deletes a namespace and waits for it to be gone,
// so its pods are torn down before the lab goes down.
func deleteNamespaceAndWait(t *testing.T, c kubernetes.Interface, name string) {
	ctx := context.Background()
	if err := c.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete namespace %s: %v", name, err)
		return
	}
	eventually(t, 120*time.Second, "namespace "+name+" gone", func() error {
		_, err := c.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (err %v)", err)
	})
}

// npTruth is a truth table over the matrix's pods: [from][to].
type npTruth [][]bool

func (cl *npCluster) truth(allow func(from, to *npPod) bool) npTruth {
	tt := make(npTruth, len(cl.pods))
	for i, from := range cl.pods {
		tt[i] = make([]bool, len(cl.pods))
		for j, to := range cl.pods {
			// A pod's traffic to its own IP never leaves its network
			// namespace, so no policy can stop it (upstream's
			// AllowLoopback).
			tt[i][j] = i == j || allow(from, to)
		}
	}
	return tt
}

func allowAll(from, to *npPod) bool { return true }

func (tt npTruth) equal(o npTruth) bool {
	for i := range tt {
		for j := range tt[i] {
			if tt[i][j] != o[i][j] {
				return false
			}
		}
	}
	return true
}

// render prints a table the way upstream's TruthTable.PrettyPrint does:
// rows are clients, columns servers; cell(i, j) gives the character.
func (cl *npCluster) render(cell func(i, j int) string) string {
	var b strings.Builder
	b.WriteString("-\t")
	for _, p := range cl.pods {
		b.WriteString(p.String() + "\t")
	}
	b.WriteString("\n")
	for i, from := range cl.pods {
		b.WriteString(from.String() + "\t")
		for j := range cl.pods {
			b.WriteString(cell(i, j) + "\t")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func mark(ok bool) string {
	if ok {
		return "."
	}
	return "X"
}

// report shows expected, observed and their comparison (X where they
// differ), rows are clients and columns servers.
func (cl *npCluster) report(port npPort, want, got npTruth) string {
	return fmt.Sprintf("%s: expected (. connects, X blocked):\n%s\nobserved:\n%s\ncomparison (X differs):\n%s",
		port,
		cl.render(func(i, j int) string { return mark(want[i][j]) }),
		cl.render(func(i, j int) string { return mark(got[i][j]) }),
		cl.render(func(i, j int) string { return mark(want[i][j] == got[i][j]) }))
}

// probeParallelism bounds the probes in flight: each holds an OS thread
// switched into its client pod's namespace for up to the probe timeout.
const probeParallelism = 27

// probeMatrix probes every (from, to) pair on port once.
func (cl *npCluster) probeMatrix(port npPort) npTruth {
	got := make(npTruth, len(cl.pods))
	for i := range got {
		got[i] = make([]bool, len(cl.pods))
	}
	sem := make(chan struct{}, probeParallelism)
	var wg sync.WaitGroup
	for i, from := range cl.pods {
		for j, to := range cl.pods {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				got[i][j] = probe(from, to, port) == nil
			})
		}
	}
	wg.Wait()
	return got
}

// Probe timeouts. A connection between two pods of the lab completes in
// well under a millisecond; a blocked one is dropped, so a probe only ends
// by its timeout. A slow answer that misses it only costs one more round of
// the matrix.
const (
	tcpProbeTimeout = 1500 * time.Millisecond
	udpProbeTimeout = 400 * time.Millisecond
	udpProbeTries   = 3
)

// probe connects from one pod to another's IP and checks the stand-in's
// echo: a TCP connection that carries bytes both ways, or a UDP datagram
// answered (tried a few times, so one lost datagram is not a block).
func probe(from, to *npPod, port npPort) error {
	return probeAddr(from, to.IP(), port)
}

// probeAddr is probe to any address: a pod's, or a Service's.
func probeAddr(from *npPod, ip string, port npPort) error {
	addr := net.JoinHostPort(ip, strconv.Itoa(port.Port))
	msg := fmt.Sprintf("probe %s -> %s %s", from, ip, port)
	return inNetns(podNetns(from.Pod), func() error {
		if port.Proto == corev1.ProtocolUDP {
			return udpProbe(addr, msg)
		}
		conn, err := net.DialTimeout("tcp", addr, tcpProbeTimeout)
		if err != nil {
			return err
		}
		defer conn.Close()
		return echoRoundTrip(conn, msg, 2*tcpProbeTimeout)
	})
}

func udpProbe(addr, msg string) error {
	conn, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	buf := make([]byte, 512)
	for range udpProbeTries {
		_ = conn.SetDeadline(time.Now().Add(udpProbeTimeout))
		if _, err := conn.Write([]byte(msg)); err != nil {
			// ECONNREFUSED from an earlier ICMP error: try again.
			continue
		}
		n, err := conn.Read(buf)
		if err == nil && string(buf[:n]) == msg {
			return nil
		}
	}
	return fmt.Errorf("no UDP echo from %s", addr)
}

// echoRoundTrip sends one line (not an HTTP request line, so the stand-in
// echoes it) and reads it back.
func echoRoundTrip(conn net.Conn, msg string, timeout time.Duration) error {
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(conn, "%s\n", msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg)+1)
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	if got := strings.TrimSuffix(string(buf), "\n"); got != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// matrixTimeout bounds how long a scenario waits for the dataplane to
// enforce what it asked for.
const matrixTimeout = 60 * time.Second

// expectMatrix probes port until the observed table equals the expected
// one, failing the test with both tables when the deadline passes first.
func (cl *npCluster) expectMatrix(t *testing.T, port npPort, allow func(from, to *npPod) bool) {
	t.Helper()
	want := cl.truth(allow)
	deadline := time.Now().Add(matrixTimeout)
	start := time.Now()
	for round := 1; ; round++ {
		got := cl.probeMatrix(port)
		if want.equal(got) {
			t.Logf("%s: all %d probes as expected (round %d, %s)", port, len(want)*len(want), round, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: probes still differ from the truth table after %d rounds (%s)\n%s", port, round, matrixTimeout, cl.report(port, want, got))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// expectFromAll probes ip on port from every pod of the matrix until the
// outcomes equal allow(from), like expectMatrix for one destination that is
// not a pod (a Service's ClusterIP).
func (cl *npCluster) expectFromAll(t *testing.T, ip string, port npPort, allow func(from *npPod) bool) {
	t.Helper()
	deadline := time.Now().Add(matrixTimeout)
	for round := 1; ; round++ {
		got := make([]bool, len(cl.pods))
		var wg sync.WaitGroup
		for i, from := range cl.pods {
			wg.Go(func() { got[i] = probeAddr(from, ip, port) == nil })
		}
		wg.Wait()
		var diff []string
		for i, from := range cl.pods {
			if want := allow(from); got[i] != want {
				diff = append(diff, fmt.Sprintf("%s: expected %s observed %s", from, mark(want), mark(got[i])))
			}
		}
		if len(diff) == 0 {
			t.Logf("%s %s: all %d probes as expected (round %d)", ip, port, len(got), round)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s: probes still differ after %d rounds (%s) (. connects, X blocked):\n%s", ip, port, round, matrixTimeout, strings.Join(diff, "\n"))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Policy construction, after upstream's helpers.

func npPolicy(ns, name string, target map[string]string, types []networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: npNS(ns), Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: target},
			PolicyTypes: types,
		},
	}
}

var (
	ingressOnly = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egressOnly  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
)

func podLabel(name string) map[string]string { return map[string]string{"pod": name} }
func nsLabel(short string) map[string]string { return map[string]string{"ns": short} }

func selector(labels map[string]string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: labels}
}

func npTCP(port int) networkingv1.NetworkPolicyPort {
	p := corev1.ProtocolTCP
	v := intstr.FromInt32(int32(port))
	return networkingv1.NetworkPolicyPort{Protocol: &p, Port: &v}
}

// applyPolicies creates the policies; the scenario's cleanup removes them.
func (cl *npCluster) applyPolicies(t *testing.T, pols ...*networkingv1.NetworkPolicy) {
	t.Helper()
	for _, p := range pols {
		if _, err := cl.c.NetworkingV1().NetworkPolicies(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create policy %s/%s: %v", p.Namespace, p.Name, err)
		}
	}
}

func (cl *npCluster) deletePolicy(t *testing.T, ns, name string) {
	t.Helper()
	if err := cl.c.NetworkingV1().NetworkPolicies(npNS(ns)).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete policy %s/%s: %v", ns, name, err)
	}
}

// deleteAllPolicies removes every policy of the three namespaces.
func (cl *npCluster) deleteAllPolicies(t *testing.T) {
	t.Helper()
	for _, ns := range npNamespaces {
		err := cl.c.NetworkingV1().NetworkPolicies(npNS(ns)).DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{})
		if err != nil {
			t.Errorf("delete policies of %s: %v", ns, err)
		}
	}
}

// scenario runs one scenario as a subtest and leaves the cluster as it
// found it: no policies, every pod's original labels, and every pair
// connecting again.
func (cl *npCluster) scenario(t *testing.T, name string, f func(t *testing.T)) {
	t.Run(name, func(t *testing.T) {
		t.Cleanup(func() {
			cl.deleteAllPolicies(t)
			for _, p := range cl.pods {
				cl.setPodLabels(t, p, podLabel(p.Name))
			}
			for _, ns := range npNamespaces {
				cl.setNamespaceLabels(t, ns, nsLabel(ns))
			}
			cl.expectMatrix(t, tcp80, allowAll)
		})
		f(t)
	})
}

// setPodLabels replaces the pod's labels.
func (cl *npCluster) setPodLabels(t *testing.T, p *npPod, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	cur, err := cl.c.CoreV1().Pods(npNS(p.NS)).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod %s: %v", p, err)
	}
	patch := labelPatch(cur.Labels, labels)
	if patch == "" {
		return
	}
	if _, err := cl.c.CoreV1().Pods(npNS(p.NS)).Patch(ctx, p.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("relabel pod %s: %v", p, err)
	}
}

func (cl *npCluster) setNamespaceLabels(t *testing.T, short string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	cur, err := cl.c.CoreV1().Namespaces().Get(ctx, npNS(short), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get namespace %s: %v", short, err)
	}
	// The API server keeps kubernetes.io/metadata.name itself.
	want := map[string]string{corev1.LabelMetadataName: npNS(short)}
	for k, v := range labels {
		want[k] = v
	}
	patch := labelPatch(cur.Labels, want)
	if patch == "" {
		return
	}
	if _, err := cl.c.CoreV1().Namespaces().Patch(ctx, npNS(short), types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("relabel namespace %s: %v", short, err)
	}
}

// labelPatch is a JSON merge patch turning labels have into want, or "" if
// they are equal.
func labelPatch(have, want map[string]string) string {
	var parts []string
	for k, v := range want {
		if have[k] != v {
			parts = append(parts, fmt.Sprintf("%q:%q", k, v))
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			parts = append(parts, fmt.Sprintf("%q:null", k))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return `{"metadata":{"labels":{` + strings.Join(parts, ",") + `}}}`
}

// nodeDrops reads the policy counters of table inet meridian in the pod's
// node's network namespace.
func (cl *npCluster) nodeDrops(t *testing.T, p *npPod) []policynft.DropCount {
	t.Helper()
	node, ok := cl.nodes[p.Pod.Spec.NodeName]
	if !ok {
		t.Fatalf("pod %s on unknown node %q", p, p.Pod.Spec.NodeName)
	}
	f, err := os.Open("/var/run/netns/" + node.Netns)
	if err != nil {
		t.Fatalf("open netns of %s: %v", node.Name, err)
	}
	defer f.Close()
	counters, err := kernel.New(int(f.Fd()), slog.New(slog.DiscardHandler)).Counters()
	if err != nil {
		t.Fatalf("read counters on %s: %v", node.Name, err)
	}
	return policynft.Drops(counters)
}

func findDrop(ds []policynft.DropCount, podKey, dir string) (policynft.DropCount, bool) {
	for _, d := range ds {
		if d.Pod == podKey && d.Direction == dir {
			return d, true
		}
	}
	return policynft.DropCount{}, false
}

// expectDropCounted probes from -> to on port, which must be blocked, and
// checks that the node enforcing dir (the destination's for ingress, the
// source's for egress) counted the drop in the chain of the right pod,
// attributed to exactly the policies given.
func (cl *npCluster) expectDropCounted(t *testing.T, from, to *npPod, port npPort, dir string, policies ...string) {
	t.Helper()
	owner := to
	if dir == policynft.Egress {
		owner = from
	}
	before, _ := findDrop(cl.nodeDrops(t, owner), owner.Key(), dir)
	if err := probe(from, to, port); err == nil {
		t.Fatalf("probe %s -> %s %s connected; the scenario blocks it", from, to, port)
	}
	after, ok := findDrop(cl.nodeDrops(t, owner), owner.Key(), dir)
	if !ok {
		t.Fatalf("no %s drop counter for %s on %s: %+v", dir, owner.Key(), owner.Pod.Spec.NodeName, cl.nodeDrops(t, owner))
	}
	if after.Packets <= before.Packets {
		t.Errorf("%s %s drop counter stayed at %d packets across a blocked probe %s -> %s %s", owner.Key(), dir, after.Packets, from, to, port)
	}
	if want := policynft.PodChain(owner.Key(), dir); after.Chain != want {
		t.Errorf("drop counted in chain %s, want %s", after.Chain, want)
	}
	got := slices.Sorted(slices.Values(after.Policies))
	if after.FailedClosed || after.MorePolicies != 0 || !slices.Equal(got, slices.Sorted(slices.Values(policies))) {
		t.Errorf("drop attributed to %v (+%d, failed closed %v), want %v", after.Policies, after.MorePolicies, after.FailedClosed, policies)
	}
	t.Logf("blocked probe %s -> %s %s counted on %s in %s: %d -> %d packets, policies %v",
		from, to, port, owner.Pod.Spec.NodeName, after.Chain, before.Packets, after.Packets, after.Policies)
}

// dnsQuery asks server (ip:53) for name's A record over proto ("udp" or
// "tcp") from inside the pod and returns how many answers came back. It is
// written by hand so the socket is certain to be opened on the thread in
// the pod's namespace, which net.Resolver does not promise.
func dnsQuery(from *npPod, proto, server, name string) (int, error) {
	q := []byte{0x4d, 0x52, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0} // id "MR", RD, one question
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	q = append(q, 0, 0, 1, 0, 1) // root, type A, class IN
	var answers int
	err := inNetns(podNetns(from.Pod), func() error {
		var resp []byte
		for try := 0; ; try++ {
			r, err := dnsExchange(proto, server, q)
			if err == nil {
				resp = r
				break
			}
			if try == 2 {
				return err
			}
		}
		if len(resp) < 12 || resp[0] != q[0] || resp[1] != q[1] || resp[2]&0x80 == 0 {
			return fmt.Errorf("not a DNS response to the query: % x", resp)
		}
		if rcode := resp[3] & 0x0f; rcode != 0 {
			return fmt.Errorf("rcode %d", rcode)
		}
		answers = int(binary.BigEndian.Uint16(resp[6:8]))
		return nil
	})
	return answers, err
}

func dnsExchange(proto, server string, q []byte) ([]byte, error) {
	conn, err := net.DialTimeout(proto, server, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if proto == "udp" {
		if _, err := conn.Write(q); err != nil {
			return nil, err
		}
		buf := make([]byte, 1500)
		n, err := conn.Read(buf)
		return buf[:n], err
	}
	msg := binary.BigEndian.AppendUint16(nil, uint16(len(q)))
	if _, err := conn.Write(append(msg, q...)); err != nil {
		return nil, err
	}
	var l [2]byte
	if _, err := io.ReadFull(conn, l[:]); err != nil {
		return nil, err
	}
	buf := make([]byte, binary.BigEndian.Uint16(l[:]))
	_, err = io.ReadFull(conn, buf)
	return buf, err
}
