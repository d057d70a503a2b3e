// Package healthcheck answers load balancers' health checks for Services
// with externalTrafficPolicy Local, as kube-proxy does on each Service's
// healthCheckNodePort: 200 while this node has a ready local endpoint, 503
// otherwise, so the load balancer only sends traffic to nodes that can serve
// it without a second hop (which would lose the client address).
package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/meridian-net/meridian/daemon/dataplane"
)

// Server runs one HTTP listener per health-check node port.
type Server struct {
	// Host is the address listeners bind to; empty means every address.
	host string
	log  *slog.Logger

	mu        sync.Mutex
	listeners map[uint16]*listener
}

type listener struct {
	srv   *http.Server
	mu    sync.Mutex
	check dataplane.HealthCheck
}

// Response is the body kube-proxy sends; load balancer controllers and
// people debugging them know it.
type Response struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// New returns a Server binding on host ("" for all addresses). It does no
// IO until Sync.
func New(host string, log *slog.Logger) *Server {
	return &Server{host: host, log: log.With("subsys", "healthcheck"), listeners: map[uint16]*listener{}}
}

var _ dataplane.HealthChecks = (*Server)(nil)

// Sync opens listeners for new ports, closes those no Service uses any more
// and updates the counts the others report. A port that cannot be bound is
// reported in the error; the other ports are served regardless.
func (s *Server) Sync(checks []dataplane.HealthCheck) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[uint16]dataplane.HealthCheck{}
	for _, c := range checks {
		want[c.NodePort] = c
	}
	for port, l := range s.listeners {
		if _, ok := want[port]; !ok {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = l.srv.Shutdown(ctx)
			cancel()
			delete(s.listeners, port)
		}
	}
	var errs []error
	for port, c := range want {
		if l, ok := s.listeners[port]; ok {
			l.mu.Lock()
			l.check = c
			l.mu.Unlock()
			continue
		}
		l := &listener{check: c}
		ln, err := net.Listen("tcp", net.JoinHostPort(s.host, strconv.Itoa(int(port))))
		if err != nil {
			errs = append(errs, fmt.Errorf("health check of %s/%s on port %d: %w", c.Namespace, c.Name, port, err))
			continue
		}
		l.srv = &http.Server{Handler: l, ReadHeaderTimeout: 5 * time.Second}
		s.listeners[port] = l
		go func() {
			if err := l.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Warn("health-check listener stopped", "port", port, "err", err)
			}
		}()
	}
	return errors.Join(errs...)
}

// Close stops every listener.
func (s *Server) Close() {
	_ = s.Sync(nil)
}

func (l *listener) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	l.mu.Lock()
	c := l.check
	l.mu.Unlock()
	var r Response
	r.Service.Namespace, r.Service.Name = c.Namespace, c.Name
	r.LocalEndpoints = c.LocalEndpoints
	r.ServiceProxyHealthy = true
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if c.LocalEndpoints == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(r)
}
