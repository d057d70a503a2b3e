package main

import (
	"bytes"
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/cni-plugin/ipam"
	"github.com/meridian-net/meridian/daemon/apiserver"
	"github.com/meridian-net/meridian/daemon/apiserver/apitest"
	"github.com/meridian-net/meridian/daemon/routes"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Fake sources behind a real API server: the test covers the gRPC client,
// the commands' logic and the output formats, not the kernel or the
// speaker. The dataplane state is apitest's cluster, computed by the real
// services and policy compilers for node-a (pod CIDR 10.244.1.0/24).
type kernel struct {
	mu sync.Mutex
	rs []routes.Route
}

func (k *kernel) Current() ([]routes.Route, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]routes.Route(nil), k.rs...), nil
}

type rib struct {
	paths []bgp.Path
	peers []bgp.PeerState
}

func (r rib) Paths(context.Context) ([]bgp.Path, error)      { return r.paths, nil }
func (r rib) Peers(context.Context) ([]bgp.PeerState, error) { return r.peers, nil }

type store []ipam.Allocation

func (s store) List() ([]ipam.Allocation, error) { return s, nil }

var (
	a = netip.MustParseAddr
	p = netip.MustParsePrefix
)

func testSources() apiserver.Sources {
	st := apitest.Status()
	return apiserver.Sources{
		Kernel: &kernel{rs: []routes.Route{
			{Dst: p("10.244.1.0/24"), Blackhole: true},
			{Dst: p("10.244.2.0/24"), NextHops: []netip.Addr{a("198.18.0.12")}},
			{Dst: p("10.244.9.0/24"), NextHops: []netip.Addr{a("198.18.0.12"), a("198.18.0.13")}},
			// Another rack's node with no ToR knowing its pod CIDR: IPIP.
			{Dst: p("10.244.4.0/24"), NextHops: []netip.Addr{a("198.18.2.14")}, Dev: "tunl0"},
		}},
		BGP: rib{
			paths: []bgp.Path{
				{Prefix: p("10.244.2.0/24"), NextHop: a("198.18.0.12"), PeerAddress: a("198.18.0.12"), LocalPref: 100, Best: true},
				{Prefix: p("10.244.3.0/24"), NextHop: a("198.18.0.13"), PeerAddress: a("198.18.0.13"), ASPath: []uint32{64513, 64514}, LocalPref: 100, Stale: true},
			},
			peers: []bgp.PeerState{
				{Peer: bgp.Peer{Name: "node-b", Address: a("198.18.0.12"), ASN: 64512}, State: "established", EndOfRIB: true,
					Received: 2, Accepted: 1, Rejected: map[string]int{bgp.ReasonOutsideAllowed: 1},
					Uptime: 3*time.Hour + 25*time.Minute + 7*time.Second, Advertised: 3, GR: bgp.GracefulRestartState{Negotiated: true}},
				{Peer: bgp.Peer{Name: "node-c", Address: a("198.18.0.13"), ASN: 64512}, State: "active",
					GR: bgp.GracefulRestartState{Negotiated: true, PeerRestarting: true}, LastError: "notification-received cease/administrative-reset"},
			},
		},
		IPAM: store{
			{Addr: a("10.244.1.5"), Attachment: ipam.Attachment{ContainerID: "0123abcd", IfName: "eth0"}},
			{Addr: a("10.244.1.6")},
		},
		Dataplane: apitest.Dataplane{St: st},
		Counters:  apitest.CountersFor(st.Policy, map[string]uint64{"default/locked egress": 12, "default/web-1 ingress": 4}, 9),
	}
}

func serveSources(t *testing.T, src apiserver.Sources) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meridian.sock")
	srv := apiserver.New(src, nil)
	srv.WatchInterval = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, path) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Lstat(path); err == nil {
			return path
		}
		if time.Now().After(deadline) {
			t.Fatal("API socket did not appear")
		}
	}
}

func serve(t *testing.T) string { return serveSources(t, testSources()) }

// ctl runs meridianctl's whole command line against socket.
func ctl(t *testing.T, socket string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), append([]string{"--socket", socket}, args...), &o, &e)
	return o.String(), e.String(), code
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	golden := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (-update rewrites it):\n got:\n%s\nwant:\n%s", golden, got, want)
	}
}

func TestGolden(t *testing.T) {
	socket := serve(t)
	for name, args := range map[string][]string{
		"routes.table":           {"routes"},
		"routes.wide":            {"routes", "-o", "wide"},
		"routes.json":            {"routes", "-o", "json"},
		"routes.yaml":            {"routes", "-o", "yaml", "--source", "rib"},
		"routes-filter.table":    {"routes", "--prefix", "10.244.2.0/24"},
		"routes-contains.table":  {"routes", "--contains", "10.244.9.1"},
		"routes-rib.table":       {"routes", "--source", "rib"},
		"peers.table":            {"peers"},
		"peers.json":             {"peers", "-o", "json"},
		"ipam.table":             {"ipam"},
		"ipam.json":              {"ipam", "-o", "json"},
		"services.table":         {"services"},
		"services.wide":          {"services", "-o", "wide"},
		"services-dns.json":      {"services", "-n", "kube-system", "kube-dns", "-o", "json"},
		"services-web.yaml":      {"services", "web", "-o", "yaml"},
		"policy.table":           {"policy"},
		"policy.wide":            {"policy", "-o", "wide"},
		"policy-locked.json":     {"policy", "-n", "default", "locked", "-o", "json"},
		"evaluate-allow.table":   {"policy", "evaluate", "10.244.1.6", "10.244.1.5", "8080/TCP"},
		"evaluate-deny.table":    {"policy", "evaluate", "10.244.1.6", "10.244.1.5", "9090/tcp"},
		"evaluate-remote.table":  {"policy", "evaluate", "10.244.1.7", "10.244.2.9", "53/UDP"},
		"evaluate-service.table": {"policy", "evaluate", "10.244.1.6", "10.96.0.20", "80/TCP"},
		"evaluate-deny.yaml":     {"policy", "evaluate", "10.244.1.6", "10.244.1.5", "9090/TCP", "-o", "yaml"},
		"trace-web.table":        {"trace", "10.244.1.6", "10.96.0.20:80/TCP"},
		"trace-web.json":         {"trace", "10.244.1.6", "10.96.0.20:80/TCP", "-o", "json"},
		"trace-dns-locked.table": {"trace", "10.244.1.7", "10.96.0.10:53/UDP"},
		"trace-empty.table":      {"trace", "10.244.1.6", "10.96.0.30:80"},
		"trace-direct.table":     {"trace", "10.244.2.7", "10.244.1.5:9090/TCP"},
		"trace-ipip.table":       {"trace", "10.244.1.6", "10.244.4.9:80/TCP"},
		"trace-offcluster.table": {"trace", "192.0.2.1", "10.96.0.20:80/TCP"},
		// The API's checks only: the cluster and host ones read this
		// machine and a kubeconfig (TestClusterChecks covers the former).
		"peers.wide":   {"peers", "-o", "wide"},
		"doctor.table": {"doctor", "--cluster=false", "--host=false"},
		"doctor.wide":  {"doctor", "-o", "wide", "--cluster=false", "--host=false"},
		"doctor.json":  {"doctor", "-o", "json", "--cluster=false", "--host=false"},
	} {
		t.Run(name, func(t *testing.T) {
			out, errOut, code := ctl(t, socket, args...)
			if code != 0 {
				t.Fatalf("meridianctl %v: exit %d: %s", args, code, errOut)
			}
			checkGolden(t, name, out)
		})
	}
}

// What each finding of doctor claims, independently of the golden text.
func TestDoctorFindings(t *testing.T) {
	fs := runChecksAt(t, serve(t))
	want := map[string]string{
		"dns default/locked":       "error",   // deny-egress blocks its DNS
		"bgp node-c (198.18.0.13)": "error",   // session active
		"services default/empty":   "warning", // no endpoints
		"bgp 198.18.0.13":          "warning", // stale paths
		"policy default/locked":    "info",    // 12 drops
		"policy default/web-1":     "info",    // 4 drops
	}
	got := map[string]string{}
	for _, f := range fs {
		got[f.Check+" "+f.Subject] = f.Severity
		if f.Fix == "" {
			t.Errorf("finding %+v says nothing to do", f)
		}
	}
	for k, sev := range want {
		if got[k] != sev {
			t.Errorf("finding %q: severity %q; want %q (all: %v)", k, got[k], sev, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("findings %v; want exactly %v", got, want)
	}
}

func runChecksAt(t *testing.T, socket string) []finding {
	t.Helper()
	c, conn, err := dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return runChecks(context.Background(), c)
}

// A healthy node: every session up, DNS reachable, nothing dropped.
func TestDoctorHealthy(t *testing.T) {
	src := testSources()
	r := src.BGP.(rib)
	r.peers = r.peers[:1]
	r.paths = r.paths[:1]
	src.BGP = r
	st := apitest.Status()
	// Only Services with endpoints and no policies.
	st.Services.Services = st.Services.Services[1:]
	st.ServiceProblems = nil
	st.Policy.Pods = nil
	src.Dataplane = apitest.Dataplane{St: st}
	src.Counters = apitest.CountersFor(st.Policy, nil, 0)
	out, errOut, code := ctl(t, serveSources(t, src), "doctor", "--cluster=false", "--host=false")
	if code != 0 || out != "no problems found\n" {
		t.Errorf("doctor on a healthy node: exit %d, %q %q", code, out, errOut)
	}
}

// Doctor keeps going when the dataplane has not synced: each check that
// cannot answer is a finding, the BGP checks still run.
func TestDoctorDataplaneDown(t *testing.T) {
	src := testSources()
	src.Dataplane = nil
	fs := runChecksAt(t, serveSources(t, src))
	var got []string
	for _, f := range fs {
		got = append(got, f.Severity+" "+f.Check+" "+f.Subject)
	}
	for _, want := range []string{"warning dataplane meridiand", "error bgp node-c (198.18.0.13)"} {
		if !strings.Contains(strings.Join(got, "\n"), want) {
			t.Errorf("findings %v; missing %q", got, want)
		}
	}
}

func TestWatchRoutes(t *testing.T) {
	src := testSources()
	k := src.Kernel.(*kernel)
	socket := serveSources(t, src)
	c, conn, err := dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := newPipe()
	done := make(chan error, 1)
	go func() { done <- watchRoutes(ctx, pw, c, "10.244.0.0/16", "", "kernel", "table") }()
	want := []string{
		"EVENT  SOURCE  PREFIX         NEXT HOPS                TYPE       PEER  FLAGS",
		"=      kernel  10.244.1.0/24                           blackhole",
		"=      kernel  10.244.2.0/24  198.18.0.12              bgp",
		"=      kernel  10.244.4.0/24  198.18.2.14              bgp",
		"=      kernel  10.244.9.0/24  198.18.0.12,198.18.0.13  bgp",
	}
	for _, w := range want {
		if got := pr.line(t); got != w {
			t.Fatalf("line %q; want %q", got, w)
		}
	}
	k.mu.Lock()
	k.rs = k.rs[:2]
	k.mu.Unlock()
	for _, w := range []string{
		"-  kernel  10.244.4.0/24  198.18.2.14  bgp",
		"-  kernel  10.244.9.0/24  198.18.0.12,198.18.0.13  bgp",
	} {
		if got := pr.line(t); got != w {
			t.Fatalf("line %q; want %q", got, w)
		}
	}
	cancel()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "Canceled") {
		t.Errorf("watch ended with %v; want canceled", err)
	}
}

// pipe collects a writer's output and hands it out line by line.
type pipe struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	ready chan struct{}
}

func newPipe() (*pipe, *pipe) { p := &pipe{ready: make(chan struct{}, 1)}; return p, p }

func (p *pipe) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf.Write(b)
	select {
	case p.ready <- struct{}{}:
	default:
	}
	return len(b), nil
}

func (p *pipe) line(t *testing.T) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		p.mu.Lock()
		s := p.buf.String()
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			p.buf.Next(i + 1)
			p.mu.Unlock()
			return s[:i]
		}
		p.mu.Unlock()
		select {
		case <-p.ready:
		case <-deadline:
			t.Fatal("no line within 10s")
		}
	}
}

func TestErrors(t *testing.T) {
	socket := serve(t)
	missing := filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct {
		socket string
		args   []string
		code   int
		want   string
	}{
		{socket, []string{"routes", "--prefix", "10.244.1.1/24"}, 1, "meridianctl routes: InvalidArgument: prefix filter \"10.244.1.1/24\" has host bits set; did you mean 10.244.1.0/24?\n"},
		{socket, []string{"routes", "--contains", "nope"}, 1, `contains "nope" is not an IP address`},
		{socket, []string{"routes", "--source", "bogus"}, 2, "--source"},
		{socket, []string{"routes", "-o", "xml"}, 2, "unknown output format"},
		{socket, []string{"routes", "extra"}, 2, "unexpected arguments"},
		{missing, []string{"peers"}, 1, "--api-socket"},
		{socket, []string{"policy", "evaluate", "10.0.0.1", "10.0.0.2"}, 2, "usage: policy evaluate"},
		{socket, []string{"policy", "evaluate", "10.0.0.1", "10.0.0.300", "80/TCP"}, 2, `destination "10.0.0.300" is not an IP address`},
		{socket, []string{"policy", "evaluate", "10.0.0.1", "10.0.0.2", "80/ICMP"}, 2, `protocol "ICMP" in "80/ICMP"`},
		{socket, []string{"policy", "evaluate", "10.0.0.1", "10.0.0.2", "70000/UDP"}, 2, "not a number in 1-65535"},
		{socket, []string{"policy", "evaluate", "10.0.0.1", "fd00::2", "80/TCP"}, 1, "different IP families"},
		{socket, []string{"trace", "10.0.0.1", "10.0.0.2"}, 2, "not ADDRESS:PORT"},
		{socket, []string{"trace", "10.0.0.1"}, 2, "usage: trace"},
		{socket, []string{"bogus"}, 2, "unknown command"},
		{socket, []string{"completion", "fish"}, 2, "unknown shell"},
	} {
		out, errOut, code := ctl(t, tc.socket, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("meridianctl %v: exit %d, stderr %q; want exit %d containing %q", tc.args, code, errOut, tc.code, tc.want)
		}
		if out != "" {
			t.Errorf("meridianctl %v wrote output on error: %q", tc.args, out)
		}
	}
}

func TestCompletion(t *testing.T) {
	socket := serve(t)
	for _, shell := range []string{"bash", "zsh"} {
		out, _, code := ctl(t, socket, "completion", shell)
		if code != 0 || !strings.Contains(out, "meridianctl __complete services") || !strings.Contains(out, "doctor") {
			t.Errorf("completion %s: exit %d, script lacks commands or dynamic names:\n%s", shell, code, out)
		}
	}
	if out, _, _ := ctl(t, socket, "__complete", "services"); out != "empty\nweb\nkube-dns\n" {
		t.Errorf("__complete services = %q", out)
	}
	if out, _, _ := ctl(t, socket, "__complete", "pods"); out != "client\nlocked\nweb-1\n" {
		t.Errorf("__complete pods = %q", out)
	}
	if out, _, _ := ctl(t, filepath.Join(t.TempDir(), "none.sock"), "__complete", "pods"); out != "" {
		t.Errorf("__complete without a daemon printed %q", out)
	}
}
