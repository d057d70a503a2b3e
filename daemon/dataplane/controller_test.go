package dataplane

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/services"
	"github.com/meridian-net/meridian/policy"
)

// The controller's loop is tested here with a fake clientset, the in-memory
// nft.Fake and two small renderers that write the models' essentials into
// sets; the real renderers and the kernel are tested in their packages and
// in the lab.

const node = "node-a"

func frontendsSet(m *services.Model) nft.Table {
	s := nft.Set{Name: "svc-frontends", KeyType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetProto, nft.TypeInetService}}
	for _, svc := range m.Services {
		for _, p := range svc.Ports {
			for _, f := range p.Frontends {
				if f.Addr.Is4() {
					s.Elements = append(s.Elements, nft.Element{Key: fmt.Sprintf("%s . %s . %d", f.Addr, nft.ProtoName(byte(f.Protocol)), f.Port)})
				}
			}
		}
	}
	return nft.Table{Sets: []nft.Set{s}}
}

func isolatedSet(m *policy.Model) nft.Table {
	s := nft.Set{Name: "pol-isolated", KeyType: []nft.DataType{nft.TypeIPv4Addr}}
	for _, p := range m.Pods {
		if p.Ingress.Isolated || p.Egress.Isolated {
			for _, a := range p.IPs {
				s.Elements = append(s.Elements, nft.Element{Key: a.String()})
			}
		}
	}
	return nft.Table{Sets: []nft.Set{s}}
}

type recorder struct {
	mu      sync.Mutex
	stale   []services.StaleFlow
	checks  [][]HealthCheck
	events  []string
	reports []SyncReport
}

func (r *recorder) DeleteUDP(f []services.StaleFlow) (uint, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stale = append(r.stale, f...)
	return uint(len(f)), nil
}

func (r *recorder) Sync(c []HealthCheck) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checks = append(r.checks, c)
	return nil
}

func (r *recorder) Warning(reason, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, reason+": "+msg)
}

func (r *recorder) onSync(s SyncReport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reports = append(r.reports, s)
}

func (r *recorder) snapshot() recorder {
	r.mu.Lock()
	defer r.mu.Unlock()
	return recorder{stale: slices.Clone(r.stale), checks: slices.Clone(r.checks), events: slices.Clone(r.events), reports: slices.Clone(r.reports)}
}

func testNode() *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: node},
		Spec:       corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "198.18.0.11"}, {Type: corev1.NodeHostName, Address: node}}},
	}
}

func service(name, ip string, proto corev1.Protocol) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []corev1.ServicePort{{Name: "p", Protocol: proto, Port: 53, TargetPort: intstr.FromInt32(5353)}},
		},
	}
}

func slice(svc string, proto corev1.Protocol, addrs ...string) *discoveryv1.EndpointSlice {
	ready := true
	port, name := int32(5353), "p"
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: svc + "-abc", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
	}
	for _, a := range addrs {
		n := node
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, NodeName: &n, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return s
}

func start(t *testing.T, ctx context.Context, c *Controller) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-c.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("controller never became ready")
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hasElement(t *testing.T, conn *nft.Fake, set, key string) bool {
	t.Helper()
	tbl, err := conn.Dump()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range tbl.Sets {
		if s.Name == set {
			return slices.ContainsFunc(s.Elements, func(e nft.Element) bool { return e.Key == key })
		}
	}
	return false
}

func newController(t *testing.T, client *fake.Clientset, conn nft.Conn, rec *recorder) *Controller {
	return New(Config{NodeName: node, Services: services.DefaultConfig(), MinSyncInterval: time.Millisecond},
		client, conn, Renderers{Services: frontendsSet, Policy: isolatedSet},
		Options{Conntrack: rec, HealthChecks: rec, OnSync: rec.onSync, Events: rec},
		slog.New(slog.NewTextHandler(t.Output(), nil)))
}

func TestProgramsServicesAndPolicyAndClearsStaleUDP(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset(testNode(),
		service("dns", "10.96.0.10", corev1.ProtocolUDP),
		slice("dns", corev1.ProtocolUDP, "10.244.1.5", "10.244.1.6"))
	conn := nft.NewFake()
	rec := &recorder{}
	c := newController(t, client, conn, rec)
	start(t, ctx, c)

	if !hasElement(t, conn, "svc-frontends", "10.96.0.10 . udp . 53") {
		t.Fatalf("frontend not programmed:\n%s", c.Status().Table)
	}
	st := c.Status()
	if len(st.Services.Services) != 1 || st.Services.ClusterCIDRs[0] != netip.MustParsePrefix("10.244.1.0/24") {
		t.Fatalf("status: %+v", st.Services)
	}

	// One endpoint goes away: the UDP entries it answered must be deleted,
	// and only those.
	if _, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, slice("dns", corev1.ProtocolUDP, "10.244.1.5"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "stale flow deletion", func() bool { return len(rec.snapshot().stale) > 0 })
	want := services.StaleFlow{Frontend: netip.MustParseAddrPort("10.96.0.10:53"), Endpoint: netip.MustParseAddrPort("10.244.1.6:5353")}
	if got := rec.snapshot().stale; !slices.Equal(got, []services.StaleFlow{want}) {
		t.Fatalf("stale flows %v, want [%v]", got, want)
	}

	// A policy isolating a local pod reaches the policy renderer.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.1.7", PodIPs: []corev1.PodIP{{IP: "10.244.1.7"}}},
	}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny"},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
	}
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.NetworkingV1().NetworkPolicies("default").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "isolated pod in table", func() bool { return hasElement(t, conn, "pol-isolated", "10.244.1.7") })
}

func TestRestartAdoptsTableWithoutChanges(t *testing.T) {
	client := fake.NewClientset(testNode(),
		service("dns", "10.96.0.10", corev1.ProtocolUDP),
		slice("dns", corev1.ProtocolUDP, "10.244.1.5"))
	conn := nft.NewFake()

	ctx1, cancel1 := context.WithCancel(context.Background())
	first := &recorder{}
	start(t, ctx1, newController(t, client, conn, first))
	cancel1()
	applied := conn.Applied()

	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	second := &recorder{}
	start(t, ctx2, newController(t, client, conn, second))
	r := second.snapshot().reports
	if len(r) == 0 || !r[0].Dumped || r[0].Ops != 0 || r[0].Err != nil {
		t.Fatalf("first sync after restart: %+v", r)
	}
	if conn.Applied() != applied {
		t.Fatalf("restart sent %d transactions to a table that was already right", conn.Applied()-applied)
	}
	if len(second.snapshot().stale) != 0 {
		t.Fatalf("restart deleted conntrack entries: %v", second.snapshot().stale)
	}
}

func TestInvalidServiceRaisesOneEventAndHealthChecksFollowModel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bad := service("bad", "10.96.0.20", "ICMP")
	lb := service("lb", "10.96.0.30", corev1.ProtocolTCP)
	lb.Spec.Type = corev1.ServiceTypeLoadBalancer
	lb.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	lb.Spec.HealthCheckNodePort = 32000
	lb.Spec.Ports[0].NodePort = 31000
	client := fake.NewClientset(testNode(), bad, lb, slice("lb", corev1.ProtocolTCP, "10.244.1.9"))
	rec := &recorder{}
	c := newController(t, client, nft.NewFake(), rec)
	start(t, ctx, c)

	// Unrelated changes cause more syncs; the problem is still reported once.
	for i := range 3 {
		s := service(fmt.Sprintf("other-%d", i), fmt.Sprintf("10.96.1.%d", i+1), corev1.ProtocolTCP)
		if _, err := client.CoreV1().Services("default").Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "three more services", func() bool { return len(c.Status().Services.Services) >= 4 })
	var invalid []string
	for _, e := range rec.snapshot().events {
		if e[:len("InvalidService")] == "InvalidService" {
			invalid = append(invalid, e)
		}
	}
	if len(invalid) != 1 {
		t.Fatalf("events %v, want one InvalidService", rec.snapshot().events)
	}
	checks := rec.snapshot().checks
	last := checks[len(checks)-1]
	if !slices.Equal(last, []HealthCheck{{Namespace: "default", Name: "lb", NodePort: 32000, LocalEndpoints: 1}}) {
		t.Fatalf("health checks %+v", last)
	}
}

// refusingConn fails Apply while refuse is set, the way a kernel refuses a
// transaction, and otherwise delegates to a Fake.
type refusingConn struct {
	*nft.Fake
	refuse atomic.Bool
}

func (r *refusingConn) Apply(tx nft.Transaction) error {
	if r.refuse.Load() {
		return fmt.Errorf("netlink: operation not supported")
	}
	return r.Fake.Apply(tx)
}

func TestRefusedTransactionIsRetriedAndReported(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset(testNode(), service("dns", "10.96.0.10", corev1.ProtocolUDP), slice("dns", corev1.ProtocolUDP, "10.244.1.5"))
	conn := &refusingConn{Fake: nft.NewFake()}
	conn.refuse.Store(true)
	rec := &recorder{}
	c := newController(t, client, conn, rec)
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	eventually(t, "a failed sync", func() bool {
		return slices.ContainsFunc(rec.snapshot().reports, func(r SyncReport) bool { return r.Err != nil })
	})
	select {
	case <-c.Ready():
		t.Fatal("ready although nothing was programmed")
	default:
	}
	if c.Status().LastError == nil {
		t.Fatal("status does not show the failure")
	}
	conn.refuse.Store(false)
	select {
	case <-c.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("not ready after the kernel accepted again")
	}
	if !hasElement(t, conn.Fake, "svc-frontends", "10.96.0.10 . udp . 53") {
		t.Fatal("frontend missing after recovery")
	}
}

// policyRefusingConn refuses any transaction that writes elements into
// pol-isolated, like a kernel refusing one policy's objects.
type policyRefusingConn struct{ *nft.Fake }

func (r policyRefusingConn) Apply(tx nft.Transaction) error {
	for _, op := range tx.AddElements {
		if op.Name == "pol-isolated" {
			return fmt.Errorf("netlink: invalid argument")
		}
	}
	for _, s := range tx.AddSets {
		if s.Name == "pol-isolated" && len(s.Elements) > 0 {
			return fmt.Errorf("netlink: invalid argument")
		}
	}
	return r.Fake.Apply(tx)
}

func TestRefusedPolicyFailsClosedAndServicesStillSync(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.1.7", PodIPs: []corev1.PodIP{{IP: "10.244.1.7"}}},
	}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny"},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
	}
	client := fake.NewClientset(testNode(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, pod, np,
		service("dns", "10.96.0.10", corev1.ProtocolUDP), slice("dns", corev1.ProtocolUDP, "10.244.1.5"))
	conn := policyRefusingConn{nft.NewFake()}
	rec := &recorder{}
	c := New(Config{NodeName: node, Services: services.DefaultConfig(), MinSyncInterval: time.Millisecond},
		client, conn, Renderers{
			Services: frontendsSet, Policy: isolatedSet,
			PolicyFailClosed: func(m *policy.Model, _ nft.Table) (nft.Table, []string) {
				s := nft.Set{Name: "pol-failed-closed", KeyType: []nft.DataType{nft.TypeIPv4Addr}}
				var pods []string
				for _, p := range m.Pods {
					pods = append(pods, p.Key())
					for _, a := range p.IPs {
						s.Elements = append(s.Elements, nft.Element{Key: a.String()})
					}
				}
				return nft.Table{Sets: []nft.Set{s}}, pods
			},
		},
		Options{OnSync: rec.onSync, Events: rec}, slog.New(slog.NewTextHandler(t.Output(), nil)))
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	eventually(t, "fail-closed event", func() bool {
		return slices.ContainsFunc(rec.snapshot().events, func(e string) bool { return len(e) > 18 && e[:18] == "PolicyFailedClosed" })
	})
	if !hasElement(t, conn.Fake, "pol-failed-closed", "10.244.1.7") {
		t.Fatal("the pod whose policy was refused does not fail closed")
	}
	if !slices.ContainsFunc(rec.snapshot().reports, func(r SyncReport) bool { return r.Err != nil && r.FailedClosed == 1 }) {
		t.Fatalf("no sync report counts the failed-closed pod: %+v", rec.snapshot().reports)
	}
	if !hasElement(t, conn.Fake, "svc-frontends", "10.96.0.10 . udp . 53") {
		t.Fatal("Services were not programmed while policy was refused")
	}
	select {
	case <-c.Ready():
		t.Fatal("ready although the desired table was refused")
	default:
	}
}
