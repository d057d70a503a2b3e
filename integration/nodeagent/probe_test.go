package nodeagent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestProbePort(t *testing.T) {
	c := corev1.Container{Name: "meridiand", Ports: []corev1.ContainerPort{
		{Name: "metrics", ContainerPort: 9090}, {Name: "health", ContainerPort: 9099}, {ContainerPort: 179},
	}}
	for _, tc := range []struct {
		port    intstr.IntOrString
		want    int
		wantErr string
	}{
		{port: intstr.FromInt32(8080), want: 8080},
		{port: intstr.FromString("health"), want: 9099},
		{port: intstr.FromString("metrics"), want: 9090},
		{port: intstr.FromString("bgp"), wantErr: `container meridiand has no port named "bgp"`},
	} {
		got, err := probePort(c, tc.port)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("port %v: %d, %v; want error %q", tc.port, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("port %v: %d, %v; want %d", tc.port, got, err, tc.want)
		}
	}
}

// probeRequest is what a test server saw of one request.
type probeRequest struct {
	path   string
	host   string
	header http.Header
}

// probeServer serves /ok, /redirect, /fail and /slow on loopback and
// records the requests.
func probeServer(t *testing.T) (*httptest.Server, func() []probeRequest) {
	t.Helper()
	var mu sync.Mutex
	var reqs []probeRequest
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	mux.HandleFunc("/created", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://192.0.2.1/elsewhere", http.StatusFound)
	})
	mux.HandleFunc("/redirect-fail", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/fail", http.StatusFound)
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "bgp: no established peer\n", http.StatusInternalServerError)
	})
	mux.HandleFunc("/notfound", http.NotFound)
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reqs = append(reqs, probeRequest{path: r.URL.Path, host: r.Host, header: r.Header.Clone()})
		mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s, func() []probeRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]probeRequest(nil), reqs...)
	}
}

func serverPort(t *testing.T, s *httptest.Server) int {
	t.Helper()
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func httpGetProbe(path string, port intstr.IntOrString) *corev1.Probe {
	return &corev1.Probe{TimeoutSeconds: 1, ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: port}}}
}

func TestProbeHTTPGet(t *testing.T) {
	s, requests := probeServer(t)
	port := serverPort(t, s)
	ctr := corev1.Container{Name: "meridiand", Ports: []corev1.ContainerPort{{Name: "health", ContainerPort: int32(port)}}}
	for _, tc := range []struct {
		name     string
		probe    *corev1.Probe
		podIP    string
		wantErr  []string
		wantPath string
	}{
		{name: "200", probe: httpGetProbe("/ok", intstr.FromInt(port)), podIP: "127.0.0.1", wantPath: "/ok"},
		{name: "204", probe: httpGetProbe("/created", intstr.FromInt(port)), podIP: "127.0.0.1", wantPath: "/created"},
		{name: "path without slash", probe: httpGetProbe("ok", intstr.FromInt(port)), podIP: "127.0.0.1", wantPath: "/ok"},
		{name: "named port", probe: httpGetProbe("/ok", intstr.FromString("health")), podIP: "127.0.0.1", wantPath: "/ok"},
		// A redirect elsewhere passes without being followed.
		{name: "302", probe: httpGetProbe("/redirect", intstr.FromInt(port)), podIP: "127.0.0.1", wantPath: "/redirect"},
		{name: "500", probe: httpGetProbe("/fail", intstr.FromInt(port)), podIP: "127.0.0.1", wantPath: "/fail",
			wantErr: []string{"statuscode: 500", "bgp: no established peer"}},
		{name: "404", probe: httpGetProbe("/notfound", intstr.FromInt(port)), podIP: "127.0.0.1", wantPath: "/notfound",
			wantErr: []string{"statuscode: 404", "404 page not found"}},
		{name: "unknown port name", probe: httpGetProbe("/ok", intstr.FromString("admin")), podIP: "127.0.0.1",
			wantErr: []string{`no port named "admin"`}},
		{name: "host overrides the pod IP", podIP: "192.0.2.1", wantPath: "/ok",
			probe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Host: "127.0.0.1", Path: "/ok", Port: intstr.FromInt(port)}}}},
		{name: "timeout", podIP: "127.0.0.1", wantPath: "/slow", wantErr: []string{"Timeout"},
			probe: &corev1.Probe{TimeoutSeconds: 1, ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/slow", Port: intstr.FromInt(port)}}}},
		{name: "https against http", podIP: "127.0.0.1", wantErr: []string{"http"},
			probe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Scheme: corev1.URISchemeHTTPS, Path: "/ok", Port: intstr.FromInt(port)}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(requests())
			err := newProber(tc.probe, ctr, tc.podIP).once(context.Background())
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatal("probe passed")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
			} else if err != nil {
				t.Fatalf("probe failed: %v", err)
			}
			got := requests()[n:]
			if tc.wantPath == "" {
				if len(got) != 0 {
					t.Errorf("requests %+v", got)
				}
				return
			}
			if len(got) != 1 || got[0].path != tc.wantPath {
				t.Fatalf("requests %+v, want one to %s", got, tc.wantPath)
			}
			if ua := got[0].header.Get("User-Agent"); !strings.HasPrefix(ua, "kube-probe/") {
				t.Errorf("User-Agent %q", ua)
			}
		})
	}
}

func TestProbeHTTPSInsecure(t *testing.T) {
	s := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(s.Close)
	p := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Scheme: corev1.URISchemeHTTPS, Path: "/", Port: intstr.FromInt(serverPort(t, s))}}}
	// The kubelet does not verify the certificate.
	if err := newProber(p, corev1.Container{}, "127.0.0.1").once(context.Background()); err != nil {
		t.Errorf("https probe against a self-signed server: %v", err)
	}
}

func TestProbeHTTPHeaders(t *testing.T) {
	s, requests := probeServer(t)
	p := httpGetProbe("/ok", intstr.FromInt(serverPort(t, s)))
	p.HTTPGet.HTTPHeaders = []corev1.HTTPHeader{
		{Name: "X-Probe", Value: "a"}, {Name: "X-Probe", Value: "b"}, {Name: "Authorization", Value: "Bearer t"},
	}
	if err := newProber(p, corev1.Container{}, "127.0.0.1").once(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := requests()
	if len(got) != 1 {
		t.Fatalf("requests %+v", got)
	}
	if v := got[0].header.Values("X-Probe"); len(v) != 2 || v[0] != "a" || v[1] != "b" {
		t.Errorf("X-Probe %q", v)
	}
	if v := got[0].header.Get("Authorization"); v != "Bearer t" {
		t.Errorf("Authorization %q", v)
	}
}

// The kubelet follows a redirect to the same host (probe/http
// RedirectChecker; only redirects to another host pass unfollowed), so a
// redirect to a failing page fails the probe.
func TestProbeHTTPSameHostRedirect(t *testing.T) {
	s, requests := probeServer(t)
	p := httpGetProbe("/redirect-fail", intstr.FromInt(serverPort(t, s)))
	err := newProber(p, corev1.Container{}, "127.0.0.1").once(context.Background())
	if err == nil || !strings.Contains(err.Error(), "statuscode: 500") {
		t.Errorf("redirect to a failing page on the same host: err %v, requests %+v", err, requests())
	}
}

// A Host header in httpHeaders is the request's Host, as the kubelet's
// newProbeRequest sets req.Host; net/http ignores a Host entry in Header.
func TestProbeHTTPHostHeader(t *testing.T) {
	s, requests := probeServer(t)
	p := httpGetProbe("/ok", intstr.FromInt(serverPort(t, s)))
	p.HTTPGet.HTTPHeaders = []corev1.HTTPHeader{{Name: "Host", Value: "health.meridian.local"}}
	if err := newProber(p, corev1.Container{}, "127.0.0.1").once(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := requests(); len(got) != 1 || got[0].host != "health.meridian.local" {
		t.Errorf("requests %+v, want Host health.meridian.local", got)
	}
}

func TestProbeTCPSocket(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var accepted atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	open := l.Addr().(*net.TCPAddr).Port

	// A port nothing listens on: bind one, then close it.
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := cl.Addr().(*net.TCPAddr).Port
	cl.Close()

	ctr := corev1.Container{Name: "meridiand", Ports: []corev1.ContainerPort{{Name: "bgp", ContainerPort: int32(open)}}}
	tcp := func(host string, port intstr.IntOrString) *corev1.Probe {
		return &corev1.Probe{TimeoutSeconds: 1, ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Host: host, Port: port}}}
	}
	for _, tc := range []struct {
		name    string
		probe   *corev1.Probe
		podIP   string
		wantErr string
	}{
		{name: "open", probe: tcp("", intstr.FromInt(open)), podIP: "127.0.0.1"},
		{name: "named", probe: tcp("", intstr.FromString("bgp")), podIP: "127.0.0.1"},
		{name: "host override", probe: tcp("127.0.0.1", intstr.FromInt(open)), podIP: "192.0.2.1"},
		{name: "closed", probe: tcp("", intstr.FromInt(closed)), podIP: "127.0.0.1", wantErr: "connection refused"},
		{name: "unknown name", probe: tcp("", intstr.FromString("nope")), podIP: "127.0.0.1", wantErr: `no port named "nope"`},
		{name: "exec unsupported", podIP: "127.0.0.1", wantErr: "only httpGet and tcpSocket",
			probe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := newProber(tc.probe, ctr, tc.podIP).once(context.Background())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("err %v, want one saying %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Errorf("probe failed: %v", err)
			}
		})
	}
	if accepted.Load() == 0 {
		t.Error("no connection reached the listener")
	}
}

// report is one call of run's report function.
type report struct {
	ok   bool
	err  error
	hits int32 // probes the server had answered by then
}

// scriptedServer answers the probes with the statuses of script in turn,
// then with the last one.
func scriptedServer(t *testing.T, script ...int) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var hits atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(hits.Add(1))
		code := script[min(n, len(script))-1]
		w.WriteHeader(code)
		w.Write([]byte("probe " + strconv.Itoa(n)))
	}))
	t.Cleanup(s.Close)
	return s, &hits
}

// runProber runs p until it has reported want times or the time is up,
// then stops it and checks that run returns.
func runProber(t *testing.T, p *prober, initial bool, hits *atomic.Int32, want int, limit time.Duration) []report {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var reports []report
	got := make(chan struct{}, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.run(ctx, initial, func(ok bool, err error) {
			mu.Lock()
			reports = append(reports, report{ok: ok, err: err, hits: hits.Load()})
			mu.Unlock()
			got <- struct{}{}
		})
	}()
	timeout := time.After(limit)
	for n := 0; n < want; n++ {
		select {
		case <-got:
		case <-timeout:
			n = want
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
	mu.Lock()
	defer mu.Unlock()
	return reports
}

func TestProberRunThresholds(t *testing.T) {
	t.Run("readiness", func(t *testing.T) {
		t.Parallel()
		// ok, fail, ok, ok: the success run restarts after the failure.
		s, hits := scriptedServer(t, 200, 500, 200, 200)
		p := httpGetProbe("/", intstr.FromInt(serverPort(t, s)))
		p.PeriodSeconds, p.SuccessThreshold, p.FailureThreshold = 1, 2, 3
		reports := runProber(t, newProber(p, corev1.Container{}, "127.0.0.1"), false, hits, 1, 5*time.Second)
		if len(reports) != 1 || !reports[0].ok || reports[0].err != nil {
			t.Fatalf("reports %+v, want one pass", reports)
		}
		if reports[0].hits != 4 {
			t.Errorf("ready after %d probes, want 4 (two passes in a row)", reports[0].hits)
		}
	})
	t.Run("liveness", func(t *testing.T) {
		t.Parallel()
		// A single failure between passes does not count; two in a row do.
		s, hits := scriptedServer(t, 500, 200, 500, 500, 200)
		p := httpGetProbe("/", intstr.FromInt(serverPort(t, s)))
		p.PeriodSeconds, p.FailureThreshold = 1, 2
		reports := runProber(t, newProber(p, corev1.Container{}, "127.0.0.1"), true, hits, 1, 5*time.Second)
		if len(reports) != 1 || reports[0].ok {
			t.Fatalf("reports %+v, want one failure", reports)
		}
		if reports[0].hits != 4 {
			t.Errorf("failed after %d probes, want 4 (two failures in a row)", reports[0].hits)
		}
		if reports[0].err == nil || !strings.Contains(reports[0].err.Error(), "statuscode: 500") {
			t.Errorf("failure error %v", reports[0].err)
		}
	})
	t.Run("no change no report", func(t *testing.T) {
		t.Parallel()
		// Passing from the start of a liveness probe (initial true)
		// reports nothing.
		s, hits := scriptedServer(t, 200)
		p := httpGetProbe("/", intstr.FromInt(serverPort(t, s)))
		p.PeriodSeconds = 1
		reports := runProber(t, newProber(p, corev1.Container{}, "127.0.0.1"), true, hits, 1, 2500*time.Millisecond)
		if len(reports) != 0 {
			t.Errorf("reports %+v for a probe that never changed", reports)
		}
		if n := hits.Load(); n < 2 || n > 4 {
			t.Errorf("%d probes in 2.5 s at a 1 s period", n)
		}
	})
	t.Run("defaults to one", func(t *testing.T) {
		t.Parallel()
		// Zero thresholds count as one (the API server defaults them;
		// the agent must not hang on a zero).
		s, hits := scriptedServer(t, 200, 500)
		p := httpGetProbe("/", intstr.FromInt(serverPort(t, s)))
		reports := runProber(t, newProber(p, corev1.Container{}, "127.0.0.1"), false, hits, 2, 4*time.Second)
		if len(reports) != 2 || !reports[0].ok || reports[0].hits != 1 || reports[1].ok || reports[1].hits != 2 {
			t.Errorf("reports %+v, want pass after probe 1, failure after probe 2", reports)
		}
	})
	t.Run("initial delay", func(t *testing.T) {
		t.Parallel()
		s, hits := scriptedServer(t, 200)
		p := httpGetProbe("/", intstr.FromInt(serverPort(t, s)))
		p.InitialDelaySeconds = 10
		start := time.Now()
		reports := runProber(t, newProber(p, corev1.Container{}, "127.0.0.1"), false, hits, 1, 1500*time.Millisecond)
		if len(reports) != 0 || hits.Load() != 0 {
			t.Errorf("probed during the initial delay: %+v, %d hits", reports, hits.Load())
		}
		if time.Since(start) > 4*time.Second {
			t.Errorf("cancel during the initial delay took %v", time.Since(start))
		}
	})
}

// A cancelled context ends a probe in flight without a report.
func TestProberRunCancelInFlight(t *testing.T) {
	s, _ := probeServer(t)
	p := httpGetProbe("/slow", intstr.FromInt(serverPort(t, s)))
	p.TimeoutSeconds = 10
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var reported atomic.Bool
	go func() {
		defer close(done)
		newProber(p, corev1.Container{}, "127.0.0.1").run(ctx, true, func(bool, error) { reported.Store(true) })
	}()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("run kept waiting for the probe after cancel")
	}
	if reported.Load() {
		t.Error("a cancelled probe was reported")
	}
	if err := ctx.Err(); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}
