package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meridian-net/meridian/integration/namedns"
)

// speakerNet is one namespace on the lab's bridge: a speaker under test or
// the injector.
type speakerNet struct {
	name string
	addr netip.Addr
}

// setup creates the namespace afresh (a leftover of an interrupted run is
// removed first; `meridian-lab down` removes mlab- namespaces too) and
// gives it a port on the lab's bridge with addr.
func (s speakerNet) setup() error {
	s.teardown()
	if err := namedns.Create(s.name); err != nil {
		return err
	}
	f, err := netns.GetFromName(s.name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", s.name, err)
	}
	defer f.Close()
	h, err := netlink.NewHandleAt(f)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", s.name, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("%s: find lo: %w", s.name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("%s: set lo up: %w", s.name, err)
	}
	port := "b-" + strings.TrimPrefix(s.name, "mlab-bench-")
	return (&benchNet{proxy: s.name}).attachToLab(port, s.addr)
}

func (s speakerNet) teardown() { _ = namedns.Delete(s.name) }

// injector is a GoBGP speaker in its own namespace that holds the bench
// prefixes and accepts sessions (passive) from the speakers under test.
// The paths are in its RIB before a session opens, so the clock of a run
// starts when the session is Established and the injector starts sending
// what it already has: its own loading time is not in the figures.
type injector struct {
	srv  *server.BgpServer
	addr netip.Addr
	// loaded is how many of BenchPrefixes are in its RIB.
	loaded int
	stopW  context.CancelFunc

	mu          sync.Mutex
	established map[netip.Addr]time.Time
	wake        chan struct{}
}

// injectorASN is the injector's AS: eBGP to both speakers.
const injectorASN = 64600

// startInjector runs a GoBGP server whose listener lives in netnsName.
// GoBGP creates its listeners in the goroutine that runs Serve, so that
// goroutine is locked to a thread moved into the namespace; sessions are
// passive, so no dial happens on another thread. Serve never returns: the
// goroutine and its thread stay until the process exits, which for
// `meridian-lab bench` is at the end of the run.
func startInjector(ctx context.Context, netnsName string, addr netip.Addr) (*injector, error) {
	srv := server.NewBgpServer(server.LoggerOption(quietLogger{}))
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread is in another namespace and must not
		// run other goroutines; it ends with this goroutine.
		target, err := ns.GetNS(namedns.Path(netnsName))
		if err != nil {
			ready <- fmt.Errorf("open netns %s: %w", netnsName, err)
			return
		}
		err = target.Set()
		target.Close()
		if err != nil {
			ready <- fmt.Errorf("enter netns %s: %w", netnsName, err)
			return
		}
		ready <- nil
		srv.Serve()
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: injectorASN, RouterId: addr.String(), ListenPort: 179, ListenAddresses: []string{addr.String()},
	}})
	if err != nil {
		return nil, fmt.Errorf("start injector: %w", err)
	}
	inj := &injector{srv: srv, addr: addr, established: map[netip.Addr]time.Time{}, wake: make(chan struct{})}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	inj.stopW = cancel
	err = srv.WatchEvent(wctx, &api.WatchEventRequest{Peer: &api.WatchEventRequest_Peer{}}, func(r *api.WatchEventResponse) {
		p := r.GetPeer().GetPeer()
		if p == nil || p.GetState().GetSessionState() != api.PeerState_ESTABLISHED {
			return
		}
		at := time.Now()
		a, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if err != nil {
			return
		}
		inj.mu.Lock()
		defer inj.mu.Unlock()
		if _, seen := inj.established[a]; !seen {
			inj.established[a] = at
			close(inj.wake)
			inj.wake = make(chan struct{})
		}
	})
	if err != nil {
		cancel()
		_ = srv.StopBgp(context.Background(), &api.StopBgpRequest{})
		return nil, fmt.Errorf("watch injector peers: %w", err)
	}
	return inj, nil
}

// load makes the first n of BenchPrefixes be in the injector's RIB, next
// hop itself. Sizes ascend, so each call adds only the new ones.
func (inj *injector) load(ctx context.Context, n int) error {
	prefixes, err := BenchPrefixes(n)
	if err != nil {
		return err
	}
	family := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	origin, err := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	if err != nil {
		return err
	}
	nh, err := anypb.New(&api.NextHopAttribute{NextHop: inj.addr.String()})
	if err != nil {
		return err
	}
	for _, p := range prefixes[min(inj.loaded, n):] {
		nlri, err := anypb.New(&api.IPAddressPrefix{Prefix: p.Addr().String(), PrefixLen: uint32(p.Bits())})
		if err != nil {
			return err
		}
		_, err = inj.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: &api.Path{
			Family: family, Nlri: nlri, Pattrs: []*anypb.Any{origin, nh},
		}})
		if err != nil {
			return fmt.Errorf("injector: add %s: %w", p, err)
		}
	}
	inj.loaded = max(inj.loaded, n)
	return nil
}

// accept configures a passive neighbour: the speaker under test dials.
func (inj *injector) accept(ctx context.Context, peer netip.Addr, asn uint32) error {
	inj.mu.Lock()
	delete(inj.established, peer)
	inj.mu.Unlock()
	err := inj.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: peer.String(), PeerAsn: asn},
		Transport: &api.Transport{PassiveMode: true, LocalAddress: inj.addr.String()},
		AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{
			Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, Enabled: true,
		}}},
	}})
	if err != nil {
		return fmt.Errorf("injector: add neighbour %s: %w", peer, err)
	}
	return nil
}

func (inj *injector) forget(peer netip.Addr) {
	_ = inj.srv.DeletePeer(context.Background(), &api.DeletePeerRequest{Address: peer.String()})
}

// waitEstablished returns when the session with peer became Established.
func (inj *injector) waitEstablished(ctx context.Context, peer netip.Addr, timeout time.Duration, alive func() bool) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		inj.mu.Lock()
		at, ok := inj.established[peer]
		wake := inj.wake
		inj.mu.Unlock()
		if ok {
			return at, nil
		}
		if !alive() {
			return time.Time{}, errors.New("exited before its session was Established")
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("no Established session from %s after %s", peer, timeout)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-wake:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (inj *injector) stop() {
	inj.stopW()
	_ = inj.srv.StopBgp(context.Background(), &api.StopBgpRequest{})
}

// quietLogger drops GoBGP's logs: the speakers' own logs tell the story.
type quietLogger struct{}

func (quietLogger) Panic(msg string, _ gobgplog.Fields) { panic(msg) }
func (quietLogger) Fatal(msg string, _ gobgplog.Fields) { panic(msg) }
func (quietLogger) Error(string, gobgplog.Fields)       {}
func (quietLogger) Warn(string, gobgplog.Fields)        {}
func (quietLogger) Info(string, gobgplog.Fields)        {}
func (quietLogger) Debug(string, gobgplog.Fields)       {}
func (quietLogger) SetLevel(gobgplog.LogLevel)          {}
func (quietLogger) GetLevel() gobgplog.LogLevel         { return gobgplog.ErrorLevel }

// fibWatch counts the routes inside a prefix in a namespace's main table
// from RTM_NEWROUTE/RTM_DELROUTE notifications, and notes the moment the
// count first reached its target. Dumping 100k routes every 100 ms would
// cost the two cores the speakers need; a notification costs microseconds.
// When the kernel drops notifications (ENOBUFS despite the large buffer)
// the count falls back to a dump every 2 s, which bounds the error.
type fibWatch struct {
	netns  string
	in     netip.Prefix
	target int
	done   chan struct{}

	mu      sync.Mutex
	have    map[netip.Prefix]bool
	reached time.Time
	lost    bool
	wake    chan struct{}
}

func watchFIB(netnsName string, in netip.Prefix, target int) (*fibWatch, error) {
	f, err := netns.GetFromName(netnsName)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsName, err)
	}
	defer f.Close()
	w := &fibWatch{netns: netnsName, in: in, target: target, done: make(chan struct{}), have: map[netip.Prefix]bool{}, wake: make(chan struct{})}
	ch := make(chan netlink.RouteUpdate, 4096)
	err = netlink.RouteSubscribeWithOptions(ch, w.done, netlink.RouteSubscribeOptions{
		Namespace:              &f,
		ReceiveBufferSize:      64 << 20,
		ReceiveBufferForceSize: true,
		ErrorCallback: func(error) {
			w.mu.Lock()
			w.lost = true
			w.mu.Unlock()
		},
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to routes in %s: %w", netnsName, err)
	}
	go func() {
		for u := range ch {
			if u.Table != unix.RT_TABLE_MAIN || u.Dst == nil {
				continue
			}
			p, ok := ipNetPrefix(u.Dst)
			if !ok || !in.Contains(p.Addr()) || p.Bits() < in.Bits() {
				continue
			}
			at := time.Now()
			w.mu.Lock()
			switch u.Type {
			case unix.RTM_NEWROUTE:
				w.have[p] = true
			case unix.RTM_DELROUTE:
				delete(w.have, p)
			}
			if len(w.have) >= w.target && w.reached.IsZero() {
				w.reached = at
				close(w.wake)
			}
			w.mu.Unlock()
		}
	}()
	return w, nil
}

func (w *fibWatch) close() { close(w.done) }

// wait returns when the target was reached, or an error with the count.
func (w *fibWatch) wait(ctx context.Context, timeout time.Duration, alive func() bool) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		w.mu.Lock()
		reached, wake, lost, n := w.reached, w.wake, w.lost, len(w.have)
		w.mu.Unlock()
		if !reached.IsZero() {
			return reached, nil
		}
		if lost {
			at := time.Now()
			got, err := countRoutes(w.netns, w.in)
			if err != nil {
				return time.Time{}, err
			}
			if got >= w.target {
				return at, nil
			}
			n = got
		}
		if !alive() {
			return time.Time{}, fmt.Errorf("exited with %d of %d prefixes in the FIB", n, w.target)
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%d of %d prefixes in the FIB after %s", n, w.target, timeout)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-wake:
		case <-tick.C:
		}
	}
}

// countRoutes dumps the main table of a namespace and counts the routes
// inside in.
func countRoutes(netnsName string, in netip.Prefix) (int, error) {
	h, err := handleIn(netnsName)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	var rs []netlink.Route
	for try := 0; ; try++ {
		rs, err = h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if errors.Is(err, netlink.ErrDumpInterrupted) && try < 5 {
			continue
		}
		break
	}
	if err != nil {
		return 0, fmt.Errorf("list routes in %s: %w", netnsName, err)
	}
	n := 0
	for _, r := range rs {
		if p, ok := ipNetPrefix(r.Dst); ok && in.Contains(p.Addr()) && p.Bits() >= in.Bits() {
			n++
		}
	}
	return n, nil
}

// hasRoute says whether the namespace's main table has a route to dst.
func hasRoute(h *netlink.Handle, dst netip.Prefix) (bool, error) {
	ipn := &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)}
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: ipn, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return false, err
	}
	return len(rs) > 0, nil
}

func handleIn(netnsName string) (*netlink.Handle, error) {
	f, err := netns.GetFromName(netnsName)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsName, err)
	}
	defer f.Close()
	h, err := netlink.NewHandleAt(f)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", netnsName, err)
	}
	return h, nil
}

func ipNetPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

// birdASN is BIRD's AS, as a peer of the injector and of the bench node.
const birdASN = 64513

// BIRDConfig renders the configuration of the BIRD under test: one eBGP
// session to neighbor (importing what filter accepts), and the kernel
// protocol exporting every route to the main table of its namespace, as
// meridiand installs what it learns. Timers are short so that a session
// closed by the withdraw measurement comes back at once.
func BIRDConfig(routerID, neighbor netip.Addr, neighborASN uint32, accept netip.Prefix) string {
	return fmt.Sprintf(`router id %[1]s;
protocol device {}
protocol kernel {
	ipv4 { import none; export all; };
}
protocol bgp bench {
	local %[1]s as %[2]d;
	neighbor %[3]s as %[4]d;
	connect retry time 1;
	error wait time 1, 2;
	ipv4 {
		import where net ~ [ %[5]s{%[6]d,32} ];
		export none;
	};
}
`, routerID, birdASN, neighbor, neighborASN, accept.Masked(), accept.Bits())
}

// writeBIRDConfig writes conf and returns bird's argv, in the foreground
// so that the bench owns the process.
func writeBIRDConfig(work, name, conf string) ([]string, error) {
	path := filepath.Join(work, name+".conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return []string{"bird", "-f", "-c", path, "-s", filepath.Join(work, name+".ctl"), "-P", filepath.Join(work, name+".pid")}, nil
}
