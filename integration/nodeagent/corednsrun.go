package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Restart backoff of a CoreDNS that exits, as the kubelet's CrashLoopBackOff
// starts, but capped low: the lab wants DNS back within seconds.
const (
	coreDNSRestartBase = time.Second
	coreDNSRestartMax  = 30 * time.Second
	// coreDNSStopGrace is how long CoreDNS has to exit after SIGTERM.
	coreDNSStopGrace = 5 * time.Second
	probeTimeout     = time.Second
)

// coreDNSSpec is everything one CoreDNS run depends on: when the wanted
// spec differs from the running one, the agent restarts CoreDNS.
type coreDNSSpec struct {
	Bin       string
	NetnsPath string
	// Dir holds the run's Corefile (rendered for the lab), kubeconfig, token
	// and log.
	Dir   string
	PodIP netip.Addr
	// Corefile is the rendered content of Dir/Corefile.
	Corefile string
	// Probe is the container's readiness probe; HasProbe false means ready
	// while the process runs.
	Probe    httpProbe
	HasProbe bool
	// APIRelay is the loopback address inside the pod netns that the
	// kubeconfig names, and APIServer the API server it relays to.
	APIRelay  netip.AddrPort
	APIServer string
}

func (s coreDNSSpec) corefilePath() string { return filepath.Join(s.Dir, "Corefile") }
func (s coreDNSSpec) logPath() string      { return filepath.Join(s.Dir, "coredns.log") }

// coreDNSRun is one pod's CoreDNS process, supervised: restarted when it
// exits, probed for readiness, and given a relay to the API server inside
// the pod's netns. The relay exists because the control plane's namespace
// has no routes to pod addresses: CoreDNS's connection is accepted inside
// the pod and dialed again from the node, which reaches the API server on
// the lab segment, as the API server's own address.
type coreDNSRun struct {
	spec     coreDNSSpec
	log      *slog.Logger
	onChange func()

	ready    atomic.Bool
	running  atomic.Bool
	restarts atomic.Int32

	cancel context.CancelFunc
	relay  net.Listener
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// startCoreDNS opens the API relay in the pod's netns and starts the
// supervisor and prober. onChange is called (from their goroutines) when
// readiness changes or the process restarts, so the pod's status can be
// written again.
func startCoreDNS(spec coreDNSSpec, log *slog.Logger, onChange func()) (*coreDNSRun, error) {
	r := &coreDNSRun{spec: spec, log: log, onChange: onChange, conns: map[net.Conn]struct{}{}}
	err := ns.WithNetNSPath(spec.NetnsPath, func(ns.NetNS) error {
		l, err := net.Listen("tcp4", spec.APIRelay.String())
		if err != nil {
			return fmt.Errorf("listen %s for the api relay: %w", spec.APIRelay, err)
		}
		r.relay = l
		return nil
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.wg.Add(3)
	go func() { defer r.wg.Done(); r.serveRelay() }()
	go func() { defer r.wg.Done(); r.supervise(ctx) }()
	go func() { defer r.wg.Done(); r.probe(ctx) }()
	return r, nil
}

// Ready reports the last readiness probe's verdict.
func (r *coreDNSRun) Ready() bool { return r != nil && r.ready.Load() }

// Stop ends CoreDNS (SIGTERM, then SIGKILL after a grace period), the
// prober and the relay with its connections, and waits for all of them.
// It is safe on nil and twice.
func (r *coreDNSRun) Stop() {
	if r == nil {
		return
	}
	r.cancel()
	r.relay.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.conns = nil
	r.mu.Unlock()
	r.wg.Wait()
	r.ready.Store(false)
}

func (r *coreDNSRun) supervise(ctx context.Context) {
	wait := coreDNSRestartBase
	for {
		t0 := time.Now()
		err := r.runOnce(ctx)
		r.running.Store(false)
		if r.ready.Swap(false) {
			r.onChange()
		}
		if ctx.Err() != nil {
			return
		}
		n := r.restarts.Add(1)
		// A run that lasted a while resets the backoff, as the kubelet does.
		if time.Since(t0) > 10*coreDNSRestartMax {
			wait = coreDNSRestartBase
		}
		r.log.Warn("coredns exited, restarting", "err", err, "restarts", n, "in", wait, "log", r.spec.logPath())
		r.onChange()
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, coreDNSRestartMax)
	}
}

// runOnce starts CoreDNS in the pod's netns and waits for it to exit.
func (r *coreDNSRun) runOnce(ctx context.Context) error {
	logf, err := os.OpenFile(r.spec.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open coredns log: %w", err)
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, r.spec.Bin, "-conf", r.spec.corefilePath())
	cmd.Dir = r.spec.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = coreDNSStopGrace
	// Dies with the agent: an orphan would hold port 53 in the pod netns
	// against the CoreDNS the next agent starts.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// A child inherits the network namespace of the thread that forks it:
	// starting from inside the pod's netns is all it takes.
	if err := ns.WithNetNSPath(r.spec.NetnsPath, func(ns.NetNS) error { return cmd.Start() }); err != nil {
		return fmt.Errorf("start coredns: %w", err)
	}
	r.running.Store(true)
	r.log.Info("coredns started", "pid", cmd.Process.Pid, "ip", r.spec.PodIP.String())
	if !r.spec.HasProbe {
		r.ready.Store(true)
		r.onChange()
	}
	return cmd.Wait()
}

// probe runs the readiness probe against the pod's IP from the node, as
// the kubelet does, and reports changes.
func (r *coreDNSRun) probe(ctx context.Context) {
	if !r.spec.HasProbe {
		return
	}
	p := r.spec.Probe
	url := "http://" + net.JoinHostPort(r.spec.PodIP.String(), strconv.Itoa(int(p.Port))) + p.Path
	client := &http.Client{Timeout: probeTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	delay := time.Duration(p.InitialDelay) * time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = time.Duration(p.Period) * time.Second
		ok := r.running.Load() && probeOnce(ctx, client, url)
		if r.ready.Swap(ok) != ok {
			r.log.Info("coredns readiness changed", "ready", ok)
			r.onChange()
		}
	}
}

// probeOnce is one HTTP probe: success is a status from 200 to 399, as
// for the kubelet.
func probeOnce(ctx context.Context, client *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}

// serveRelay accepts CoreDNS's API connections inside the pod netns and
// splices each to a connection to the API server made from the node.
func (r *coreDNSRun) serveRelay() {
	d := net.Dialer{Timeout: 10 * time.Second}
	for {
		in, err := r.relay.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.log.Warn("api relay accept failed", "err", err)
			}
			return
		}
		out, err := d.Dial("tcp", r.spec.APIServer)
		if err != nil {
			r.log.Warn("api relay cannot reach the api server", "server", r.spec.APIServer, "err", err)
			in.Close()
			continue
		}
		if !r.track(in, out) {
			return
		}
		r.wg.Add(2)
		go func() { defer r.wg.Done(); r.splice(in, out) }()
		go func() { defer r.wg.Done(); r.splice(out, in) }()
	}
}

// splice copies src to dst, then closes both (and forgets them), which
// also ends the copy in the other direction.
func (r *coreDNSRun) splice(dst, src net.Conn) {
	io.Copy(dst, src)
	r.mu.Lock()
	if r.conns != nil {
		delete(r.conns, dst)
		delete(r.conns, src)
	}
	r.mu.Unlock()
	dst.Close()
	src.Close()
}

func (r *coreDNSRun) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		r.conns[c] = struct{}{}
	}
	return true
}
