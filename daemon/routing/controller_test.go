package routing

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meridian-net/meridian/api/crd/v1alpha1"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/cluster"
	"github.com/meridian-net/meridian/daemon/encap"
	"github.com/meridian-net/meridian/daemon/routes"
	"github.com/meridian-net/meridian/daemon/tunnel"
)

// fakeSpeaker records what the controller asked for; the speaker itself is
// tested against real GoBGP and FRR in bgp/gobgp.
type fakeSpeaker struct {
	mu        sync.Mutex
	cfg       bgp.Config
	peers     []bgp.Peer
	ads       []bgp.Advertisement
	paths     []bgp.Path
	policy    bgp.ImportPolicy
	converged bool
	changes   chan struct{}
	// onPaths, if set, runs at every Paths call before the RIB is read.
	onPaths func(*fakeSpeaker)
}

func (s *fakeSpeaker) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (s *fakeSpeaker) SetPeers(_ context.Context, p []bgp.Peer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peers = p
	return nil
}
func (s *fakeSpeaker) SetAdvertisements(_ context.Context, a []bgp.Advertisement) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ads = a
	return nil
}
func (s *fakeSpeaker) SetImportPolicy(p bgp.ImportPolicy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.policy = p
}

// Paths judges the paths by the policy, as the real speaker does.
func (s *fakeSpeaker) Paths(context.Context) ([]bgp.Path, error) {
	s.mu.Lock()
	hook := s.onPaths
	s.mu.Unlock()
	if hook != nil {
		hook(s)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.policy.Apply(s.paths), nil
}
func (s *fakeSpeaker) Peers(context.Context) ([]bgp.PeerState, error) { return nil, nil }
func (s *fakeSpeaker) Changes() <-chan struct{}                       { return s.changes }
func (s *fakeSpeaker) Converged() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.converged
}
func (s *fakeSpeaker) set(f func(*fakeSpeaker)) {
	s.mu.Lock()
	f(s)
	s.mu.Unlock()
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

type applied struct {
	routes []routes.Route
	prune  bool
}

type fakeApplier struct {
	mu      sync.Mutex
	current []routes.Route
	applies []applied
}

func (a *fakeApplier) Current() ([]routes.Route, error) { return a.current, nil }
func (a *fakeApplier) Apply(d []routes.Route, prune bool) (routes.Result, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.applies = append(a.applies, applied{d, prune})
	return routes.Result{Added: len(d)}, nil
}
func (a *fakeApplier) last() (applied, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.applies) == 0 {
		return applied{}, 0
	}
	return a.applies[len(a.applies)-1], len(a.applies)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}
func (b *syncBuffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return b.b.String() }

func mkNode(name, ip, cidr string, ann map[string]string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	if cidr != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr, []string{cidr}
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	return n
}

type harness struct {
	client   *fake.Clientset
	dyn      dynamic.Interface
	applier  *fakeApplier
	mu       sync.Mutex
	speakers []*fakeSpeaker
	states   map[string][]netip.Prefix
	mtus     map[string]int
	logs     *syncBuffer
	ctrl     *Controller
	cancel   context.CancelFunc
	done     chan struct{}
}

func start(t *testing.T, applier *fakeApplier, nodes ...*corev1.Node) *harness {
	return startWith(t, applier, nil, nodes...)
}

func startWith(t *testing.T, applier *fakeApplier, dyn dynamic.Interface, nodes ...*corev1.Node) *harness {
	t.Helper()
	return startFull(t, applier, dyn, nil, nil, nodes...)
}

// startFull also takes the tunnels (nil: none) and a change to the Config.
func startFull(t *testing.T, applier *fakeApplier, dyn dynamic.Interface, tunnels Tunnels, mutate func(*Config), nodes ...*corev1.Node) *harness {
	t.Helper()
	h := &harness{client: fake.NewClientset(), dyn: dyn, applier: applier, states: map[string][]netip.Prefix{}, mtus: map[string]int{}, logs: &syncBuffer{}}
	for _, n := range nodes {
		if _, err := h.client.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	newSpeaker := func(cfg bgp.Config) (bgp.Speaker, error) {
		s := &fakeSpeaker{cfg: cfg, changes: make(chan struct{}, 1)}
		h.mu.Lock()
		h.speakers = append(h.speakers, s)
		h.mu.Unlock()
		return s, nil
	}
	write := func(name string, cidrs []netip.Prefix, mtu int) error {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.states[name] = cidrs
		h.mtus[name] = mtu
		return nil
	}
	log := slog.New(slog.NewTextHandler(h.logs, nil))
	cfg := Config{NodeName: "n1", DefaultASN: 64512, BGPPort: 179, GracefulRestartTime: time.Minute, ResyncPeriod: 100 * time.Millisecond, CRDSyncTimeout: time.Second}
	if mutate != nil {
		mutate(&cfg)
	}
	h.ctrl = New(cfg, h.client, h.dyn, applier, tunnels, newSpeaker, write, log)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	go func() { defer close(h.done); _ = h.ctrl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-h.done })
	return h
}

func (h *harness) speaker() *fakeSpeaker {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.speakers) == 0 {
		return nil
	}
	return h.speakers[len(h.speakers)-1]
}

func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A sync under way when meridiand stops reads state the shutdown is taking
// apart; it must not prune the kernel by it. Here the RIB empties as the
// context ends during the sync's read (a rolling upgrade once lost every
// learned route on a node that way).
func TestControllerAppliesNothingOnceStopping(t *testing.T) {
	app := &fakeApplier{}
	h := start(t, app,
		mkNode("n1", "198.18.0.11", "10.244.1.0/24", nil),
		mkNode("n2", "198.18.0.12", "10.244.2.0/24", nil),
	)
	waitFor(t, "speaker", func() error {
		if h.speaker() == nil {
			return fmt.Errorf("no speaker")
		}
		return nil
	})
	s := h.speaker()
	s.set(func(s *fakeSpeaker) {
		s.paths = []bgp.Path{{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: netip.MustParseAddr("198.18.0.12"), PeerAddress: netip.MustParseAddr("198.18.0.12"), Best: true}}
		s.converged = true
	})
	waitFor(t, "route to n2 applied with pruning", func() error {
		if a, _ := app.last(); len(a.routes) != 2 || !a.prune {
			return fmt.Errorf("last apply %+v", a)
		}
		return nil
	})
	_, before := app.last()
	s.set(func(s *fakeSpeaker) {
		s.onPaths = func(s *fakeSpeaker) {
			h.cancel()
			s.mu.Lock()
			s.paths = nil
			s.onPaths = nil
			s.mu.Unlock()
		}
	})
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		t.Fatal("controller did not stop")
	}
	if a, n := app.last(); n != before {
		t.Errorf("%d applies after the context ended; last %+v", n-before, a)
	}
}

func TestControllerMeshRoutesAndCondition(t *testing.T) {
	app := &fakeApplier{}
	h := start(t, app,
		mkNode("n1", "198.18.0.11", "10.244.1.0/24", nil),
		mkNode("n2", "198.18.0.12", "10.244.2.0/24", nil),
		mkNode("n3", "198.18.0.13", "", nil), // no CIDR yet: still a peer
	)
	waitFor(t, "speaker with peers", func() error {
		s := h.speaker()
		if s == nil {
			return fmt.Errorf("no speaker")
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.peers) != 2 || len(s.ads) != 1 {
			return fmt.Errorf("peers %v ads %v", s.peers, s.ads)
		}
		return nil
	})
	s := h.speaker()
	if s.cfg.RouterID != netip.MustParseAddr("198.18.0.11") || s.cfg.ASN != 64512 || s.cfg.Restarting {
		t.Errorf("speaker config %+v: want router ID 198.18.0.11, ASN 64512, not restarting", s.cfg)
	}
	if s.ads[0].Prefix != netip.MustParsePrefix("10.244.1.0/24") || s.ads[0].NextHop != s.cfg.RouterID {
		t.Errorf("advertisement %+v", s.ads[0])
	}
	h.mu.Lock()
	if got := h.states["n1"]; len(got) != 1 || got[0] != netip.MustParsePrefix("10.244.1.0/24") {
		t.Errorf("node state for the CNI = %v", got)
	}
	h.mu.Unlock()

	// Not converged: routes are added but never pruned, and the node is
	// not declared ready.
	s.set(func(s *fakeSpeaker) {
		s.paths = []bgp.Path{{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: netip.MustParseAddr("198.18.0.12"), PeerAddress: netip.MustParseAddr("198.18.0.12"), Best: true}}
	})
	waitFor(t, "routes applied without pruning", func() error {
		a, _ := app.last()
		if len(a.routes) != 2 || a.prune {
			return fmt.Errorf("last apply %+v", a)
		}
		return nil
	})
	select {
	case <-h.ctrl.Ready():
		t.Fatal("ready before BGP converged")
	default:
	}
	n, _ := h.client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
	if cluster.NetworkAvailable(n) {
		t.Fatal("NetworkUnavailable=False before routes were in place")
	}

	s.set(func(s *fakeSpeaker) { s.converged = true })
	waitFor(t, "prune after convergence", func() error {
		if a, _ := app.last(); !a.prune {
			return fmt.Errorf("last apply %+v", a)
		}
		return nil
	})
	<-h.ctrl.Ready()
	waitFor(t, "node condition", func() error {
		n, err := h.client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !cluster.NetworkAvailable(n) {
			return fmt.Errorf("conditions %v", n.Status.Conditions)
		}
		return nil
	})

	// A node going away leaves the mesh.
	if err := h.client.CoreV1().Nodes().Delete(context.Background(), "n3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "peer removed", func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.peers) != 1 || s.peers[0].Name != "n2" {
			return fmt.Errorf("peers %v", s.peers)
		}
		return nil
	})
}

func TestControllerAdoptsRoutesAsRestart(t *testing.T) {
	app := &fakeApplier{current: []routes.Route{{Dst: netip.MustParsePrefix("10.244.2.0/24"), NextHops: []netip.Addr{netip.MustParseAddr("198.18.0.12")}}}}
	h := start(t, app, mkNode("n1", "198.18.0.11", "10.244.1.0/24", nil), mkNode("n2", "198.18.0.12", "10.244.2.0/24", nil))
	waitFor(t, "speaker", func() error {
		if h.speaker() == nil {
			return fmt.Errorf("no speaker")
		}
		return nil
	})
	if !h.speaker().cfg.Restarting {
		t.Error("routes found in the kernel, but the speaker was not told it is restarting")
	}
	// With no paths learned yet and BGP not converged, the adopted route
	// must survive: every apply so far is without pruning.
	waitFor(t, "an apply", func() error {
		if _, n := app.last(); n == 0 {
			return fmt.Errorf("no apply")
		}
		return nil
	})
	app.mu.Lock()
	defer app.mu.Unlock()
	for _, a := range app.applies {
		if a.prune {
			t.Fatalf("pruned before BGP converged: %+v", a)
		}
	}
}

func TestControllerWaitsOnBadConfig(t *testing.T) {
	tests := []struct {
		name  string
		nodes []*corev1.Node
		log   string
	}{
		{"unknown node", []*corev1.Node{mkNode("other", "198.18.0.12", "10.244.2.0/24", nil)}, `node \"n1\" not found`},
		{"invalid ASN", []*corev1.Node{mkNode("n1", "198.18.0.11", "10.244.1.0/24", map[string]string{cluster.ASNAnnotation: "0"})}, "invalid ASN"},
		{"no address", []*corev1.Node{mkNode("n1", "", "10.244.1.0/24", nil)}, "no InternalIP"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			app := &fakeApplier{}
			h := start(t, app, tc.nodes...)
			waitFor(t, "problem logged", func() error {
				if !strings.Contains(h.logs.String(), tc.log) {
					return fmt.Errorf("log %q lacks %q", h.logs.String(), tc.log)
				}
				return nil
			})
			// Several resyncs later: still one line, no speaker, no routes
			// touched.
			time.Sleep(500 * time.Millisecond)
			if n := strings.Count(h.logs.String(), tc.log); n != 1 {
				t.Errorf("problem logged %d times, want once:\n%s", n, h.logs.String())
			}
			if h.speaker() != nil {
				t.Error("speaker started despite bad configuration")
			}
			if _, n := app.last(); n != 0 {
				t.Error("routes applied despite bad configuration")
			}
		})
	}
}

func TestControllerRejectsPathsNotFromTheOwner(t *testing.T) {
	app := &fakeApplier{}
	h := start(t, app,
		mkNode("n1", "198.18.0.11", "10.244.1.0/24", nil),
		mkNode("n2", "198.18.0.12", "10.244.2.0/24", nil),
		mkNode("n3", "198.18.0.13", "10.244.3.0/24", nil),
	)
	waitFor(t, "speaker", func() error {
		if h.speaker() == nil {
			return fmt.Errorf("no speaker")
		}
		return nil
	})
	n3 := netip.MustParseAddr("198.18.0.13")
	h.speaker().set(func(s *fakeSpeaker) {
		s.converged = true
		s.paths = []bgp.Path{
			// n3 announcing n2's CIDR must not draw n2's pod traffic.
			{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: n3, PeerAddress: n3, Best: true},
			{Prefix: netip.MustParsePrefix("10.244.3.0/24"), NextHop: n3, PeerAddress: n3, Best: true},
		}
	})
	waitFor(t, "only the owner's path installed", func() error {
		a, _ := app.last()
		var got []string
		for _, r := range a.routes {
			got = append(got, r.String())
		}
		want := []string{"blackhole 10.244.1.0/24 proto 201", "10.244.3.0/24 via 198.18.0.13 proto 201"}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			return fmt.Errorf("applied %q, want %q", got, want)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond) // a few resyncs
	if n := strings.Count(h.logs.String(), "reason=nextHopNotOwner"); n != 1 {
		t.Errorf("rejection logged %d times, want once", n)
	}
}

func unstructuredOf(t *testing.T, obj runtime.Object) *unstructured.Unstructured {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: m}
}

func acceptedCondition(t *testing.T, dyn dynamic.Interface, gvr schema.GroupVersionResource, name string) (*metav1.Condition, error) {
	u, err := dyn.Resource(gvr).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var p v1alpha1.BGPPeer
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p); err != nil {
		return nil, err
	}
	c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionAccepted)
	if c == nil {
		return nil, fmt.Errorf("no Accepted condition in %v", p.Status)
	}
	return c, nil
}

// BGPPeers select nodes, bad ones are reported in their status, and a peer
// that turns bad keeps its last good session.
func TestControllerBGPPeers(t *testing.T) {
	// An empty scheme: the fake then keeps the objects unstructured, as
	// the API server's JSON is.
	sc := runtime.NewScheme()
	tor := &v1alpha1.BGPPeer{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPPeer"},
		ObjectMeta: metav1.ObjectMeta{Name: "tor", Generation: 1},
		Spec: v1alpha1.BGPPeerSpec{PeerIP: "198.18.0.201", ASNumber: 65100,
			Password: &v1alpha1.SecretKeySelector{Namespace: "kube-system", Name: "bgp", Key: "pw"}},
	}
	other := &v1alpha1.BGPPeer{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPPeer"},
		ObjectMeta: metav1.ObjectMeta{Name: "rack-b", Generation: 1},
		Spec: v1alpha1.BGPPeerSpec{PeerIP: "198.18.0.202", ASNumber: 65100,
			NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "b"}}},
	}
	cfg := &v1alpha1.BGPConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: "default", Generation: 1},
		Spec:       v1alpha1.BGPConfigurationSpec{ASNumber: 65000, AcceptedPrefixes: []v1alpha1.CIDR{"10.244.0.0/16"}},
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(sc, map[schema.GroupVersionResource]string{
		bgpPeersGVR:          "BGPPeerList",
		bgpConfigurationsGVR: "BGPConfigurationList",
	}, unstructuredOf(t, tor), unstructuredOf(t, other), unstructuredOf(t, cfg))

	app := &fakeApplier{}
	n1 := mkNode("n1", "198.18.0.11", "10.244.1.0/24", nil)
	n1.Labels = map[string]string{"rack": "a"}
	h := startWith(t, app, dyn, n1, mkNode("n2", "198.18.0.12", "10.244.2.0/24", nil))

	// No Secret yet: the ToR is refused and reported, the mesh runs.
	waitFor(t, "tor refused", func() error {
		c, err := acceptedCondition(t, dyn, bgpPeersGVR, "tor")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionFalse || c.Reason != "SecretNotFound" {
			return fmt.Errorf("condition %+v", c)
		}
		return nil
	})
	waitFor(t, "speaker with the BGPConfiguration's ASN", func() error {
		s := h.speaker()
		if s == nil {
			return fmt.Errorf("no speaker")
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.cfg.ASN != 65000 || len(s.peers) != 1 || s.peers[0].Name != "n2" {
			return fmt.Errorf("asn %d peers %+v", s.cfg.ASN, s.peers)
		}
		return nil
	})

	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "bgp"}, Data: map[string][]byte{"pw": []byte("s3cret")}}
	if _, err := h.client.CoreV1().Secrets("kube-system").Create(context.Background(), secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "tor peered with its password", func() error {
		s := h.speaker()
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.peers) != 2 || s.peers[1].Name != "bgppeer/tor" || s.peers[1].Password != "s3cret" || s.peers[1].ASN != 65100 {
			return fmt.Errorf("peers %+v", s.peers)
		}
		return nil
	})
	waitFor(t, "tor accepted", func() error {
		c, err := acceptedCondition(t, dyn, bgpPeersGVR, "tor")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionTrue {
			return fmt.Errorf("condition %+v", c)
		}
		return nil
	})

	// The Secret goes away: the object is refused again, but the session
	// keeps its last good settings.
	if err := h.client.CoreV1().Secrets("kube-system").Delete(context.Background(), "bgp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "tor refused, last good in effect", func() error {
		c, err := acceptedCondition(t, dyn, bgpPeersGVR, "tor")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "last accepted version stays in effect") {
			return fmt.Errorf("condition %+v", c)
		}
		return nil
	})
	s := h.speaker()
	s.mu.Lock()
	if len(s.peers) != 2 || s.peers[1].Password != "s3cret" {
		t.Errorf("peers after the Secret went away = %+v, want the last good ToR session", s.peers)
	}
	s.mu.Unlock()

	// The ToR's paths go through the import policy: the allowed prefix is
	// installed, the default route and a piece of n2's pod CIDR are not.
	torIP := netip.MustParseAddr("198.18.0.201")
	s.set(func(s *fakeSpeaker) {
		s.converged = true
		s.paths = []bgp.Path{
			{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: torIP, PeerAddress: torIP, Best: true},
			{Prefix: netip.MustParsePrefix("10.244.2.128/25"), NextHop: torIP, PeerAddress: torIP, Best: true},
			{Prefix: netip.MustParsePrefix("10.244.200.0/24"), NextHop: torIP, PeerAddress: torIP, Best: true},
		}
	})
	waitFor(t, "only the allowed ToR prefix installed", func() error {
		a, _ := app.last()
		var got []string
		for _, r := range a.routes {
			got = append(got, r.String())
		}
		want := []string{"blackhole 10.244.1.0/24 proto 201", "10.244.200.0/24 via 198.18.0.201 proto 201"}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			return fmt.Errorf("applied %q, want %q", got, want)
		}
		return nil
	})
	for _, reason := range []string{"reason=defaultRoute", "reason=podCIDRMoreSpecific"} {
		if !strings.Contains(h.logs.String(), reason) {
			t.Errorf("log lacks %s", reason)
		}
	}
}

// A BGPConfiguration that turns bad leaves its last good settings running:
// the ASN and the reflector topology do not change.
func TestControllerBadBGPConfigurationKeepsLastGood(t *testing.T) {
	mesh := false
	cfg := &v1alpha1.BGPConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: "default", Generation: 1},
		Spec:       v1alpha1.BGPConfigurationSpec{ASNumber: 65000, NodeToNodeMesh: &mesh},
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		bgpPeersGVR:          "BGPPeerList",
		bgpConfigurationsGVR: "BGPConfigurationList",
	}, unstructuredOf(t, cfg))
	rr := mkNode("n2", "198.18.0.12", "10.244.2.0/24", nil)
	rr.Labels = map[string]string{cluster.RouteReflectorLabel: "true"}
	h := startWith(t, &fakeApplier{}, dyn,
		mkNode("n1", "198.18.0.11", "10.244.1.0/24", nil), rr,
		mkNode("n3", "198.18.0.13", "10.244.3.0/24", nil))
	peersAre := func(want string) func() error {
		return func() error {
			s := h.speaker()
			if s == nil {
				return fmt.Errorf("no speaker")
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			var names []string
			for _, p := range s.peers {
				names = append(names, p.Name)
			}
			if got := strings.Join(names, ","); got != want || s.cfg.ASN != 65000 {
				return fmt.Errorf("asn %d peers %s, want 65000 and %s", s.cfg.ASN, got, want)
			}
			return nil
		}
	}
	waitFor(t, "client of the reflector only", peersAre("n2"))

	// acceptedPrefixes covering the node subnet is refused.
	u, err := dyn.Resource(bgpConfigurationsGVR).Get(context.Background(), "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.Object["spec"].(map[string]any)["acceptedPrefixes"] = []any{"198.18.0.0/16"}
	u.SetGeneration(2)
	if _, err := dyn.Resource(bgpConfigurationsGVR).Update(context.Background(), u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "BGPConfiguration refused", func() error {
		c, err := acceptedCondition(t, dyn, bgpConfigurationsGVR, "default")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionFalse || c.ObservedGeneration != 2 || !strings.Contains(c.Message, "covers node") {
			return fmt.Errorf("condition %+v", c)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond) // a few resyncs
	if err := peersAre("n2")(); err != nil {
		t.Errorf("after a bad edit: %v", err)
	}
	h.mu.Lock()
	n := len(h.speakers)
	h.mu.Unlock()
	if n != 1 {
		t.Errorf("%d speakers started, want the first one kept", n)
	}
}

// fakeTunnels stands in for the kernel: fixed connected subnets and link MTU,
// and a record of the tunnel configurations applied.
type fakeTunnels struct {
	mu        sync.Mutex
	connected []netip.Prefix
	mtu       int
	err       error
	applied   []tunnel.Config
}

func (f *fakeTunnels) Connected() ([]netip.Prefix, error) { return f.connected, nil }
func (f *fakeTunnels) LinkMTU(netip.Addr) (int, error)    { return f.mtu, nil }
func (f *fakeTunnels) Apply(c tunnel.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, c)
	return f.err
}
func (f *fakeTunnels) last() (tunnel.Config, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.applied) == 0 {
		return tunnel.Config{}, false
	}
	return f.applied[len(f.applied)-1], true
}

// Encapsulation follows the flags until a BGPConfiguration sets it: routes
// to a node on another subnet go through the tunnel, the tunnel devices and
// the pod MTU follow, and mode Never turns it all off.
func TestControllerEncapsulation(t *testing.T) {
	tun := &fakeTunnels{connected: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}, mtu: 1500}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		bgpPeersGVR:          "BGPPeerList",
		bgpConfigurationsGVR: "BGPConfigurationList",
	})
	app := &fakeApplier{}
	h := startFull(t, app, dyn, tun, func(c *Config) { c.Encapsulation = encap.ModeCrossSubnet; c.EncapsulationType = encap.TypeIPIP },
		mkNode("n1", "198.18.0.11", "10.244.1.0/24", nil),
		mkNode("n2", "198.18.0.12", "10.244.2.0/24", nil),
		mkNode("n3", "198.18.1.13", "10.244.3.0/24", nil))
	waitFor(t, "speaker", func() error {
		if h.speaker() == nil {
			return fmt.Errorf("no speaker")
		}
		return nil
	})
	n2, n3 := netip.MustParseAddr("198.18.0.12"), netip.MustParseAddr("198.18.1.13")
	h.speaker().set(func(s *fakeSpeaker) {
		s.converged = true
		s.paths = []bgp.Path{
			{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: n2, PeerAddress: n2, Best: true},
			{Prefix: netip.MustParsePrefix("10.244.3.0/24"), NextHop: n3, PeerAddress: n3, Best: true},
		}
	})
	expect := func(what string, wantRoutes []string, wantTunnel encap.Type, wantPeers, wantMTU int) {
		t.Helper()
		waitFor(t, what, func() error {
			a, _ := app.last()
			var got []string
			for _, r := range a.routes {
				got = append(got, r.String())
			}
			if strings.Join(got, "|") != strings.Join(wantRoutes, "|") {
				return fmt.Errorf("applied %q, want %q", got, wantRoutes)
			}
			c, ok := tun.last()
			if !ok || c.Type != wantTunnel || len(c.Peers) != wantPeers || c.Address != netip.MustParseAddr("10.244.1.0") {
				return fmt.Errorf("tunnel config %+v, want type %q with %d peers", c, wantTunnel, wantPeers)
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.mtus["n1"] != wantMTU {
				return fmt.Errorf("published pod MTU %d, want %d", h.mtus["n1"], wantMTU)
			}
			return nil
		})
	}
	expect("flags: cross-subnet IPIP", []string{
		"blackhole 10.244.1.0/24 proto 201",
		"10.244.2.0/24 via 198.18.0.12 proto 201",
		"10.244.3.0/24 via 198.18.1.13 dev tunl0 onlink proto 201",
	}, encap.TypeIPIP, 0, 1480)
	if !strings.Contains(h.logs.String(), "reason=nextHopNotConnected") {
		t.Errorf("the tunnelled route's reason was not logged:\n%s", h.logs.String())
	}

	cfg := &v1alpha1.BGPConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: "default", Generation: 1},
		Spec:       v1alpha1.BGPConfigurationSpec{EncapsulationType: v1alpha1.EncapsulationVXLAN},
	}
	if _, err := dyn.Resource(bgpConfigurationsGVR).Create(context.Background(), unstructuredOf(t, cfg), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("BGPConfiguration: VXLAN, mode still the flag's", []string{
		"blackhole 10.244.1.0/24 proto 201",
		"10.244.2.0/24 via 198.18.0.12 proto 201",
		"10.244.3.0/24 via 10.244.3.0 dev vxlan.meridian onlink proto 201",
	}, encap.TypeVXLAN, 1, 1450)
	c, _ := tun.last()
	if p := c.Peers[0]; p.VTEP != netip.MustParseAddr("10.244.3.0") || p.Endpoint != n3 || p.MAC.String() != encap.VTEPMAC(n3).String() {
		t.Errorf("VXLAN peer %+v", p)
	}

	u, err := dyn.Resource(bgpConfigurationsGVR).Get(context.Background(), "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.Object["spec"].(map[string]any)["encapsulation"] = "Never"
	u.SetGeneration(2)
	if _, err := dyn.Resource(bgpConfigurationsGVR).Update(context.Background(), u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("BGPConfiguration: Never", []string{
		"blackhole 10.244.1.0/24 proto 201",
		"10.244.2.0/24 via 198.18.0.12 proto 201",
		"10.244.3.0/24 via 198.18.1.13 proto 201",
	}, "", 0, 1500)
}

// A tunnel that cannot be set up (no ipip module) does not hold back
// readiness while every node is on a connected subnet; once a route needs
// it, the sync fails.
func TestControllerUnusedTunnelFailure(t *testing.T) {
	tun := &fakeTunnels{connected: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}, mtu: 1500,
		err: fmt.Errorf("create tunl0 (is the ipip kernel module available?): operation not supported")}
	app := &fakeApplier{}
	h := startFull(t, app, nil, tun, nil,
		mkNode("n1", "198.18.0.11", "10.244.1.0/24", nil),
		mkNode("n2", "198.18.0.12", "10.244.2.0/24", nil))
	waitFor(t, "speaker", func() error {
		if h.speaker() == nil {
			return fmt.Errorf("no speaker")
		}
		return nil
	})
	n2 := netip.MustParseAddr("198.18.0.12")
	h.speaker().set(func(s *fakeSpeaker) {
		s.converged = true
		s.paths = []bgp.Path{{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: n2, PeerAddress: n2, Best: true}}
	})
	select {
	case <-h.ctrl.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("not ready with an unused tunnel failing:\n%s", h.logs.String())
	}
	time.Sleep(300 * time.Millisecond) // a few resyncs
	if n := strings.Count(h.logs.String(), "tunnel device not ready"); n != 1 {
		t.Errorf("unused tunnel failure logged %d times, want once", n)
	}
	// n2 moves to another subnet: its route needs the tunnel now.
	n, err := h.client.CoreV1().Nodes().Get(context.Background(), "n2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "198.18.1.12"}}
	if _, err := h.client.CoreV1().Nodes().UpdateStatus(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	n2 = netip.MustParseAddr("198.18.1.12")
	h.speaker().set(func(s *fakeSpeaker) {
		s.paths = []bgp.Path{{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: n2, PeerAddress: n2, Best: true}}
	})
	waitFor(t, "sync failing on the tunnel", func() error {
		if !strings.Contains(h.logs.String(), "apply tunnels") {
			return fmt.Errorf("no apply tunnels error logged")
		}
		return nil
	})
}

// The BGPConfiguration's communities and local preference reach every path
// the node originates; a community the schema should have refused is
// reported on the object and the last good attributes stay in effect.
func TestControllerCommunities(t *testing.T) {
	lp := int64(300)
	cfg := &v1alpha1.BGPConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: "default", Generation: 1},
		Spec: v1alpha1.BGPConfigurationSpec{
			Communities:     []v1alpha1.Community{"65000:100", "64512:7:8"},
			LocalPreference: &lp,
		},
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		bgpPeersGVR:          "BGPPeerList",
		bgpConfigurationsGVR: "BGPConfigurationList",
	}, unstructuredOf(t, cfg))
	h := startWith(t, &fakeApplier{}, dyn,
		mkNode("n1", "198.18.0.11", "10.244.1.0/24", nil),
		mkNode("n2", "198.18.0.12", "10.244.2.0/24", nil))
	adsAre := func(comms string, localPref string) func() error {
		return func() error {
			s := h.speaker()
			if s == nil {
				return fmt.Errorf("no speaker")
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if len(s.ads) == 0 {
				return fmt.Errorf("no advertisements")
			}
			for _, a := range s.ads {
				var cs []string
				for _, c := range a.Communities {
					cs = append(cs, c.String())
				}
				got, gotLP := strings.Join(cs, ","), "default"
				if a.LocalPref != nil {
					gotLP = fmt.Sprint(*a.LocalPref)
				}
				if got != comms || gotLP != localPref {
					return fmt.Errorf("%s: communities %q local pref %s, want %q %s", a.Prefix, got, gotLP, comms, localPref)
				}
			}
			return nil
		}
	}
	waitFor(t, "pod CIDR with the configured attributes", adsAre("65000:100,64512:7:8", "300"))

	edit := func(gen int64, mut func(spec map[string]any)) {
		t.Helper()
		u, err := dyn.Resource(bgpConfigurationsGVR).Get(context.Background(), "default", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mut(u.Object["spec"].(map[string]any))
		u.SetGeneration(gen)
		if _, err := dyn.Resource(bgpConfigurationsGVR).Update(context.Background(), u, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// A 4-octet ASN in a standard community: the schema's rule refuses
	// it, the fake API server does not.
	edit(2, func(spec map[string]any) { spec["communities"] = []any{"4200000000:1"} })
	waitFor(t, "BGPConfiguration refused", func() error {
		c, err := acceptedCondition(t, dyn, bgpConfigurationsGVR, "default")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionFalse || c.ObservedGeneration != 2 || !strings.Contains(c.Message, "communities") ||
			!strings.Contains(c.Message, "last accepted version stays in effect") {
			return fmt.Errorf("condition %+v", c)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond) // a few resyncs
	if err := adsAre("65000:100,64512:7:8", "300")(); err != nil {
		t.Errorf("after a bad edit: %v", err)
	}

	edit(3, func(spec map[string]any) {
		spec["communities"] = []any{"65000:200"}
		delete(spec, "localPreference")
	})
	waitFor(t, "new communities, default local pref", adsAre("65000:200", "default"))
	waitFor(t, "BGPConfiguration accepted again", func() error {
		c, err := acceptedCondition(t, dyn, bgpConfigurationsGVR, "default")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionTrue || c.ObservedGeneration != 3 {
			return fmt.Errorf("condition %+v", c)
		}
		return nil
	})
}

// Events on the Node: a session coming up and going down (not a session
// first seen down, which is start-up), and newly refused paths summed up
// in one Event per sync.
func TestNodeEvents(t *testing.T) {
	type event struct{ typ, reason, msg string }
	var got []event
	c := &Controller{log: slog.New(slog.DiscardHandler), record: func(_ runtime.Object, typ, reason, msg string) { got = append(got, event{typ, reason, msg}) }}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}
	tor := netip.MustParseAddr("198.18.0.201")
	n2 := netip.MustParseAddr("198.18.0.12")
	peer := func(addr netip.Addr, name, state, lastErr string) bgp.PeerState {
		return bgp.PeerState{Peer: bgp.Peer{Name: name, Address: addr, ASN: 64512}, State: state, LastError: lastErr}
	}

	c.reportSessions(node, []bgp.PeerState{peer(tor, "tor1", "active", ""), peer(n2, "node-2", "established", "")})
	c.reportSessions(node, []bgp.PeerState{peer(tor, "tor1", "active", ""), peer(n2, "node-2", "established", "")})
	c.reportSessions(node, []bgp.PeerState{peer(tor, "tor1", "established", ""), peer(n2, "node-2", "idle", "hold timer expired")})
	want := []event{
		{corev1.EventTypeNormal, "BGPSessionEstablished", "BGP session with node-2 (198.18.0.12, AS 64512) established"},
		{corev1.EventTypeNormal, "BGPSessionEstablished", "BGP session with tor1 (198.18.0.201, AS 64512) established"},
		{corev1.EventTypeWarning, "BGPSessionDown", "BGP session with node-2 (198.18.0.12, AS 64512) is idle: hold timer expired"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("session events:\n%v\nwant\n%v", got, want)
	}

	got = nil
	paths := []bgp.Path{
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), NextHop: tor, PeerAddress: tor, Rejected: bgp.ReasonDefaultRoute},
		{Prefix: netip.MustParsePrefix("10.244.1.0/24"), NextHop: tor, PeerAddress: tor, Rejected: bgp.ReasonOwnPodCIDR},
		{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: n2, PeerAddress: n2},
	}
	fresh := c.logRejections(paths)
	if len(fresh) != 2 {
		t.Fatalf("%d fresh rejections, want 2", len(fresh))
	}
	if msg := rejectionSummary(fresh); msg != "import policy refused 2 path(s): 0.0.0.0/0 from 198.18.0.201 (defaultRoute), 10.244.1.0/24 from 198.18.0.201 (ownPodCIDR)" {
		t.Errorf("summary %q", msg)
	}
	if again := c.logRejections(paths); len(again) != 0 {
		t.Errorf("the same rejections reported again: %v", again)
	}
	var many []rejection
	for i := range 7 {
		many = append(many, rejection{prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32), peer: tor, reason: bgp.ReasonOutsideAllowed})
	}
	if msg := rejectionSummary(many); !strings.HasPrefix(msg, "import policy refused 7 path(s): 192.0.2.0/32 from 198.18.0.201 (outsideAllowed)") || !strings.Contains(msg, "and 2 more") {
		t.Errorf("summary of 7: %q", msg)
	}
}
