package routing

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/cluster"
	"github.com/meridian-net/meridian/daemon/routes"
)

// fakeSpeaker records what the controller asked for; the speaker itself is
// tested against real GoBGP and FRR in bgp/gobgp.
type fakeSpeaker struct {
	mu        sync.Mutex
	cfg       bgp.Config
	peers     []bgp.Peer
	ads       []bgp.Advertisement
	paths     []bgp.Path
	converged bool
	changes   chan struct{}
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
func (s *fakeSpeaker) Paths(context.Context) ([]bgp.Path, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paths, nil
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
	applier  *fakeApplier
	mu       sync.Mutex
	speakers []*fakeSpeaker
	states   map[string][]netip.Prefix
	logs     *syncBuffer
	ctrl     *Controller
	cancel   context.CancelFunc
	done     chan struct{}
}

func start(t *testing.T, applier *fakeApplier, nodes ...*corev1.Node) *harness {
	t.Helper()
	h := &harness{client: fake.NewClientset(), applier: applier, states: map[string][]netip.Prefix{}, logs: &syncBuffer{}}
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
	write := func(name string, cidrs []netip.Prefix) error {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.states[name] = cidrs
		return nil
	}
	log := slog.New(slog.NewTextHandler(h.logs, nil))
	h.ctrl = New(Config{NodeName: "n1", DefaultASN: 64512, BGPPort: 179, GracefulRestartTime: time.Minute, ResyncPeriod: 100 * time.Millisecond}, h.client, applier, newSpeaker, write, log)
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
	if n := strings.Count(h.logs.String(), "next hop is not the node that owns"); n != 1 {
		t.Errorf("rejection logged %d times, want once", n)
	}
}
