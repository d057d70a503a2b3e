package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/cni-plugin/opstats"
	"github.com/meridian-net/meridian/daemon/dataplane"
	"github.com/meridian-net/meridian/daemon/routes"
)

func scrape(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestMetricsExposeSyncsSessionsAndIPAM(t *testing.T) {
	m := New()
	log := slog.New(slog.DiscardHandler)
	m.WatchBGP(func() ([]bgp.PeerState, error) {
		return []bgp.PeerState{{
			Peer:  bgp.Peer{Address: netip.MustParseAddr("198.18.0.12"), ASN: 64512},
			State: "established", Received: 3, Accepted: 2, Rejected: map[string]int{"defaultRoute": 1},
		}}, nil
	}, log)
	m.WatchIPAM(func() (int, int, error) { return 5, 254, nil }, log)
	m.ObserveSync(dataplane.SyncReport{Duration: 3 * time.Millisecond, Ops: 12, Services: 4, Pods: 2, StaleFlows: 1})
	m.ObserveSync(dataplane.SyncReport{Duration: time.Millisecond, Err: errors.New("refused"), FailedClosed: 2})
	m.ObserveRoutes(routes.Result{Added: 3, Replaced: 1, Kept: 7, Failed: 1})
	m.ObserveRoutes(routes.Result{Added: 1, Removed: 2})

	code, body := scrape(t, m.Handler(nil), "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`meridian_bgp_session_up{peer="198.18.0.12",peer_asn="64512"} 1`,
		`meridian_bgp_prefixes{peer="198.18.0.12",state="accepted"} 2`,
		`meridian_bgp_prefixes_rejected{peer="198.18.0.12",reason="defaultRoute"} 1`,
		`meridian_ipam_addresses_allocated 5`,
		`meridian_ipam_addresses_total 254`,
		`meridian_nftables_sync_duration_seconds_count 2`,
		`meridian_nftables_sync_failures_total 1`,
		`meridian_nftables_operations_total 12`,
		`meridian_services_programmed 4`,
		`meridian_policy_local_pods 2`,
		`meridian_conntrack_stale_entries_deleted_total 1`,
		`meridian_policy_failed_closed_pods 2`,
		`meridian_route_operations_total{op="add"} 4`,
		`meridian_route_operations_total{op="replace"} 1`,
		`meridian_route_operations_total{op="remove"} 2`,
		`meridian_route_failures_total 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("missing %q", want)
		}
	}
}

func TestBGPCollectorWithoutSpeakerOmitsSeries(t *testing.T) {
	m := New()
	m.WatchBGP(func() ([]bgp.PeerState, error) { return nil, errors.New("no speaker yet") }, slog.New(slog.DiscardHandler))
	code, body := scrape(t, m.Handler(nil), "/metrics")
	if code != http.StatusOK || strings.Contains(body, "meridian_bgp_session_up{") {
		t.Fatalf("code %d, body has BGP series: %v", code, strings.Contains(body, "meridian_bgp_session_up{"))
	}
}

func TestReadyzListsChecks(t *testing.T) {
	routed := make(chan struct{})
	h := New().Handler([]Check{
		{Name: "routes", Ready: Closed(routed, "BGP has not converged")},
		{Name: "nftables", Ready: func() error { return nil }},
	})
	if code, _ := scrape(t, h, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz: %d", code)
	}
	code, body := scrape(t, h, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]routes failed: BGP has not converged") || !strings.Contains(body, "[+]nftables ok") {
		t.Fatalf("/readyz before: %d %q", code, body)
	}
	close(routed)
	if code, body := scrape(t, h, "/readyz"); code != http.StatusOK || !strings.Contains(body, "readyz check passed") {
		t.Fatalf("/readyz after: %d %q", code, body)
	}
}

// meridian-cni's records reach /metrics once, whether a scrape or Run
// drains them.
func TestCNIRecordsBecomeMetrics(t *testing.T) {
	dir := t.TempDir()
	m := New()
	c := m.WatchCNI(dir, slog.New(slog.DiscardHandler))
	for _, r := range []opstats.Record{
		{Op: opstats.OpAdd, Duration: 30 * time.Millisecond},
		{Op: opstats.OpAdd, Code: 11, Duration: 2 * time.Millisecond},
		{Op: opstats.OpAdd, Code: 11, Duration: 2 * time.Millisecond},
		{Op: opstats.OpDel, Duration: 5 * time.Millisecond},
	} {
		if err := opstats.Append(dir, r); err != nil {
			t.Fatal(err)
		}
	}
	_, body := scrape(t, m.Handler(nil), "/metrics")
	for _, want := range []string{
		`meridian_cni_operation_duration_seconds_count{op="add"} 3`,
		`meridian_cni_operation_duration_seconds_count{op="del"} 1`,
		`meridian_cni_operation_duration_seconds_count{op="check"} 0`,
		`meridian_cni_operation_duration_seconds_bucket{op="add",le="0.002"} 2`,
		`meridian_cni_operation_errors_total{code="11",op="add"} 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// Run drains between scrapes; the next scrape counts nothing twice.
	if err := opstats.Append(dir, opstats.Record{Op: opstats.OpCheck, Code: 101, Duration: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.DrainInterval = time.Hour
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if st, err := os.Stat(filepath.Join(dir, opstats.FileName)); err == nil && st.Size() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not drain the records")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	_, body = scrape(t, m.Handler(nil), "/metrics")
	for _, want := range []string{
		`meridian_cni_operation_duration_seconds_count{op="add"} 3`,
		`meridian_cni_operation_duration_seconds_count{op="check"} 1`,
		`meridian_cni_operation_errors_total{code="101",op="check"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("after Run drained: /metrics lacks %s", want)
		}
	}
}
