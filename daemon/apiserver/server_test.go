package apiserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/cni-plugin/ipam"
	"github.com/meridian-net/meridian/daemon/routes"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The fakes stand in for the kernel, the speaker and the IPAM store, which
// this package only reads through; their own packages test them for real.
type kernel []routes.Route

func (k kernel) Current() ([]routes.Route, error) { return k, nil }

type rib struct {
	paths []bgp.Path
	peers []bgp.PeerState
	err   error
}

func (r rib) Paths(context.Context) ([]bgp.Path, error)      { return r.paths, r.err }
func (r rib) Peers(context.Context) ([]bgp.PeerState, error) { return r.peers, r.err }

type store []ipam.Allocation

func (s store) List() ([]ipam.Allocation, error) { return s, nil }

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func testSources() Sources {
	return Sources{
		Kernel: kernel{
			{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{addr("198.18.0.12")}},
			{Dst: pfx("10.244.1.0/24"), Blackhole: true},
			{Dst: pfx("10.96.0.0/24"), NextHops: []netip.Addr{addr("198.18.0.11"), addr("198.18.0.13")}},
			{Dst: pfx("192.0.2.0/24")},
		},
		BGP: rib{
			paths: []bgp.Path{
				{Prefix: pfx("10.244.2.0/24"), NextHop: addr("198.18.0.12"), PeerAddress: addr("198.18.0.12"), ASPath: []uint32{}, LocalPref: 100, Best: true},
				{Prefix: pfx("10.244.3.0/24"), NextHop: addr("198.18.0.13"), PeerAddress: addr("198.18.0.13"), ASPath: []uint32{64513}, LocalPref: 100, Stale: true,
					Communities: []bgp.Community{{A: 64512, B: 100}, {Large: true, A: 64512, B: 1, C: 2}}},
			},
			peers: []bgp.PeerState{
				{Peer: bgp.Peer{Name: "node-c", Address: addr("198.18.0.13"), ASN: 64512}, State: "active",
					LastError: "hold-timer-expired", GR: bgp.GracefulRestartState{Negotiated: true, PeerRestarting: true}},
				{Peer: bgp.Peer{Name: "node-b", Address: addr("198.18.0.12"), ASN: 64512}, State: "established", EndOfRIB: true,
					Uptime: 90 * time.Second, Advertised: 3, GR: bgp.GracefulRestartState{Negotiated: true}},
			},
		},
		IPAM: store{
			{Addr: addr("10.244.1.3"), Attachment: ipam.Attachment{ContainerID: "c3", IfName: "eth0"}},
			{Addr: addr("10.244.1.2"), Attachment: ipam.Attachment{ContainerID: "c2", IfName: "eth0"}},
		},
	}
}

// start runs a real server on a socket in a temporary directory and returns
// the socket path and a client connected to it. Cleanup stops both and
// checks Serve returned nil.
func start(t *testing.T, src Sources) (string, *grpc.ClientConn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "meridian.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(src, nil).Serve(ctx, path) }()
	waitSocket(t, path, done)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s still there after stop (err %v)", path, err)
		}
	})
	return path, conn
}

func waitSocket(t *testing.T, path string, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Lstat(path); err == nil {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("Serve returned before listening: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("socket %s did not appear", path)
}

func listRoutes(t *testing.T, conn *grpc.ClientConn, req *meridianv1.ListRoutesRequest) ([]*meridianv1.Route, error) {
	t.Helper()
	stream, err := meridianv1.NewMeridianClient(conn).ListRoutes(context.Background(), req)
	if err != nil {
		return nil, err
	}
	var out []*meridianv1.Route
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m.GetRoute())
	}
}

// brief renders a route as one comparable line.
func brief(r *meridianv1.Route) string {
	s := fmt.Sprintf("%s %s %s %v", r.GetSource(), r.GetPrefix(), r.GetKind(), r.GetNextHops())
	if r.GetSource() == meridianv1.Route_SOURCE_RIB {
		s += fmt.Sprintf(" peer=%s as=%v lp=%d best=%t stale=%t", r.GetPeer(), r.GetAsPath(), r.GetLocalPref(), r.GetBest(), r.GetStale())
		if len(r.GetCommunities()) > 0 {
			s += fmt.Sprintf(" communities=%v", r.GetCommunities())
		}
	}
	return s
}

func TestListRoutes(t *testing.T) {
	_, conn := start(t, testSources())
	for _, tc := range []struct {
		name string
		req  *meridianv1.ListRoutesRequest
		want []string
	}{{
		name: "all",
		req:  &meridianv1.ListRoutesRequest{},
		want: []string{
			"SOURCE_KERNEL 10.96.0.0/24 KIND_BGP [198.18.0.11 198.18.0.13]",
			"SOURCE_KERNEL 10.244.1.0/24 KIND_BLACKHOLE []",
			"SOURCE_KERNEL 10.244.2.0/24 KIND_BGP [198.18.0.12]",
			"SOURCE_KERNEL 192.0.2.0/24 KIND_UNSPECIFIED []",
			"SOURCE_RIB 10.244.2.0/24 KIND_BGP [198.18.0.12] peer=198.18.0.12 as=[] lp=100 best=true stale=false",
			"SOURCE_RIB 10.244.3.0/24 KIND_BGP [198.18.0.13] peer=198.18.0.13 as=[64513] lp=100 best=false stale=true communities=[64512:100 64512:1:2]",
		},
	}, {
		name: "filter",
		req:  &meridianv1.ListRoutesRequest{Prefix: "10.244.0.0/16"},
		want: []string{
			"SOURCE_KERNEL 10.244.1.0/24 KIND_BLACKHOLE []",
			"SOURCE_KERNEL 10.244.2.0/24 KIND_BGP [198.18.0.12]",
			"SOURCE_RIB 10.244.2.0/24 KIND_BGP [198.18.0.12] peer=198.18.0.12 as=[] lp=100 best=true stale=false",
			"SOURCE_RIB 10.244.3.0/24 KIND_BGP [198.18.0.13] peer=198.18.0.13 as=[64513] lp=100 best=false stale=true communities=[64512:100 64512:1:2]",
		},
	}, {
		name: "exact prefix, kernel only",
		req:  &meridianv1.ListRoutesRequest{Prefix: "10.244.2.0/24", Source: meridianv1.Route_SOURCE_KERNEL},
		want: []string{"SOURCE_KERNEL 10.244.2.0/24 KIND_BGP [198.18.0.12]"},
	}, {
		name: "narrower than every route",
		req:  &meridianv1.ListRoutesRequest{Prefix: "10.244.2.128/25"},
		want: nil,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := listRoutes(t, conn, tc.req)
			if err != nil {
				t.Fatalf("ListRoutes: %v", err)
			}
			var lines []string
			for _, r := range got {
				lines = append(lines, brief(r))
			}
			if strings.Join(lines, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("ListRoutes(%v):\n got %s\nwant %s", tc.req, strings.Join(lines, "\n     "), strings.Join(tc.want, "\n     "))
			}
		})
	}
}

// Each row is its own message: a client reading a large table gets it
// without the server building one message of the whole.
func TestListRoutesStreamsOneRowPerMessage(t *testing.T) {
	var k kernel
	for i := range 1000 {
		k = append(k, routes.Route{Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}), 32), NextHops: []netip.Addr{addr("198.18.0.12")}})
	}
	_, conn := start(t, Sources{Kernel: k})
	stream, err := meridianv1.NewMeridianClient(conn).ListRoutes(context.Background(), &meridianv1.ListRoutesRequest{Source: meridianv1.Route_SOURCE_KERNEL})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Recv after %d rows: %v", n, err)
		}
		if size := proto.Size(m); size > 100 {
			t.Fatalf("message %d is %d bytes; want one route per message", n, size)
		}
		n++
	}
	if n != len(k) {
		t.Errorf("got %d rows, want %d", n, len(k))
	}
}

func TestListRoutesInvalidFilter(t *testing.T) {
	_, conn := start(t, testSources())
	for filter, wantMsg := range map[string]string{
		"10.244.0.0":    "not a CIDR prefix",
		"banana":        "not a CIDR prefix",
		"10.244.1.5/16": "did you mean 10.244.0.0/16",
		"fd00::/64":     "only IPv4",
	} {
		_, err := listRoutes(t, conn, &meridianv1.ListRoutesRequest{Prefix: filter})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), wantMsg) {
			t.Errorf("filter %q: got %v, want InvalidArgument containing %q", filter, err, wantMsg)
		}
	}
	_, err := listRoutes(t, conn, &meridianv1.ListRoutesRequest{Source: 7})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("unknown source: got %v, want InvalidArgument", err)
	}
}

func TestSpeakerUnavailable(t *testing.T) {
	for name, speaker := range map[string]RIB{
		"nil source":  nil,
		"not started": rib{err: fmt.Errorf("bgp speaker: %w", ErrUnavailable)},
	} {
		t.Run(name, func(t *testing.T) {
			src := testSources()
			src.BGP = speaker
			_, conn := start(t, src)
			got, err := listRoutes(t, conn, &meridianv1.ListRoutesRequest{})
			if status.Code(err) != codes.Unavailable {
				t.Errorf("ListRoutes: got %v, want Unavailable", err)
			}
			if len(got) != 0 {
				t.Errorf("ListRoutes sent %d rows before failing; want none", len(got))
			}
			// The kernel table does not need the speaker.
			got, err = listRoutes(t, conn, &meridianv1.ListRoutesRequest{Source: meridianv1.Route_SOURCE_KERNEL})
			if err != nil || len(got) != 4 {
				t.Errorf("ListRoutes(kernel): %d rows, err %v; want 4 rows", len(got), err)
			}
			stream, err := meridianv1.NewMeridianClient(conn).ListPeers(context.Background(), &meridianv1.ListPeersRequest{})
			if err == nil {
				_, err = stream.Recv()
			}
			if status.Code(err) != codes.Unavailable {
				t.Errorf("ListPeers: got %v, want Unavailable", err)
			}
		})
	}
}

func TestSourceErrorIsInternal(t *testing.T) {
	src := testSources()
	src.BGP = rib{err: errors.New("list path: boom")}
	_, conn := start(t, src)
	_, err := listRoutes(t, conn, &meridianv1.ListRoutesRequest{})
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "boom") {
		t.Errorf("got %v, want Internal carrying the cause", err)
	}
}

func TestListPeersAndIPAM(t *testing.T) {
	_, conn := start(t, testSources())
	c := meridianv1.NewMeridianClient(conn)
	ps, err := c.ListPeers(context.Background(), &meridianv1.ListPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var peers []string
	for {
		m, err := ps.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("ListPeers: %v", err)
		}
		p := m.GetPeer()
		gr := p.GetGracefulRestart()
		peers = append(peers, fmt.Sprintf("%s %s %d %s %t up=%v adv=%d gr=%t/%t/%t err=%q", p.GetName(), p.GetAddress(), p.GetAsn(), p.GetState(), p.GetEndOfRib(),
			p.GetUptime().AsDuration(), p.GetAdvertised(), gr.GetNegotiated(), gr.GetPeerRestarting(), gr.GetLocalRestarting(), p.GetLastError()))
		if p.GetState() != "established" && p.Uptime != nil {
			t.Errorf("peer %s is %s but has uptime %v", p.GetName(), p.GetState(), p.Uptime)
		}
	}
	if got, want := strings.Join(peers, "; "), `node-b 198.18.0.12 64512 established true up=1m30s adv=3 gr=true/false/false err=""; `+
		`node-c 198.18.0.13 64512 active false up=0s adv=0 gr=true/true/false err="hold-timer-expired"`; got != want {
		t.Errorf("ListPeers:\n got %s\nwant %s", got, want)
	}

	as, err := c.ListIPAM(context.Background(), &meridianv1.ListIPAMRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var allocs []string
	for {
		m, err := as.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("ListIPAM: %v", err)
		}
		a := m.GetAllocation()
		allocs = append(allocs, a.GetAddress()+" "+a.GetContainerId()+" "+a.GetIfname())
	}
	if got, want := strings.Join(allocs, "; "), "10.244.1.2 c2 eth0; 10.244.1.3 c3 eth0"; got != want {
		t.Errorf("ListIPAM:\n got %s\nwant %s", got, want)
	}
}

func TestSocketModeAndHealth(t *testing.T) {
	path, conn := start(t, testSources())
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	// No temporary name is left next to it.
	if m, _ := filepath.Glob(path + ".*"); len(m) != 0 {
		t.Errorf("leftover files: %v", m)
	}
	hc := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", "meridian.v1.Meridian"} {
		resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v, %v; want SERVING", svc, resp.GetStatus(), err)
		}
	}
}

func TestStaleSocketReplacedOtherFileRefused(t *testing.T) {
	dir := t.TempDir()

	// A socket nobody listens on any more, as a crashed daemon leaves it.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(Sources{}, nil).Serve(ctx, stale) }()
	waitHealthy(t, stale)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve over a stale socket: %v", err)
	}

	// A regular file is somebody else's; it must survive.
	file := filepath.Join(dir, "file.sock")
	if err := os.WriteFile(file, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = New(Sources{}, nil).Serve(context.Background(), file)
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Serve on a regular file: %v, want a not-a-socket error", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Errorf("regular file changed: %q", b)
	}

	// A socket another server still answers on is not taken over.
	live, _ := start(t, testSources())
	err = New(Sources{}, nil).Serve(context.Background(), live)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Serve on a live socket: %v, want an in-use error", err)
	}
}

func waitHealthy(t *testing.T, path string) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health on %s: %v, %v", path, resp.GetStatus(), err)
	}
}

// blockingRIB answers only when the caller gives up, like a speaker stuck
// behind a lock.
type blockingRIB struct{ called chan struct{} }

func (b blockingRIB) Paths(ctx context.Context) ([]bgp.Path, error) {
	close(b.called)
	<-ctx.Done()
	return nil, ctx.Err()
}
func (b blockingRIB) Peers(ctx context.Context) ([]bgp.PeerState, error) {
	_, err := b.Paths(ctx)
	return nil, err
}

// Stopping waits for streams in flight, but not forever.
func TestStopCutsStuckStreamAfterTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meridian.sock")
	b := blockingRIB{called: make(chan struct{})}
	srv := New(Sources{BGP: b}, nil)
	srv.StopTimeout = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, path) }()
	waitSocket(t, path, done)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	listed := make(chan error, 1)
	go func() {
		_, err := listRoutes(t, conn, &meridianv1.ListRoutesRequest{Source: meridianv1.Route_SOURCE_RIB})
		listed <- err
	}()
	<-b.called
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the stop timeout")
	}
	if d := time.Since(start); d < srv.StopTimeout {
		t.Errorf("Serve returned after %v, before the stop timeout %v: it did not wait for the stream", d, srv.StopTimeout)
	}
	if err := <-listed; err == nil {
		t.Error("cut stream ended without an error")
	}
}

// Reflection is what lets grpcurl list and call the API without the proto.
func TestReflectionListsService(t *testing.T) {
	_, conn := start(t, testSources())
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"meridian.v1.Meridian", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
}
