// Package gobgp implements bgp.Speaker with an embedded GoBGP v3 server.
// It is the only package that imports GoBGP.
//
// Graceful restart (RFC 4724) is what lets a node's meridiand crash and
// come back without its pod CIDR being withdrawn cluster-wide. With
// Config.GracefulRestartTime > 0 every neighbour is added with
//
//	GracefulRestart{Enabled, RestartTime: T, DeferralTime: T,
//	                NotificationEnabled, LocalRestarting: Config.Restarting
//	                 && !Converged()}
//	AfiSafi ipv4-unicast with MpGracefulRestart{Enabled}
//
// where T is the restart time in seconds. GoBGP then, as helper, keeps a
// peer's paths as stale when the session fails by read or write error (the
// peer process died and the kernel closed its socket), hold timer expiry
// or, RFC 8538 having been negotiated, any NOTIFICATION but Hard Reset;
// it drops them when the peer's End-of-RIB arrives or the peer's restart
// time runs out. Every session ends its initial update with End-of-RIB.
// LocalRestarting makes the OPEN carry the Restart State bit and the
// Forwarding State bit for IPv4 unicast, and holds our updates back until
// all peers sent End-of-RIB or T passed (RFC 4724 4.1). GoBGP's global
// graceful-restart settings are not used by its neighbours, so there is
// nothing to set there.
//
// A clean stop (Run's context done) deconfigures the neighbours, which
// sends Cease/Peer De-configured, mapped to Hard Reset under RFC 8538:
// peers flush our routes at once. Only a crash leaves them stale.
//
// Neighbours marked bgp.Peer.External get only the paths this node
// originates: a global export policy rejects iBGP- and eBGP-learned paths
// towards the addresses in a neighbor set that SetPeers keeps equal to the
// external neighbours (see export.go).
package gobgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"

	"github.com/meridian-net/meridian/bgp"
)

// ErrStopped is returned by calls made after Run returned.
var ErrStopped = errors.New("bgp speaker stopped")

// Speaker is a bgp.Speaker backed by GoBGP.
type Speaker struct {
	cfg bgp.Config
	log *slog.Logger
	srv *server.BgpServer

	changes chan struct{}
	// recheck asks Run to re-evaluate Converged; the watch callback and
	// SetPeers poke it, Run reads it, so GoBGP is never called from its
	// own callback.
	recheck chan struct{}
	started chan struct{}
	stopped chan struct{}

	running   atomic.Bool
	converged atomic.Bool

	// mu serialises the Set* appliers with each other and with shutdown,
	// and guards what was applied.
	mu       sync.Mutex
	closing  bool
	peers    map[netip.Addr]bgp.Peer
	peersSet bool
	ads      map[netip.Prefix]bgp.Advertisement
	// external is the content of the export policy's neighbor set: the
	// addresses of the External peers.
	external map[netip.Addr]bool

	// policyMu guards policy, which Paths and Peers read; it is separate
	// from mu so a slow SetPeers does not hold up the API.
	policyMu sync.RWMutex
	policy   bgp.ImportPolicy

	// down records why sessions went down, from GoBGP's log.
	down *downReasons
	// md5Counters reads the node's TCP MD5 drop counters; md5Base is what
	// they were when Run started (valid only if md5BaseOK), so Peers can
	// tell drops since then from a node's old history.
	md5Counters func() (TCPMD5Counters, error)
	md5Base     TCPMD5Counters
	md5BaseOK   bool
}

var _ bgp.Speaker = (*Speaker)(nil)

// New validates cfg and wires a speaker; nothing runs until Run.
func New(cfg bgp.Config, log *slog.Logger) (*Speaker, error) {
	if err := validateConfig(cfg); err != nil {
		return nil, fmt.Errorf("invalid bgp config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("subsys", "bgp")
	cfg.ListenAddresses = slices.Clone(cfg.ListenAddresses)
	down := newDownReasons()
	return &Speaker{
		cfg:         cfg,
		log:         log,
		srv:         server.NewBgpServer(server.LoggerOption(slogLogger{log: log.With("component", "gobgp"), down: down})),
		down:        down,
		md5Counters: ReadTCPMD5Counters,
		changes:     make(chan struct{}, 1),
		recheck:     make(chan struct{}, 1),
		started:     make(chan struct{}),
		stopped:     make(chan struct{}),
		peers:       make(map[netip.Addr]bgp.Peer),
		ads:         make(map[netip.Prefix]bgp.Advertisement),
		external:    make(map[netip.Addr]bool),
	}, nil
}

// Run starts GoBGP and blocks until ctx is done, then stops it: sessions
// are closed with a Cease NOTIFICATION (Hard Reset when RFC 8538 was
// negotiated), so peers flush our routes at once. A crash, by contrast,
// only closes the TCP connections and peers keep the routes as stale.
//
// GoBGP's Serve loop has no way to return, so one goroutine per Speaker
// outlives Run; a daemon has one Speaker for its lifetime.
func (s *Speaker) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("bgp speaker: Run called twice")
	}
	defer close(s.stopped)

	go s.srv.Serve()

	port := s.cfg.ListenPort
	if port == 0 {
		port = 179
	}
	listen := make([]string, 0, len(s.cfg.ListenAddresses))
	for _, a := range s.cfg.ListenAddresses {
		listen = append(listen, a.String())
	}
	if len(listen) == 0 {
		// GoBGP would listen on every address; the model says dial only.
		port = -1
	}
	start := time.Now()
	if c, err := s.md5Counters(); err != nil {
		s.log.Info("tcp md5 counters unavailable; peers will not get md5 hints", "err", err)
	} else {
		s.md5Base, s.md5BaseOK = c, true
	}
	if err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn:             s.cfg.ASN,
		RouterId:        s.cfg.RouterID.String(),
		ListenPort:      port,
		ListenAddresses: listen,
	}}); err != nil {
		return fmt.Errorf("start bgp: %w", err)
	}
	if err := s.installExportPolicy(ctx); err != nil {
		s.shutdown()
		return err
	}

	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	err := s.srv.WatchEvent(watchCtx, &api.WatchEventRequest{
		Peer: &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{
			{Type: api.WatchEventRequest_Table_Filter_BEST},
			// Non-best paths and stale marks do not always move the best
			// path; received updates and End-of-RIB cover them.
			{Type: api.WatchEventRequest_Table_Filter_ADJIN},
			{Type: api.WatchEventRequest_Table_Filter_EOR},
		}},
	}, func(*api.WatchEventResponse) {
		s.signal()
		poke(s.recheck)
	})
	if err != nil {
		s.shutdown()
		return fmt.Errorf("watch bgp events: %w", err)
	}
	s.log.Info("bgp speaker started", "router_id", s.cfg.RouterID, "asn", s.cfg.ASN,
		"listen", listen, "port", port, "graceful_restart", s.cfg.GracefulRestartTime,
		"restarting", s.cfg.Restarting)
	close(s.started)

	var deadline <-chan time.Time
	if s.cfg.GracefulRestartTime > 0 {
		t := time.NewTimer(s.cfg.GracefulRestartTime - time.Since(start))
		defer t.Stop()
		deadline = t.C
	} else {
		s.setConverged("graceful restart disabled")
	}
	for {
		select {
		case <-ctx.Done():
			stopWatch()
			s.shutdown()
			s.log.Info("bgp speaker stopped")
			return nil
		case <-deadline:
			s.setConverged("graceful restart time passed")
		case <-s.recheck:
			s.checkConverged(ctx)
		}
	}
}

func (s *Speaker) shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	if err := s.srv.StopBgp(context.Background(), &api.StopBgpRequest{}); err != nil {
		s.log.Warn("stop bgp", "err", err)
	}
}

// Changes is signalled when paths, peer states or Converged change.
func (s *Speaker) Changes() <-chan struct{} { return s.changes }

// Converged reports that the initial sync is done; see bgp.Speaker.
func (s *Speaker) Converged() bool { return s.converged.Load() }

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (s *Speaker) signal() { poke(s.changes) }

func (s *Speaker) setConverged(reason string) {
	if s.converged.CompareAndSwap(false, true) {
		s.log.Info("bgp initial sync done", "reason", reason)
		s.signal()
	}
}

// checkConverged latches Converged once every applied peer is synced.
// Before the first successful SetPeers nothing is known about the peers
// we should wait for, so it stays false.
func (s *Speaker) checkConverged(ctx context.Context) {
	if s.converged.Load() {
		return
	}
	s.mu.Lock()
	if !s.peersSet {
		s.mu.Unlock()
		return
	}
	want := make(map[netip.Addr]bgp.Peer, len(s.peers))
	for a, p := range s.peers {
		want[a] = p
	}
	s.mu.Unlock()

	done := 0
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(ap *api.Peer) {
		a, err := netip.ParseAddr(ap.GetConf().GetNeighborAddress())
		if err != nil {
			return
		}
		p, ok := want[a]
		if !ok {
			return
		}
		if st, gr := peerStateFromAPI(ap, p, time.Time{}); synced(st, gr) {
			done++
		}
	})
	if err != nil {
		s.log.Warn("list peers for convergence", "err", err)
		return
	}
	if done == len(want) {
		s.setConverged("all peers sent End-of-RIB")
	}
}

func (s *Speaker) waitStarted(ctx context.Context) error {
	select {
	case <-s.started:
		select {
		case <-s.stopped:
			return ErrStopped
		default:
			return nil
		}
	case <-s.stopped:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lockRunning waits for Run to have started and takes mu, failing once the
// speaker is stopping; the Set* appliers share it.
func (s *Speaker) lockRunning(ctx context.Context) (unlock func(), err error) {
	if err := s.waitStarted(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil, ErrStopped
	}
	return s.mu.Unlock, nil
}

// SetPeers makes the configured neighbours exactly peers. It waits for
// Run to have started. An invalid set is rejected whole; failures of
// single neighbours are joined and leave the rest applied.
func (s *Speaker) SetPeers(ctx context.Context, peers []bgp.Peer) error {
	if err := validatePeers(peers); err != nil {
		return fmt.Errorf("invalid peers: %w", err)
	}
	unlock, err := s.lockRunning(ctx)
	if err != nil {
		return err
	}
	defer unlock()

	desired := make(map[netip.Addr]bgp.Peer, len(peers))
	for _, p := range peers {
		desired[p.Address] = p
	}
	var errs []error
	// Add and change before deleting, so a replacement never leaves a gap.
	for _, a := range sortedKeys(desired) {
		p := desired[a]
		cur, ok := s.peers[a]
		switch {
		case !ok:
			if err := s.markExternal(ctx, a, p.External); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := s.addPeer(ctx, p); err != nil {
				errs = append(errs, err)
				continue
			}
		case !samePeer(cur, p):
			// Any change means a new session for this neighbour only:
			// GoBGP's UpdatePeer would tear it down for most of them
			// anyway and ignores the transport settings and the MD5 key.
			if err := s.deletePeer(ctx, cur); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(s.peers, a)
			if err := s.markExternal(ctx, a, p.External); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := s.addPeer(ctx, p); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		s.peers[a] = p
	}
	for _, a := range sortedKeys(s.peers) {
		if _, ok := desired[a]; ok {
			continue
		}
		if err := s.deletePeer(ctx, s.peers[a]); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(s.peers, a)
	}
	// Drop deleted neighbours from the set only now: an address still in
	// it without a neighbour filters nothing.
	external := make(map[netip.Addr]bool)
	for a, p := range s.peers {
		if p.External {
			external[a] = true
		}
	}
	if err := s.setExternal(ctx, external); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		s.peersSet = true
		poke(s.recheck)
	}
	return errors.Join(errs...)
}

func (s *Speaker) addPeer(ctx context.Context, p bgp.Peer) error {
	// Only peers configured during the initial sync announce the restart:
	// later ones meet a speaker whose forwarding state is already fresh.
	restarting := s.cfg.Restarting && !s.converged.Load()
	// A neighbour configured anew starts without history; a previous
	// incarnation's "Peer Down" may still be logged after its deletion.
	s.down.forget(p.Address)
	if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: peerToAPI(s.cfg, p, restarting)}); err != nil {
		return fmt.Errorf("add peer %s (%s): %w", p.Name, p.Address, err)
	}
	s.log.Info("bgp peer added", "peer", p.Address, "name", p.Name, "asn", p.ASN, "restarting", restarting)
	return nil
}

func (s *Speaker) deletePeer(ctx context.Context, p bgp.Peer) error {
	if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: p.Address.String()}); err != nil {
		return fmt.Errorf("delete peer %s (%s): %w", p.Name, p.Address, err)
	}
	s.log.Info("bgp peer deleted", "peer", p.Address, "name", p.Name)
	return nil
}

// SetAdvertisements makes the locally originated IPv4 unicast paths
// exactly ads. It waits for Run to have started. An invalid set is
// rejected whole; single failures are joined.
func (s *Speaker) SetAdvertisements(ctx context.Context, ads []bgp.Advertisement) error {
	if err := validateAdvertisements(ads); err != nil {
		return fmt.Errorf("invalid advertisements: %w", err)
	}
	unlock, err := s.lockRunning(ctx)
	if err != nil {
		return err
	}
	defer unlock()

	desired := make(map[netip.Prefix]bgp.Advertisement, len(ads))
	for _, a := range ads {
		a.Prefix = a.Prefix.Masked()
		// What is recorded as applied must not change with the caller's
		// slices.
		a.Communities = slices.Clone(a.Communities)
		if a.LocalPref != nil {
			lp := *a.LocalPref
			a.LocalPref = &lp
		}
		desired[a.Prefix] = a
	}
	var errs []error
	for _, p := range sortedKeys(desired) {
		a := desired[p]
		if cur, ok := s.ads[p]; ok && cur.Equal(a) {
			continue
		}
		// A new next hop or new attributes for a known prefix replace
		// the old path (implicit withdraw of the same local source), so
		// no delete.
		path, err := advertisementToAPI(a)
		if err == nil {
			_, err = s.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("advertise %s via %s: %w", p, a.NextHop, err))
			continue
		}
		s.ads[p] = a
		s.log.Debug("bgp prefix advertised", "prefix", p, "next_hop", a.NextHop, "communities", a.Communities, "local_pref", localPrefString(a.LocalPref))
	}
	for _, p := range sortedKeys(s.ads) {
		if _, ok := desired[p]; ok {
			continue
		}
		a := s.ads[p]
		path, err := advertisementToAPI(a)
		if err == nil {
			err = s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: ipv4Unicast, Path: path})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", p, err))
			continue
		}
		delete(s.ads, p)
		s.log.Debug("bgp prefix withdrawn", "prefix", p)
	}
	return errors.Join(errs...)
}

// SetImportPolicy replaces the policy Paths and Peers judge paths by.
func (s *Speaker) SetImportPolicy(p bgp.ImportPolicy) {
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	s.policy = p
}

func (s *Speaker) importPolicy() bgp.ImportPolicy {
	s.policyMu.RLock()
	defer s.policyMu.RUnlock()
	return s.policy
}

// Paths lists the IPv4 unicast paths learned from peers, best or not,
// stale or not, judged by the import policy. Paths that cannot be decoded are reported in the error
// and left out.
//
// GoBGP v3.37 converts the paths outside its main loop, while its loop may
// mark them stale (AdjRib.StaleAll writes the origin info the paths share)
// and a session's FSM goroutine may rewrite the PeerInfo they point to
// (fsm.opensent). Those writes are word-sized and the worst outcome is a
// stale flag or source read one update late, but the race detector sees
// them; see the tests that skip under -race.
func (s *Speaker) Paths(ctx context.Context) ([]bgp.Path, error) {
	if err := s.waitStarted(ctx); err != nil {
		return nil, err
	}
	var (
		out  []bgp.Path
		errs []error
	)
	err := s.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: ipv4Unicast},
		func(d *api.Destination) {
			for _, p := range d.GetPaths() {
				if isLocal(p) {
					continue
				}
				bp, err := pathFromAPI(p)
				if err != nil {
					errs = append(errs, fmt.Errorf("destination %s: %w", d.GetPrefix(), err))
					continue
				}
				out = append(out, bp)
			}
		})
	if err != nil {
		return nil, fmt.Errorf("list paths: %w", err)
	}
	slices.SortFunc(out, comparePaths)
	return s.importPolicy().Apply(out), errors.Join(errs...)
}

// Peers reports the observed state of every configured neighbour.
func (s *Speaker) Peers(ctx context.Context) ([]bgp.PeerState, error) {
	if err := s.waitStarted(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	known := make(map[netip.Addr]bgp.Peer, len(s.peers))
	for a, p := range s.peers {
		known[a] = p
	}
	s.mu.Unlock()

	// Counts come from the RIB as it is now, judged by the current policy,
	// so they say what is refused at present, not since when.
	paths, err := s.Paths(ctx)
	if err != nil && paths == nil {
		return nil, err
	}
	counts := bgp.Count(paths)

	var out []bgp.PeerState
	now := time.Now()
	err = s.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(ap *api.Peer) {
		a, err := netip.ParseAddr(ap.GetConf().GetNeighborAddress())
		if err != nil {
			return
		}
		p, ok := known[a]
		if !ok {
			// Configured in GoBGP but not (yet) recorded: a SetPeers call
			// is between its add and its bookkeeping.
			p = bgp.Peer{
				Address: a,
				ASN:     ap.GetConf().GetPeerAsn(),
				Port:    uint16(ap.GetTransport().GetRemotePort()),
				Passive: ap.GetTransport().GetPassiveMode(),
			}
		}
		st, _ := peerStateFromAPI(ap, p, now)
		c := counts[a]
		st.Received, st.Accepted, st.Rejected = c.Received, c.Accepted, c.Rejected
		st.LastError = s.down.get(a)
		out = append(out, st)
	})
	if err != nil {
		return nil, fmt.Errorf("list peers: %w", err)
	}
	s.addMD5Hints(out)
	slices.SortFunc(out, func(a, b bgp.PeerState) int { return a.Address.Compare(b.Address) })
	return out, nil
}

// addMD5Hints explains sessions with a TCP MD5 password that are down
// while the node counts MD5 drops: a password mismatch drops the TCP
// handshake in the kernel, so GoBGP only ever sees a connection that does
// not come up and has no reason to log.
func (s *Speaker) addMD5Hints(peers []bgp.PeerState) {
	if !s.md5BaseOK || !slices.ContainsFunc(peers, func(st bgp.PeerState) bool {
		return st.Password != "" && st.State != "established"
	}) {
		return
	}
	now, err := s.md5Counters()
	if err != nil {
		s.log.Debug("read tcp md5 counters", "err", err)
		return
	}
	delta := now.Sub(s.md5Base)
	for i := range peers {
		st := &peers[i]
		hint := md5Hint(st.Password != "", st.State == "established", delta)
		if hint == "" {
			continue
		}
		if st.LastError != "" {
			hint += " (before: " + st.LastError + ")"
		}
		st.LastError = hint
	}
}

func comparePaths(a, b bgp.Path) int {
	if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
		return c
	}
	if c := a.Prefix.Bits() - b.Prefix.Bits(); c != 0 {
		return c
	}
	return a.PeerAddress.Compare(b.PeerAddress)
}

type ordered[K any] interface {
	comparable
	Compare(K) int
}

func sortedKeys[K ordered[K], V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b K) int { return a.Compare(b) })
	return keys
}
