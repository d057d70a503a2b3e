package healthcheck

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"testing"

	"github.com/meridian-net/meridian/daemon/dataplane"
)

func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

func get(t *testing.T, port uint16) (int, Response) {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(int(port)) + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r Response
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("body %q: %v", b, err)
	}
	return resp.StatusCode, r
}

func TestSyncServesCountsAndClosesPorts(t *testing.T) {
	s := New("127.0.0.1", slog.New(slog.DiscardHandler))
	t.Cleanup(s.Close)
	p1, p2 := freePort(t), freePort(t)
	if err := s.Sync([]dataplane.HealthCheck{
		{Namespace: "default", Name: "web", NodePort: p1, LocalEndpoints: 2},
		{Namespace: "default", Name: "empty", NodePort: p2},
	}); err != nil {
		t.Fatal(err)
	}
	code, r := get(t, p1)
	if code != http.StatusOK || r.LocalEndpoints != 2 || r.Service.Name != "web" || !r.ServiceProxyHealthy {
		t.Fatalf("web: %d %+v", code, r)
	}
	if code, r := get(t, p2); code != http.StatusServiceUnavailable || r.LocalEndpoints != 0 {
		t.Fatalf("empty: %d %+v", code, r)
	}

	// The last local endpoint goes away: same listener, now failing; the
	// other port is no longer any Service's and must be closed.
	if err := s.Sync([]dataplane.HealthCheck{{Namespace: "default", Name: "web", NodePort: p1}}); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(t, p1); code != http.StatusServiceUnavailable {
		t.Fatalf("web after scale-down: %d", code)
	}
	if _, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(int(p2))); err == nil {
		t.Fatalf("port %d still open after its Service went away", p2)
	}
}

func TestSyncReportsPortInUseAndServesTheRest(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := uint16(busy.Addr().(*net.TCPAddr).Port)
	s := New("127.0.0.1", slog.New(slog.DiscardHandler))
	t.Cleanup(s.Close)
	ok := freePort(t)
	err = s.Sync([]dataplane.HealthCheck{
		{Namespace: "a", Name: "busy", NodePort: busyPort, LocalEndpoints: 1},
		{Namespace: "a", Name: "ok", NodePort: ok, LocalEndpoints: 1},
	})
	if err == nil {
		t.Fatal("binding a busy port did not fail")
	}
	if code, _ := get(t, ok); code != http.StatusOK {
		t.Fatalf("the other port: %d", code)
	}
}
