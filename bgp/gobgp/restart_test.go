package gobgp

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-net/meridian/bgp"
)

// childEnv carries a childSpec to a re-executed test binary, which then
// runs one speaker as its own process: the only honest way to test what
// peers see when meridiand is SIGKILLed.
const childEnv = "MERIDIAN_GOBGP_TEST_CHILD"

type childSpec struct {
	Config bgp.Config
	Peers  []bgp.Peer
	Ads    []bgp.Advertisement
}

// runChild is the child's main. It reports on stdout: "ready" once peers
// and advertisements are applied, "converged" when Converged turns true,
// and "learned <prefix> <next hop> stale=<bool>" for each new path state.
func runChild(spec string) int {
	var c childSpec
	if err := json.Unmarshal([]byte(spec), &c); err != nil {
		fmt.Fprintln(os.Stderr, "child spec:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := New(c.Config, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	errCh := make(chan error, 1)
	go func() { errCh <- s.Run(ctx) }()
	if err := s.SetPeers(ctx, c.Peers); err != nil {
		fmt.Fprintln(os.Stderr, "child set peers:", err)
		return 2
	}
	if err := s.SetAdvertisements(ctx, c.Ads); err != nil {
		fmt.Fprintln(os.Stderr, "child set advertisements:", err)
		return 2
	}
	fmt.Println("ready")

	converged := false
	seen := map[string]bool{}
	report := func() {
		if !converged && s.Converged() {
			converged = true
			fmt.Println("converged")
		}
		paths, err := s.Paths(ctx)
		if err != nil {
			return
		}
		for _, p := range paths {
			line := fmt.Sprintf("learned %s %s stale=%v", p.Prefix, p.NextHop, p.Stale)
			if !seen[line] {
				seen[line] = true
				fmt.Println(line)
			}
		}
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := <-errCh; err != nil {
				fmt.Fprintln(os.Stderr, "child run:", err)
				return 1
			}
			return 0
		case <-s.Changes():
			report()
		case <-tick.C:
			report()
		}
	}
}

// child is a speaker running in another process.
type child struct {
	cmd   *exec.Cmd
	lines chan string
	eof   chan struct{}
	once  sync.Once
	// seen holds every line read so far, in any order: the child may
	// report learning a path before it reports convergence.
	seen map[string]bool
}

// syncBuffer collects the child's log for the failure report.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

func startChild(t *testing.T, name string, spec childSpec) *child {
	t.Helper()
	raw, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	logs := &syncBuffer{}
	cmd.Stderr = logs
	// If the test binary dies, the child must not outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child %s: %v", name, err)
	}
	c := &child{cmd: cmd, lines: make(chan string, 1000), eof: make(chan struct{}), seen: map[string]bool{}}
	go func() {
		defer close(c.eof)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default:
			}
		}
	}()
	t.Cleanup(func() {
		c.kill()
		if t.Failed() || testing.Verbose() {
			t.Logf("child %s log:\n%s", name, logs.String())
		}
	})
	return c
}

// kill SIGKILLs the child, the way the kernel OOM killer or a crash ends
// meridiand: no NOTIFICATION, the kernel just closes the sockets.
func (c *child) kill() {
	c.once.Do(func() {
		_ = c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.eof
		_ = c.cmd.Wait()
	})
}

func (c *child) waitLine(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for !c.seen[want] {
		select {
		case l := <-c.lines:
			c.seen[l] = true
		case <-c.eof:
			for len(c.lines) > 0 {
				c.seen[<-c.lines] = true
			}
			if !c.seen[want] {
				t.Fatalf("child exited before printing %q", want)
			}
		case <-timer.C:
			t.Fatalf("child did not print %q within %s", want, timeout)
		}
	}
}

type sample struct {
	at      time.Time
	present bool
	stale   bool
	err     error
}

// sampler polls a speaker's paths for one prefix every 50ms.
type sampler struct {
	stop    chan struct{}
	done    chan struct{}
	samples []sample
}

func startSampler(s *Speaker, prefix netip.Prefix) *sampler {
	sm := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(sm.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			sp := sample{at: time.Now()}
			paths, err := s.Paths(context.Background())
			sp.err = err
			for _, p := range paths {
				if p.Prefix == prefix {
					sp.present = true
					sp.stale = p.Stale
				}
			}
			sm.samples = append(sm.samples, sp)
			select {
			case <-sm.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return sm
}

func (sm *sampler) finish() []sample {
	close(sm.stop)
	<-sm.done
	return sm.samples
}

type grPair struct {
	port         int32
	addrA, addrB netip.Addr
	prefixA      netip.Prefix
	prefixB      netip.Prefix
	b            *Speaker
}

// setupGR starts the in-process speaker b and returns how to describe
// the child a that peers with it.
func setupGR(t *testing.T, base string, gr time.Duration) grPair {
	p := grPair{
		port:    freePort(t),
		addrA:   netip.MustParseAddr(base + ".1"),
		addrB:   netip.MustParseAddr(base + ".2"),
		prefixA: netip.MustParsePrefix("10.244.101.0/24"),
		prefixB: netip.MustParsePrefix("10.244.102.0/24"),
	}
	p.b = startSpeaker(t, "b", speakerConfig(p.addrB.String(), bgp.DefaultASN, p.port, gr))
	ctx := context.Background()
	// The lower address dials, the higher one waits (see bgp.Peer.Passive).
	if err := p.b.SetPeers(ctx, []bgp.Peer{{Name: "a", Address: p.addrA, ASN: bgp.DefaultASN, Port: uint16(p.port), Passive: true}}); err != nil {
		t.Fatal(err)
	}
	if err := p.b.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: p.prefixB, NextHop: p.addrB}}); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p grPair) childSpec(gr time.Duration, restarting bool) childSpec {
	cfg := speakerConfig(p.addrA.String(), bgp.DefaultASN, p.port, gr)
	cfg.Restarting = restarting
	return childSpec{
		Config: cfg,
		Peers:  []bgp.Peer{{Name: "b", Address: p.addrB, ASN: bgp.DefaultASN, Port: uint16(p.port)}},
		Ads:    []bgp.Advertisement{{Prefix: p.prefixA, NextHop: p.addrA}},
	}
}

func TestGracefulRestartAfterKill(t *testing.T) {
	if raceDetector {
		t.Skip("GoBGP v3.37 races with path readers while a session goes down and comes back (AdjRib.StaleAll vs ListPath, fsm.opensent vs the paths' PeerInfo); run without -race")
	}
	if testing.Short() {
		t.Skip("kills and restarts a speaker process; takes ~15s")
	}
	const gr = 30 * time.Second
	p := setupGR(t, "127.10.1", gr)

	a := startChild(t, "a", p.childSpec(gr, false))
	a.waitLine(t, "ready", 10*time.Second)
	wantPath(t, p.b, p.prefixA, p.addrA, p.addrA, 20*time.Second)
	waitEstablished(t, p.b, p.addrA, true, 10*time.Second)
	a.waitLine(t, "converged", 10*time.Second)
	a.waitLine(t, fmt.Sprintf("learned %s %s stale=false", p.prefixB, p.addrB), 10*time.Second)

	sm := startSampler(p.b, p.prefixA)
	killed := time.Now()
	a.kill()

	eventually(t, 5*time.Second, "b marks a's path stale", func() (bool, string) {
		ps := pathsFor(t, p.b, p.prefixA)
		return len(ps) == 1 && ps[0].Stale, fmt.Sprintf("%+v", ps)
	})
	// A stale path stays usable: still best, same next hop.
	ps := pathsFor(t, p.b, p.prefixA)
	if len(ps) != 1 || !ps[0].Best || ps[0].NextHop != p.addrA {
		t.Fatalf("stale path: %+v", ps)
	}
	st, err := p.b.Peers(context.Background())
	if err != nil || len(st) != 1 || st[0].State == "established" || st[0].EndOfRIB {
		t.Fatalf("b's view of the dead peer: %+v, %v", st, err)
	}
	time.Sleep(time.Second)

	// meridiand finds its routes still installed and restarts as
	// Restarting: R and F bits set, our updates deferred until b's EoR.
	a2 := startChild(t, "a2", p.childSpec(gr, true))
	a2.waitLine(t, "ready", 10*time.Second)
	wantPath(t, p.b, p.prefixA, p.addrA, p.addrA, gr)
	waitEstablished(t, p.b, p.addrA, true, 5*time.Second)
	a2.waitLine(t, "converged", 10*time.Second)
	a2.waitLine(t, fmt.Sprintf("learned %s %s stale=false", p.prefixB, p.addrB), 10*time.Second)
	refreshed := time.Now()
	time.Sleep(200 * time.Millisecond)

	samples := sm.finish()
	var stale int
	for _, s := range samples {
		if s.err != nil {
			t.Errorf("sample at %s: %v", s.at.Sub(killed), s.err)
		}
		if !s.present {
			t.Errorf("a's path was missing at b %s after the kill", s.at.Sub(killed).Round(time.Millisecond))
		}
		if s.stale {
			stale++
		}
	}
	if stale == 0 {
		t.Error("no sample saw the path stale")
	}
	if last := samples[len(samples)-1]; last.stale {
		t.Error("path still stale after a's End-of-RIB")
	}
	t.Logf("restart window %s: %d samples, %d stale, path present in all", refreshed.Sub(killed).Round(time.Millisecond), len(samples), stale)
}

func TestGracefulRestartExpires(t *testing.T) {
	if raceDetector {
		t.Skip("GoBGP v3.37 races with path readers while a session goes down and comes back (AdjRib.StaleAll vs ListPath, fsm.opensent vs the paths' PeerInfo); run without -race")
	}
	if testing.Short() {
		t.Skip("waits for a restart time to run out")
	}
	const gr = 3 * time.Second
	p := setupGR(t, "127.10.2", gr)

	a := startChild(t, "a", p.childSpec(gr, false))
	a.waitLine(t, "ready", 10*time.Second)
	wantPath(t, p.b, p.prefixA, p.addrA, p.addrA, 20*time.Second)
	waitEstablished(t, p.b, p.addrA, true, 10*time.Second)

	sm := startSampler(p.b, p.prefixA)
	killed := time.Now()
	a.kill()
	wantNoPath(t, p.b, p.prefixA, gr+5*time.Second)
	gone := time.Now()
	samples := sm.finish()

	// Until the restart time ran out the path was there, and stale once
	// b noticed the dead session.
	lastPresent := killed
	for _, s := range samples {
		if s.present {
			lastPresent = s.at
		}
	}
	kept := lastPresent.Sub(killed)
	if kept < gr-500*time.Millisecond {
		t.Errorf("stale path dropped %s after the kill, before the %s restart time", kept, gr)
	}
	for _, s := range samples {
		if !s.present && s.at.Before(lastPresent) {
			t.Errorf("path missing at %s, then back", s.at.Sub(killed))
		}
	}
	t.Logf("path kept %s after the kill, gone after %s (restart time %s)", kept.Round(time.Millisecond), gone.Sub(killed).Round(time.Millisecond), gr)
}
