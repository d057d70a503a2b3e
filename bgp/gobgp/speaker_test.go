package gobgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"go.uber.org/goleak"

	"github.com/meridian-net/meridian/bgp"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(runChild(spec))
	}
	// GoBGP's Serve loop cannot be stopped (it has no exit path), so each
	// Speaker leaves exactly that goroutine behind; anything else is a leak.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/osrg/gobgp/v3/pkg/server.(*BgpServer).Serve"))
}

func testLogger(t *testing.T, name string) *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level})).With("speaker", name)
}

// tWriter sends log lines to t.Log so they appear next to the failing test.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// freePort finds a TCP port that is free on loopback; the speakers then
// listen on it on their own 127.x addresses.
func freePort(t *testing.T) int32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

func speakerConfig(addr string, asn uint32, port int32, gr time.Duration) bgp.Config {
	a := netip.MustParseAddr(addr)
	return bgp.Config{
		RouterID:            a,
		ASN:                 asn,
		ListenAddresses:     []netip.Addr{a},
		ListenPort:          port,
		LocalAddress:        a,
		GracefulRestartTime: gr,
	}
}

// startSpeaker runs a speaker until the test ends and returns once GoBGP
// is up. Speakers are started one after the other on purpose: StartBgp
// writes GoBGP package-level route selection options, so two servers in
// one process must not start concurrently.
func startSpeaker(t *testing.T, name string, cfg bgp.Config) *Speaker {
	t.Helper()
	s, _ := runSpeaker(t, name, cfg)
	return s
}

// runSpeaker is startSpeaker that also returns a stop function, which
// cancels Run and waits for it.
func runSpeaker(t *testing.T, name string, cfg bgp.Config) (*Speaker, func()) {
	t.Helper()
	s, err := New(cfg, testLogger(t, name))
	if err != nil {
		t.Fatalf("new speaker %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errCh := make(chan error, 1)
	go func() { errCh <- s.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errCh:
				if err != nil {
					t.Errorf("speaker %s: Run: %v", name, err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("speaker %s: Run did not return after cancel", name)
			}
		})
	}
	t.Cleanup(stop)
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := s.waitStarted(wctx); err != nil {
		t.Fatalf("speaker %s did not start: %v", name, err)
	}
	return s, stop
}

// eventually polls cond every 50ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func pathsFor(t *testing.T, s *Speaker, prefix netip.Prefix) []bgp.Path {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	paths, err := s.Paths(ctx)
	if err != nil {
		t.Fatalf("paths: %v", err)
	}
	var out []bgp.Path
	for _, p := range paths {
		if p.Prefix == prefix {
			out = append(out, p)
		}
	}
	return out
}

// waitEstablished waits for the session to peer and, with eor, for its
// End-of-RIB (only sent when graceful restart was negotiated).
func waitEstablished(t *testing.T, s *Speaker, peer netip.Addr, eor bool, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("session to %s established (End-of-RIB: %v)", peer, eor), func() (bool, string) {
		st, err := s.Peers(context.Background())
		if err != nil {
			return false, err.Error()
		}
		for _, p := range st {
			if p.Address == peer {
				return p.State == "established" && (p.EndOfRIB || !eor), fmt.Sprintf("%+v", p)
			}
		}
		return false, fmt.Sprintf("peer not listed: %+v", st)
	})
}

// wantPath waits until s has exactly one path for prefix with the given
// next hop and peer, best and fresh.
func wantPath(t *testing.T, s *Speaker, prefix netip.Prefix, nextHop, peer netip.Addr, timeout time.Duration) bgp.Path {
	t.Helper()
	var got bgp.Path
	eventually(t, timeout, fmt.Sprintf("fresh best path %s via %s", prefix, nextHop), func() (bool, string) {
		ps := pathsFor(t, s, prefix)
		if len(ps) != 1 {
			return false, fmt.Sprintf("paths: %+v", ps)
		}
		got = ps[0]
		return got.NextHop == nextHop && got.PeerAddress == peer && got.Best && !got.Stale, fmt.Sprintf("%+v", got)
	})
	return got
}

func wantNoPath(t *testing.T, s *Speaker, prefix netip.Prefix, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("no path for %s", prefix), func() (bool, string) {
		ps := pathsFor(t, s, prefix)
		return len(ps) == 0, fmt.Sprintf("paths: %+v", ps)
	})
}

// localPathAge reads when GoBGP last (re)created the locally originated
// path for prefix: re-adding an identical path would renew it.
func localPathAge(t *testing.T, s *Speaker, prefix netip.Prefix) time.Time {
	t.Helper()
	var age time.Time
	err := s.srv.ListPath(context.Background(), &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: ipv4Unicast}, func(d *api.Destination) {
		if d.GetPrefix() != prefix.String() {
			return
		}
		for _, p := range d.GetPaths() {
			if isLocal(p) {
				age = p.GetAge().AsTime()
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if age.IsZero() {
		t.Fatalf("no local path for %s", prefix)
	}
	return age
}

func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

func TestIBGPPeering(t *testing.T) {
	port := freePort(t)
	addrA, addrB := netip.MustParseAddr("127.10.0.1"), netip.MustParseAddr("127.10.0.2")
	a := startSpeaker(t, "a", speakerConfig(addrA.String(), bgp.DefaultASN, port, 30*time.Second))
	b := startSpeaker(t, "b", speakerConfig(addrB.String(), bgp.DefaultASN, port, 30*time.Second))
	ctx := context.Background()

	if a.Converged() {
		t.Fatal("a converged before it knew its peers")
	}
	for _, step := range []struct {
		s    *Speaker
		peer bgp.Peer
	}{
		{a, bgp.Peer{Name: "b", Address: addrB, ASN: bgp.DefaultASN, Port: uint16(port)}},
		{b, bgp.Peer{Name: "a", Address: addrA, ASN: bgp.DefaultASN, Port: uint16(port)}},
	} {
		if err := step.s.SetPeers(ctx, []bgp.Peer{step.peer}); err != nil {
			t.Fatalf("set peers: %v", err)
		}
		// Applying the same set again must not touch the session.
		if err := step.s.SetPeers(ctx, []bgp.Peer{step.peer}); err != nil {
			t.Fatalf("set peers again: %v", err)
		}
	}
	waitEstablished(t, a, addrB, true, 20*time.Second)
	waitEstablished(t, b, addrA, true, 20*time.Second)
	eventually(t, 5*time.Second, "both converged", func() (bool, string) {
		return a.Converged() && b.Converged(), fmt.Sprintf("a=%v b=%v", a.Converged(), b.Converged())
	})
	st, err := a.Peers(ctx)
	if err != nil || len(st) != 1 || st[0].Name != "b" || st[0].ASN != bgp.DefaultASN || st[0].Port != uint16(port) {
		t.Fatalf("a's peers: %+v, %v", st, err)
	}

	prefixA, prefixB := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.2.0/24")
	adsA := []bgp.Advertisement{{Prefix: prefixA, NextHop: addrA}}
	drain(b.Changes())
	if err := a.SetAdvertisements(ctx, adsA); err != nil {
		t.Fatalf("a advertise: %v", err)
	}
	if err := b.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: prefixB, NextHop: addrB}}); err != nil {
		t.Fatalf("b advertise: %v", err)
	}
	got := wantPath(t, b, prefixA, addrA, addrA, 10*time.Second)
	if got.LocalPref != 100 || len(got.ASPath) != 0 {
		t.Errorf("iBGP path attributes: %+v", got)
	}
	wantPath(t, a, prefixB, addrB, addrB, 10*time.Second)
	// GoBGP keeps the establishment time in whole seconds, so a positive
	// uptime may take up to a second.
	eventually(t, 5*time.Second, "a's session to b up, advertising one path, GR negotiated", func() (bool, string) {
		st := peerState(t, a, addrB)
		return st.Uptime > 0 && st.Uptime < time.Minute && st.Advertised == 1 && st.Received == 1 &&
			st.GR == bgp.GracefulRestartState{Negotiated: true} && st.LastError == "", fmt.Sprintf("%+v", st)
	})
	select {
	case <-b.Changes():
	default:
		t.Error("b learned a path but Changes was not signalled")
	}
	// Locally originated paths are not "learned".
	if ps := pathsFor(t, a, prefixA); len(ps) != 0 {
		t.Errorf("a lists its own advertisement: %+v", ps)
	}

	// Re-applying the same set is a no-op: GoBGP keeps the very same path.
	age := localPathAge(t, a, prefixA)
	time.Sleep(10 * time.Millisecond)
	if err := a.SetAdvertisements(ctx, adsA); err != nil {
		t.Fatalf("a advertise again: %v", err)
	}
	if again := localPathAge(t, a, prefixA); !again.Equal(age) {
		t.Errorf("re-applying the same advertisements replaced the path (age %s -> %s)", age, again)
	}

	// A new next hop for the same prefix replaces the path at the peer.
	if err := a.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: prefixA, NextHop: netip.MustParseAddr("127.10.0.99")}}); err != nil {
		t.Fatalf("a change next hop: %v", err)
	}
	wantPath(t, b, prefixA, netip.MustParseAddr("127.10.0.99"), addrA, 10*time.Second)

	// Withdrawing removes it at the peer; withdrawing again is a no-op.
	for range 2 {
		if err := a.SetAdvertisements(ctx, nil); err != nil {
			t.Fatalf("a withdraw: %v", err)
		}
	}
	wantNoPath(t, b, prefixA, 10*time.Second)
	wantPath(t, a, prefixB, addrB, addrB, time.Second)

	// Removing the peer removes what it taught us.
	if err := a.SetPeers(ctx, nil); err != nil {
		t.Fatalf("a remove peer: %v", err)
	}
	wantNoPath(t, a, prefixB, 10*time.Second)
	if st, err := a.Peers(ctx); err != nil || len(st) != 0 {
		t.Fatalf("a still lists peers: %+v, %v", st, err)
	}
}

func TestEBGPPeeringAndPeerChange(t *testing.T) {
	port := freePort(t)
	addrA, addrC := netip.MustParseAddr("127.10.0.11"), netip.MustParseAddr("127.10.0.13")
	a := startSpeaker(t, "a", speakerConfig(addrA.String(), 64512, port, 0))
	// c only dials (no listener), as GoBGP's own tests do for one side.
	cfgC := speakerConfig(addrC.String(), 65001, -1, 0)
	cfgC.ListenAddresses = nil
	c := startSpeaker(t, "c", cfgC)
	ctx := context.Background()

	// a first believes c is in its own AS: the session cannot come up.
	if err := a.SetPeers(ctx, []bgp.Peer{{Name: "c", Address: addrC, ASN: 64512}}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetPeers(ctx, []bgp.Peer{{Name: "a", Address: addrA, ASN: 64512, Port: uint16(port)}}); err != nil {
		t.Fatal(err)
	}
	// Fixing the ASN replaces the neighbour.
	if err := a.SetPeers(ctx, []bgp.Peer{{Name: "c", Address: addrC, ASN: 65001}}); err != nil {
		t.Fatal(err)
	}
	waitEstablished(t, c, addrA, false, 30*time.Second)
	st, err := a.Peers(ctx)
	if err != nil || len(st) != 1 || st[0].ASN != 65001 || st[0].State != "established" {
		t.Fatalf("a's peers: %+v, %v", st, err)
	}
	// Without graceful restart there is no End-of-RIB to wait for.
	if !a.Converged() || !c.Converged() {
		t.Errorf("converged without graceful restart: a=%v c=%v", a.Converged(), c.Converged())
	}

	prefix := netip.MustParsePrefix("10.244.11.0/24")
	if err := a.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: prefix, NextHop: addrA}}); err != nil {
		t.Fatal(err)
	}
	got := wantPath(t, c, prefix, addrA, addrA, 10*time.Second)
	if !slices.Equal(got.ASPath, []uint32{64512}) || got.LocalPref != 100 {
		t.Errorf("eBGP path attributes: %+v", got)
	}
}

func TestSetBeforeRunAndAfterStop(t *testing.T) {
	s, err := New(speakerConfig("127.10.0.21", 64512, -1, 0), testLogger(t, "s"))
	if err != nil {
		t.Fatal(err)
	}
	// Before Run, calls wait for it; a deadline ends the wait.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.SetPeers(ctx, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SetPeers before Run: got %v, want deadline exceeded", err)
	}
	// Invalid input is refused without waiting.
	if err := s.SetAdvertisements(context.Background(), []bgp.Advertisement{{}}); err == nil {
		t.Fatal("invalid advertisement accepted")
	}

	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	if _, err := s.Peers(context.Background()); err != nil {
		t.Fatalf("peers: %v", err)
	}
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("second Run accepted")
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if err := s.SetPeers(context.Background(), nil); !errors.Is(err, ErrStopped) {
		t.Fatalf("SetPeers after stop: got %v, want ErrStopped", err)
	}
	if _, err := s.Paths(context.Background()); !errors.Is(err, ErrStopped) {
		t.Fatalf("Paths after stop: got %v, want ErrStopped", err)
	}
}

// TestCleanStopFlushes pins down what a clean stop means: unlike a crash,
// cancelling Run deconfigures the peers with Cease (Hard Reset under RFC
// 8538), and peers drop our routes at once instead of keeping them stale.
func TestCleanStopFlushes(t *testing.T) {
	port := freePort(t)
	addrA, addrB := netip.MustParseAddr("127.10.0.31"), netip.MustParseAddr("127.10.0.32")
	a, stopA := runSpeaker(t, "a", speakerConfig(addrA.String(), bgp.DefaultASN, port, 30*time.Second))
	b := startSpeaker(t, "b", speakerConfig(addrB.String(), bgp.DefaultASN, port, 30*time.Second))
	ctx := context.Background()
	if err := a.SetPeers(ctx, []bgp.Peer{{Name: "b", Address: addrB, ASN: bgp.DefaultASN, Port: uint16(port)}}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPeers(ctx, []bgp.Peer{{Name: "a", Address: addrA, ASN: bgp.DefaultASN, Port: uint16(port), Passive: true}}); err != nil {
		t.Fatal(err)
	}
	prefix := netip.MustParsePrefix("10.244.31.0/24")
	if err := a.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: prefix, NextHop: addrA}}); err != nil {
		t.Fatal(err)
	}
	wantPath(t, b, prefix, addrA, addrA, 20*time.Second)
	eventually(t, 5*time.Second, "a advertises one path to b", func() (bool, string) {
		st := peerState(t, a, addrB)
		return st.Advertised == 1 && st.Uptime > 0, fmt.Sprintf("%+v", st)
	})

	stopA()
	// b saw a's Cease, a Hard Reset under RFC 8538: it is b's last error,
	// and the session has no uptime.
	eventually(t, 5*time.Second, "b's last error names a's NOTIFICATION", func() (bool, string) {
		st := peerState(t, b, addrA)
		return st.State != "established" && st.Uptime == 0 && st.Advertised == 0 &&
			strings.HasSuffix(st.LastError, "(hard-reset)"), fmt.Sprintf("%+v", st)
	})
	eventually(t, 3*time.Second, "b drops a's path without keeping it stale", func() (bool, string) {
		ps := pathsFor(t, b, prefix)
		for _, p := range ps {
			if p.Stale {
				t.Fatalf("clean stop left a stale path: %+v", p)
			}
		}
		return len(ps) == 0, fmt.Sprintf("%+v", ps)
	})
}
