// Package apiserver serves meridian.v1, the node API of meridiand, on a Unix
// socket and, optionally, on TCP with mutual TLS. It only reads: every answer comes from the component that owns the
// state (the kernel route applier, the BGP speaker, the IPAM store), through
// small interfaces, and is streamed one row per message.
package apiserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/cni-plugin/ipam"
	"github.com/meridian-net/meridian/daemon/dataplane"
	"github.com/meridian-net/meridian/daemon/encap"
	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/routes"
)

// ErrUnavailable is what a source returns (wrapped) while it cannot answer
// yet, e.g. before the BGP speaker started. Clients get codes.Unavailable
// and may retry.
var ErrUnavailable = errors.New("not available yet")

// KernelRoutes is the routes Meridian owns in the kernel; *routes.Applier
// satisfies it.
type KernelRoutes interface {
	Current() ([]routes.Route, error)
}

// RIB is the BGP speaker's view; bgp.Speaker satisfies it.
type RIB interface {
	Paths(ctx context.Context) ([]bgp.Path, error)
	Peers(ctx context.Context) ([]bgp.PeerState, error)
}

// Allocations is the node's IPAM state; *ipam.Store satisfies it.
type Allocations interface {
	List() ([]ipam.Allocation, error)
}

// Dataplane is the last applied Service NAT and NetworkPolicy state;
// *dataplane.Controller satisfies it.
type Dataplane interface {
	Status() dataplane.Status
}

// Counters reads the rule counters of table inet meridian;
// *kernel.Conn (daemon/nft/kernel) satisfies it.
type Counters interface {
	Counters() ([]nft.RuleCounter, error)
}

// Sources are where the API reads from. A nil source answers
// codes.Unavailable (Counters: policy rows come without counters).
type Sources struct {
	Kernel    KernelRoutes
	BGP       RIB
	IPAM      Allocations
	Dataplane Dataplane
	Counters  Counters
}

// Server is the gRPC API. Build it with New, start it with Serve.
type Server struct {
	meridianv1.UnimplementedMeridianServer
	src Sources
	log *slog.Logger
	// StopTimeout bounds how long Serve waits for streams in flight once
	// ctx is done before it cuts them.
	StopTimeout time.Duration
	// WatchInterval is how often WatchRoutes polls the route sources.
	WatchInterval time.Duration

	// stopping is closed when Serve's ctx is done, so watches end and
	// GracefulStop does not wait StopTimeout for them.
	stopping chan struct{}
	stopOnce sync.Once
}

// New returns a server reading from src.
func New(src Sources, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{src: src, log: log.With("subsys", "api"), StopTimeout: 5 * time.Second, WatchInterval: time.Second, stopping: make(chan struct{})}
}

// Serve listens on a Unix socket at path, mode 0600, and serves until ctx is
// done, then stops gracefully and removes the socket. A stale socket left by
// a previous run is replaced; any other file at path, or a socket another
// process still serves, is an error.
func (s *Server) Serve(ctx context.Context, path string) error {
	ln, err := listen(path)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	return s.serve(ctx, ln, "socket", path)
}

// ServeTCP serves the same API on a TCP listener with mutual TLS until ctx
// is done, and closes ln. tlsDir is a mounted kubernetes.io/tls Secret:
// tls.crt and tls.key are the server's certificate, and every client must
// present a certificate that verifies against ca.crt. There is no TCP
// listener without it: the API shows the cluster's topology and policy,
// and on the socket the file mode is what keeps others out. The files are
// read again when they change, as the kubelet rotates mounted Secrets.
func (s *Server) ServeTCP(ctx context.Context, ln net.Listener, tlsDir string) error {
	if tlsDir == "" {
		ln.Close()
		return errors.New("serve API on TCP: no TLS directory; a TCP listener requires mutual TLS")
	}
	certs, err := NewCertReloader(tlsDir, s.log)
	if err != nil {
		ln.Close()
		return fmt.Errorf("serve API on %s: %w", ln.Addr(), err)
	}
	return s.serve(ctx, ln, "addr", ln.Addr().String(), grpc.Creds(credentials.NewTLS(certs.ServerConfig())))
}

// serve runs one gRPC server on ln until ctx is done; where and what name
// the listener in logs.
func (s *Server) serve(ctx context.Context, ln net.Listener, where, what string, opts ...grpc.ServerOption) error {
	gs := grpc.NewServer(opts...)
	meridianv1.RegisterMeridianServer(gs, s)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(meridianv1.Meridian_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	// Reflection lets grpcurl list and call the API without the .proto.
	reflection.Register(gs)

	served := make(chan error, 1)
	go func() { served <- gs.Serve(ln) }()
	s.log.Info("API serving", where, what)

	select {
	case err := <-served:
		return fmt.Errorf("serve API on %s: %w", what, err)
	case <-ctx.Done():
	}
	// Tell health watchers first and end route watches, then let streams
	// in flight finish.
	hs.Shutdown()
	s.stopOnce.Do(func() { close(s.stopping) })
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(s.StopTimeout):
		s.log.Warn("API streams still open after stop timeout; closing them", where, what, "timeout", s.StopTimeout)
		gs.Stop()
		<-stopped
	}
	<-served
	s.log.Info("API stopped", where, what)
	return nil
}

// listen binds the socket under a temporary name, sets its mode to 0600 and
// renames it into place, so the path clients use never exists with the
// umask's looser mode, and without touching the process-wide umask.
func listen(path string) (*net.UnixListener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create API socket directory: %w", err)
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on API socket: %w", err)
	}
	// The listener would unlink the temporary name on Close; Serve
	// removes the final path itself.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("restrict API socket mode: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("move API socket into place: %w", err)
	}
	return ln, nil
}

func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check API socket path: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("API socket path %s exists and is not a socket (%s); refusing to remove it", path, fi.Mode().Type())
	}
	// A socket that still accepts belongs to a running daemon: taking its
	// path over would leave it serving nobody.
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("API socket %s is in use by another process", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale API socket: %w", err)
	}
	return nil
}

// sourceError maps a source's error to the status the client sees.
func sourceError(what string, err error) error {
	switch {
	case errors.Is(err, ErrUnavailable):
		return status.Errorf(codes.Unavailable, "%s: %v", what, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	default:
		return status.Errorf(codes.Internal, "%s: %v", what, err)
	}
}

func unavailable(what string) error {
	return status.Errorf(codes.Unavailable, "%s: %v", what, ErrUnavailable)
}

// parseFilter reads ListRoutesRequest.prefix; the zero prefix means no
// filter.
func parseFilter(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, status.Errorf(codes.InvalidArgument, "prefix filter %q is not a CIDR prefix such as 10.244.0.0/16", s)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, status.Errorf(codes.InvalidArgument, "prefix filter %q: only IPv4 routes exist", s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, status.Errorf(codes.InvalidArgument, "prefix filter %q has host bits set; did you mean %s?", s, p.Masked())
	}
	return p, nil
}

// within reports whether p lies inside filter (no filter keeps everything).
func within(p, filter netip.Prefix) bool {
	return !filter.IsValid() || (filter.Bits() <= p.Bits() && filter.Contains(p.Addr()))
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// ListRoutes implements meridian.v1.Meridian.
func (s *Server) ListRoutes(req *meridianv1.ListRoutesRequest, stream grpc.ServerStreamingServer[meridianv1.ListRoutesResponse]) error {
	f, err := parseRouteFilter(req.GetPrefix(), req.GetContains(), req.GetSource())
	if err != nil {
		return err
	}
	rows, err := s.readRoutes(stream.Context(), f)
	if err != nil {
		return err
	}
	for _, r := range rows {
		if err := stream.Send(&meridianv1.ListRoutesResponse{Route: r}); err != nil {
			return err
		}
	}
	return nil
}

// readRoutes reads every source f asks for before returning, so a failure
// never leaves the client with half a table it could mistake for the
// whole. Errors are statuses.
func (s *Server) readRoutes(ctx context.Context, f routeFilter) ([]*meridianv1.Route, error) {
	var rows []*meridianv1.Route
	if f.source != meridianv1.Route_SOURCE_RIB {
		if s.src.Kernel == nil {
			return nil, unavailable("kernel routes")
		}
		rs, err := s.src.Kernel.Current()
		if err != nil {
			return nil, sourceError("read kernel routes", err)
		}
		rows = append(rows, kernelRows(rs, f)...)
	}
	if f.source != meridianv1.Route_SOURCE_KERNEL {
		if s.src.BGP == nil {
			return nil, unavailable("BGP RIB")
		}
		ps, err := s.src.BGP.Paths(ctx)
		if err != nil {
			return nil, sourceError("read BGP RIB", err)
		}
		rows = append(rows, ribRows(ps, f)...)
	}
	return rows, nil
}

// KernelRows converts kernel routes to API rows the way ListRoutes does,
// keeping those inside prefix (a ListRoutesRequest.prefix; invalid ones are
// a codes.InvalidArgument status). meridianctl uses it to read the kernel
// itself when no daemon serves the API.
func KernelRows(rs []routes.Route, prefix string) ([]*meridianv1.Route, error) {
	filter, err := parseFilter(prefix)
	if err != nil {
		return nil, err
	}
	return kernelRows(rs, routeFilter{prefix: filter}), nil
}

// encapsulationOf names how a kernel route leaves the node from its
// device: none is native, Meridian's tunnel devices are their tunnels.
func encapsulationOf(dev string) meridianv1.Route_Encapsulation {
	switch dev {
	case "":
		return meridianv1.Route_ENCAPSULATION_NATIVE
	case encap.IPIPDevice:
		return meridianv1.Route_ENCAPSULATION_IPIP
	case encap.VXLANDevice:
		return meridianv1.Route_ENCAPSULATION_VXLAN
	}
	return meridianv1.Route_ENCAPSULATION_UNSPECIFIED
}

func kernelRows(rs []routes.Route, f routeFilter) []*meridianv1.Route {
	rs = slices.DeleteFunc(slices.Clone(rs), func(r routes.Route) bool { return !f.keep(r.Dst) })
	slices.SortFunc(rs, func(a, b routes.Route) int { return comparePrefix(a.Dst, b.Dst) })
	out := make([]*meridianv1.Route, 0, len(rs))
	for _, r := range rs {
		row := &meridianv1.Route{
			Prefix: r.Dst.String(),
			Kind:   meridianv1.Route_KIND_BGP,
			Source: meridianv1.Route_SOURCE_KERNEL,
		}
		switch {
		case r.Blackhole:
			row.Kind = meridianv1.Route_KIND_BLACKHOLE
		case len(r.NextHops) == 0:
			// A route with our protocol that Meridian would not have
			// written (routes.Applier.Current); the next sync replaces it.
			row.Kind = meridianv1.Route_KIND_UNSPECIFIED
		}
		for _, nh := range r.NextHops {
			row.NextHops = append(row.NextHops, nh.String())
		}
		if row.Kind == meridianv1.Route_KIND_BGP {
			row.Encapsulation, row.Device = encapsulationOf(r.Dev), r.Dev
		}
		out = append(out, row)
	}
	return out
}

func ribRows(ps []bgp.Path, f routeFilter) []*meridianv1.Route {
	ps = slices.DeleteFunc(slices.Clone(ps), func(p bgp.Path) bool { return !f.keep(p.Prefix) })
	slices.SortStableFunc(ps, func(a, b bgp.Path) int {
		if c := comparePrefix(a.Prefix, b.Prefix); c != 0 {
			return c
		}
		return a.PeerAddress.Compare(b.PeerAddress)
	})
	out := make([]*meridianv1.Route, 0, len(ps))
	for _, p := range ps {
		row := &meridianv1.Route{
			Prefix:    p.Prefix.String(),
			Kind:      meridianv1.Route_KIND_BGP,
			Source:    meridianv1.Route_SOURCE_RIB,
			AsPath:    slices.Clone(p.ASPath),
			LocalPref: p.LocalPref,
			Best:      p.Best,
			Stale:     p.Stale,
		}
		if p.NextHop.IsValid() {
			row.NextHops = []string{p.NextHop.String()}
		}
		if p.PeerAddress.IsValid() {
			row.Peer = p.PeerAddress.String()
		}
		for _, c := range p.Communities {
			row.Communities = append(row.Communities, c.String())
		}
		out = append(out, row)
	}
	return out
}

// ListPeers implements meridian.v1.Meridian.
func (s *Server) ListPeers(_ *meridianv1.ListPeersRequest, stream grpc.ServerStreamingServer[meridianv1.ListPeersResponse]) error {
	if s.src.BGP == nil {
		return unavailable("BGP peers")
	}
	ps, err := s.src.BGP.Peers(stream.Context())
	if err != nil {
		return sourceError("read BGP peers", err)
	}
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b bgp.PeerState) int { return a.Address.Compare(b.Address) })
	for _, p := range ps {
		msg := &meridianv1.Peer{
			Name:       p.Name,
			Address:    p.Address.String(),
			Asn:        p.ASN,
			State:      p.State,
			EndOfRib:   p.EndOfRIB,
			Received:   uint32(p.Received),
			Accepted:   uint32(p.Accepted),
			Advertised: uint32(p.Advertised),
			LastError:  p.LastError,
		}
		if p.Uptime > 0 {
			msg.Uptime = durationpb.New(p.Uptime)
		}
		if p.GR != (bgp.GracefulRestartState{}) {
			msg.GracefulRestart = &meridianv1.GracefulRestartState{
				Negotiated:      p.GR.Negotiated,
				PeerRestarting:  p.GR.PeerRestarting,
				LocalRestarting: p.GR.LocalRestarting,
			}
		}
		for reason, n := range p.Rejected {
			if msg.Rejected == nil {
				msg.Rejected = map[string]uint32{}
			}
			msg.Rejected[reason] = uint32(n)
		}
		if err := stream.Send(&meridianv1.ListPeersResponse{Peer: msg}); err != nil {
			return err
		}
	}
	return nil
}

// ListIPAM implements meridian.v1.Meridian.
func (s *Server) ListIPAM(_ *meridianv1.ListIPAMRequest, stream grpc.ServerStreamingServer[meridianv1.ListIPAMResponse]) error {
	if s.src.IPAM == nil {
		return unavailable("IPAM allocations")
	}
	as, err := s.src.IPAM.List()
	if err != nil {
		return sourceError("read IPAM allocations", err)
	}
	as = slices.Clone(as)
	slices.SortFunc(as, func(a, b ipam.Allocation) int { return a.Addr.Compare(b.Addr) })
	for _, a := range as {
		msg := &meridianv1.Allocation{
			Address:     a.Addr.String(),
			ContainerId: a.ContainerID,
			Ifname:      a.IfName,
		}
		if err := stream.Send(&meridianv1.ListIPAMResponse{Allocation: msg}); err != nil {
			return err
		}
	}
	return nil
}
