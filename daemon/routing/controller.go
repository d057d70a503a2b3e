// Package routing keeps a node's BGP speaker and kernel routes in step with
// the cluster: it peers with the other Nodes (full mesh or through route
// reflectors) and the BGPPeers that select this node, advertises this
// node's pod CIDR and the configured Service addresses, and installs the
// accepted best paths it learns. One goroutine owns all of it; informer
// callbacks and speaker events only wake it up.
package routing

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/cluster"
	"github.com/meridian-net/meridian/daemon/encap"
	"github.com/meridian-net/meridian/daemon/routes"
	"github.com/meridian-net/meridian/daemon/tunnel"
)

// RouteApplier is the part of routes.Applier the controller uses.
type RouteApplier interface {
	Current() ([]routes.Route, error)
	Apply(desired []routes.Route, prune bool) (routes.Result, error)
}

// NewSpeaker builds a speaker for one router ID and ASN.
type NewSpeaker func(cfg bgp.Config) (bgp.Speaker, error)

// NodeStateWriter publishes the node's pod CIDRs and pod MTU (0: unknown)
// for the CNI plugin.
type NodeStateWriter func(nodeName string, podCIDRs []netip.Prefix, mtu int) error

// Tunnels is what encapsulation needs from the kernel: the node's connected
// subnets and link MTU, and the tunnel devices (tunnel.Applier).
type Tunnels interface {
	Connected() ([]netip.Prefix, error)
	LinkMTU(addr netip.Addr) (int, error)
	Apply(c tunnel.Config) error
}

// Config holds what does not change while the daemon runs.
type Config struct {
	NodeName            string
	DefaultASN          uint32
	BGPPort             int32
	GracefulRestartTime time.Duration
	// ResyncPeriod bounds how long a missed event can leave state stale.
	ResyncPeriod time.Duration
	// WithdrawOnStop makes a stop deconfigure the BGP sessions, so peers
	// withdraw this node's routes at once. By default a stop leaves the
	// sessions to die with the process, as a crash would: peers keep the
	// routes for the graceful-restart time and a rolling upgrade does not
	// drop traffic to this node's pods.
	WithdrawOnStop bool
	// ClusterCIDRs bound what peers may teach this node when the
	// BGPConfiguration names no acceptedPrefixes (kube-controller-manager's
	// --cluster-cidr). Empty: only the nodes' pod CIDRs are accepted.
	ClusterCIDRs []netip.Prefix
	// CRDSyncTimeout bounds how long Run waits for the first list of
	// BGPConfiguration and BGPPeer before running on defaults; 0 is 5s.
	CRDSyncTimeout time.Duration
	// Encapsulation and EncapsulationType apply when the BGPConfiguration
	// does not set spec.encapsulation / spec.encapsulationType (meridiand's
	// --encapsulation and --encapsulation-type); empty: CrossSubnet, IPIP.
	Encapsulation     encap.Mode
	EncapsulationType encap.Type
	// PodMTU overrides the pod MTU published for the CNI plugin; 0 derives
	// it from the node's link MTU and the encapsulation.
	PodMTU int
}

// Controller is the node's routing loop.
type Controller struct {
	cfg        Config
	client     kubernetes.Interface
	dyn        dynamic.Interface
	applier    RouteApplier
	tunnels    Tunnels
	newSpeaker NewSpeaker
	writeState NodeStateWriter
	log        *slog.Logger
	now        func() time.Time

	trigger chan struct{}
	// rejected holds the paths last refused by the import policy, so each
	// rejection is logged when it starts, not on every sync.
	rejected map[rejection]bool
	// sessionUp holds whether each peer's session was established at the
	// last sync, for the up/down Events.
	sessionUp map[netip.Addr]bool
	// overLimit holds the Warn-action peers last seen above their limit.
	overLimit map[netip.Addr]bool
	// skipped holds the BGPPeers last left out on this node.
	skipped map[cluster.PeerSkip]bool
	crds    *crdSource
	record  func(obj runtime.Object, eventType, reason, msg string)
	// factory holds the core informers; Services and EndpointSlices join
	// it when first needed (svc).
	factory informers.SharedInformerFactory
	svc     *serviceSource
	// serviceAds is the last Service advertisement set, and serviceBlocks
	// the blocks in effect (paths from peers inside them are the other
	// nodes' Service advertisements, refused quietly).
	serviceAds    []bgp.Advertisement
	serviceBlocks []netip.Prefix
	// encapReasons holds each learned route's last encapsulation reason,
	// so a change is logged once.
	encapReasons map[netip.Prefix]string
	// hostMTUErr and tunnelErr are the last failures to read the link
	// MTU and to set up an unused tunnel, each logged once.
	hostMTUErr string
	tunnelErr  string
	// ready is closed after the first sync that installed every route with
	// BGP converged; the health endpoint and the Node condition use it.
	ready chan struct{}
}

type rejection struct {
	prefix netip.Prefix
	peer   netip.Addr
	reason string
}

// New wires a controller; Run starts it. dyn reads BGPConfiguration and
// BGPPeer objects; nil runs the node mesh with the flags' defaults only.
// tunnels nil turns encapsulation off: every route is native, as with mode
// Never.
func New(cfg Config, client kubernetes.Interface, dyn dynamic.Interface, applier RouteApplier, tunnels Tunnels, newSpeaker NewSpeaker, writeState NodeStateWriter, log *slog.Logger) *Controller {
	if cfg.ResyncPeriod == 0 {
		cfg.ResyncPeriod = 30 * time.Second
	}
	if cfg.CRDSyncTimeout == 0 {
		cfg.CRDSyncTimeout = 5 * time.Second
	}
	return &Controller{
		cfg:        cfg,
		client:     client,
		dyn:        dyn,
		applier:    applier,
		tunnels:    tunnels,
		newSpeaker: newSpeaker,
		writeState: writeState,
		log:        log.With("subsys", "routing"),
		now:        time.Now,
		trigger:    make(chan struct{}, 1),
		ready:      make(chan struct{}),
	}
}

// Ready is closed once routes are in place after start.
func (c *Controller) Ready() <-chan struct{} { return c.ready }

func (c *Controller) wake() {
	select {
	case c.trigger <- struct{}{}:
	default:
	}
}

// running is the speaker currently in use and what it was built from.
type running struct {
	speaker bgp.Speaker
	cfg     bgp.Config
	cancel  context.CancelFunc
	done    chan struct{}
}

// Run blocks until ctx is done. It never removes kernel routes on the way
// out: a restarting daemon adopts them and peers keep forwarding to us
// through graceful restart, so a restart does not drop traffic.
func (c *Controller) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(c.client, 0)
	c.factory = factory
	nodeInformer := factory.Core().V1().Nodes()
	lister := nodeInformer.Lister()
	if _, err := nodeInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { c.wake() },
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Node)
			n, ok2 := newObj.(*corev1.Node)
			// Heartbeats update every Node every few seconds; only the
			// fields routing reads are worth a sync.
			if !ok1 || !ok2 || relevantChange(o, n) {
				c.wake()
			}
		},
		DeleteFunc: func(any) { c.wake() },
	}); err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if c.dyn != nil {
		crds, err := newCRDSource(c.dyn, c.client, c.cfg.NodeName, c.log, c.wake)
		if err != nil {
			return err
		}
		c.crds = crds
		crds.start(ctx)
		defer crds.factory.Shutdown()
		broadcaster := record.NewBroadcaster(record.WithContext(ctx))
		broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.client.CoreV1().Events("")})
		defer broadcaster.Shutdown()
		recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "meridiand", Host: c.cfg.NodeName})
		c.record = func(obj runtime.Object, eventType, reason, msg string) { recorder.Event(obj, eventType, reason, msg) }
	}
	for !cache.WaitForCacheSync(ctx.Done(), nodeInformer.Informer().HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
	}
	if c.crds != nil && !c.crds.waitSynced(ctx, c.cfg.CRDSyncTimeout) && ctx.Err() == nil {
		c.log.Warn("BGPConfiguration and BGPPeer not listed in time; starting with defaults", "waited", c.cfg.CRDSyncTimeout)
	}

	// Routes already in the kernel with our protocol mean a previous
	// meridiand ran here: tell peers we kept forwarding state (RFC 4724
	// R and F bits) and keep those routes until BGP has converged.
	adopted, err := c.applier.Current()
	if err != nil {
		c.log.Warn("list routes left by a previous run", "err", err)
	}
	restarting := len(adopted) > 0
	if restarting {
		c.log.Info("adopting routes from a previous run", "routes", len(adopted))
	}

	var sp *running
	defer func() {
		if sp != nil && c.cfg.WithdrawOnStop {
			sp.cancel()
			<-sp.done
		}
	}()
	var lastProblem string
	problem := func(msg string, args ...any) {
		// One clear line per distinct problem, not one per retry.
		text := fmt.Sprint(append([]any{msg}, args...)...)
		if text == lastProblem {
			return
		}
		lastProblem = text
		level := slog.LevelError
		for _, a := range args {
			// Waiting for the controller manager or for the Node to be
			// registered is normal at start: worth a line, not an error.
			if err, ok := a.(error); ok && errors.Is(err, errWaiting) && !errors.Is(err, errBadConfig) {
				level = slog.LevelWarn
			}
		}
		c.log.Log(context.Background(), level, msg, args...)
	}

	retry := time.NewTimer(0)
	defer retry.Stop()
	resync := time.NewTicker(c.cfg.ResyncPeriod)
	defer resync.Stop()
	var lastState nodeState
	conditionSet := false
	backoff := time.Second
	for {
		var changes <-chan struct{}
		var speakerDone <-chan struct{}
		if sp != nil {
			changes = sp.speaker.Changes()
			speakerDone = sp.done
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.trigger:
		case <-changes:
		case <-resync.C:
		case <-retry.C:
		case <-speakerDone:
			problem("BGP speaker stopped; starting a new one", "node", c.cfg.NodeName)
			sp = nil
		}

		if ctx.Err() != nil {
			// Chosen at random over a ready trigger: never sync while
			// stopping.
			return nil
		}
		err := c.sync(ctx, lister, &sp, restarting, &lastState, &conditionSet, problem)
		if err != nil && ctx.Err() != nil {
			return nil
		}
		if err != nil {
			problem("sync routing", "node", c.cfg.NodeName, "err", err)
			retry.Reset(backoff)
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		if lastProblem != "" {
			c.log.Info("routing in sync again", "node", c.cfg.NodeName)
			lastProblem = ""
		}
		backoff = time.Second
	}
}

// errWaiting marks a state the loop waits out (node not there yet, no pod
// CIDR): retried, logged once as a warning. errBadConfig marks one only an
// operator can fix, logged as an error.
var (
	errWaiting   = errors.New("waiting")
	errBadConfig = errors.New("bad configuration")
)

// nodeState is what was last published for the CNI plugin.
type nodeState struct {
	podCIDRs []netip.Prefix
	mtu      int
}

func (c *Controller) sync(ctx context.Context, lister corelisters.NodeLister, sp **running, restarting bool, lastState *nodeState, conditionSet *bool, problem func(string, ...any)) error {
	selfNode, err := lister.Get(c.cfg.NodeName)
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%w: node %q not found in the API server (check --node-name / NODE_NAME)", errWaiting, c.cfg.NodeName)
	}
	if err != nil {
		return fmt.Errorf("get node %s: %w", c.cfg.NodeName, err)
	}
	self, selfErr := cluster.FromNode(selfNode)
	if !self.InternalIP.IsValid() {
		return fmt.Errorf("%w: node %s: %v", errWaiting, c.cfg.NodeName, selfErr)
	}
	if selfErr != nil && !errors.Is(selfErr, cluster.ErrNoPodCIDR) {
		return fmt.Errorf("%w: node %s: %w", errBadConfig, c.cfg.NodeName, selfErr)
	}
	all, err := lister.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	var nodes []cluster.NodeInfo
	for _, n := range all {
		info, err := cluster.FromNode(n)
		if err != nil && !info.InternalIP.IsValid() {
			continue
		}
		nodes = append(nodes, info)
	}

	settings := cluster.DefaultSettings(c.cfg.DefaultASN)
	var specs []cluster.PeerSpec
	if c.crds != nil {
		var results []objectResult
		settings, specs, results = c.crds.snapshot(ctx, nodes, c.cfg.DefaultASN)
		c.crds.report(ctx, results, c.record)
	}
	plan := cluster.Desired(self, nodes, settings, specs, c.cfg.ClusterCIDRs)
	c.logSkipped(plan.Skipped)
	asn := plan.ASN
	if err := cluster.ValidateASN(asn); err != nil {
		return fmt.Errorf("%w: node %s: %w", errBadConfig, c.cfg.NodeName, err)
	}

	want := bgp.Config{
		RouterID:            self.InternalIP,
		ASN:                 asn,
		ListenAddresses:     []netip.Addr{self.InternalIP},
		LocalAddress:        self.InternalIP,
		ListenPort:          c.cfg.BGPPort,
		GracefulRestartTime: c.cfg.GracefulRestartTime,
		Restarting:          restarting,
	}
	if *sp != nil && !sameSpeakerConfig((*sp).cfg, want) {
		c.log.Info("BGP identity changed; restarting speaker", "routerID", want.RouterID, "asn", want.ASN)
		(*sp).cancel()
		<-(*sp).done
		*sp = nil
	}
	if *sp == nil {
		s, err := c.newSpeaker(want)
		if err != nil {
			return fmt.Errorf("configure BGP speaker: %w", err)
		}
		// The speaker outlives ctx unless WithdrawOnStop: its sessions end
		// with the process, which peers treat as a restart.
		parent := ctx
		if !c.cfg.WithdrawOnStop {
			parent = context.WithoutCancel(ctx)
		}
		sctx, cancel := context.WithCancel(parent)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := s.Run(sctx); err != nil {
				c.log.Error("BGP speaker", "err", err)
			}
		}()
		*sp = &running{speaker: s, cfg: want, cancel: cancel, done: done}
		c.log.Info("BGP speaker started", "routerID", want.RouterID, "asn", want.ASN, "restarting", restarting)
	}
	speaker := (*sp).speaker
	speaker.SetImportPolicy(plan.Policy)

	mode, typ := c.encapsulation()
	enc, hostMTU, err := c.encapInputs(mode, typ, self.InternalIP, plan)
	if err != nil {
		return err
	}
	mtu := c.cfg.PodMTU
	if mtu == 0 && hostMTU > 0 {
		mtu = encap.PodMTU(hostMTU, mode, typ, 0)
	}
	if (!slices.Equal(lastState.podCIDRs, self.PodCIDRs) || lastState.mtu != mtu) && len(self.PodCIDRs) > 0 {
		if err := c.writeState(self.Name, self.PodCIDRs, mtu); err != nil {
			return fmt.Errorf("publish node state for the CNI plugin: %w", err)
		}
		if lastState.mtu != mtu {
			c.log.Info("pod MTU for new pods", "mtu", mtu, "hostMTU", hostMTU, "encapsulation", mode, "type", typ)
		}
		*lastState = nodeState{podCIDRs: slices.Clone(self.PodCIDRs), mtu: mtu}
	}

	var errs []error
	if err := speaker.SetPeers(ctx, plan.Peers); err != nil {
		errs = append(errs, fmt.Errorf("set BGP peers: %w", err))
	}
	c.serviceBlocks = settings.Services.All()
	ads := cluster.Advertisements(self)
	if svcAds, err := c.serviceAdvertisements(ctx, settings.Services, self); err != nil {
		// Keep advertising the pod CIDRs and the last Service set.
		errs = append(errs, fmt.Errorf("service advertisements: %w", err))
		ads = mergeAdvertisements(ads, c.serviceAds)
	} else {
		ads = mergeAdvertisements(ads, svcAds)
	}
	if err := speaker.SetAdvertisements(ctx, settings.WithAttributes(ads)); err != nil {
		errs = append(errs, fmt.Errorf("set advertisements: %w", err))
	}
	// Until every peer has re-sent its routes after a restart, a route
	// missing from the RIB may just not have arrived yet: add, never prune.
	// Read before the RIB: convergence latched after the RIB was read
	// would prune by a snapshot taken before the last peer's routes
	// arrived (a route removed and re-added milliseconds later).
	converged := speaker.Converged()
	paths, err := speaker.Paths(ctx)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("read RIB: %w", err))...)
	}
	if fresh := c.logRejections(paths); len(fresh) > 0 {
		c.nodeEvent(selfNode, corev1.EventTypeWarning, "BGPPrefixRejected", rejectionSummary(fresh))
	}
	c.checkLimits(plan.Peers, paths)
	if states, err := speaker.Peers(ctx); err == nil {
		c.reportSessions(selfNode, states)
	}
	desired, skipped := routes.Desired(bgp.Multipath(paths), routes.Local{
		PodCIDRs:        self.PodCIDRs,
		NodeIP:          self.InternalIP,
		AllowedPrefixes: plan.Policy.Allowed,
		Encap:           enc,
	})
	for _, s := range skipped {
		c.log.Debug("path not installed", "prefix", s.Prefix, "reason", s.Reason)
	}
	c.logEncap(desired)
	if c.tunnels != nil {
		// Devices before routes: a route through a tunnel needs its device.
		err := c.tunnels.Apply(tunnel.Desired(mode, typ, self.InternalIP, self.PodCIDRs, hostMTU, desired))
		switch {
		case err != nil && slices.ContainsFunc(desired, func(r routes.Route) bool { return r.Dev != "" }):
			errs = append(errs, fmt.Errorf("apply tunnels: %w", err))
		case err != nil:
			// No route needs the tunnel yet (every node on a connected
			// subnet, say, on a kernel without ipip): not worth failing
			// the sync and holding back readiness for.
			if msg := err.Error(); msg != c.tunnelErr {
				c.log.Warn("tunnel device not ready; no route needs it yet", "type", typ, "err", err)
				c.tunnelErr = msg
			}
		default:
			c.tunnelErr = ""
		}
	}
	// A stopping meridiand computes from state its own shutdown is taking
	// apart (a sync that began as ctx ended once pruned every learned
	// route during a rolling upgrade): what the kernel holds is the next
	// meridiand's to adopt, so nothing is applied once ctx is done.
	if err := ctx.Err(); err != nil {
		return err
	}
	res, err := c.applier.Apply(desired, converged)
	if err != nil {
		errs = append(errs, fmt.Errorf("apply routes: %w", err))
	}
	if res.Changed() > 0 {
		c.log.Info("routes applied", "added", res.Added, "replaced", res.Replaced, "removed", res.Removed, "kept", res.Kept, "pruned", converged)
	}
	if len(errs) == 0 && converged && len(self.PodCIDRs) > 0 {
		if !*conditionSet && !cluster.NetworkAvailable(selfNode) {
			if _, err := c.client.CoreV1().Nodes().PatchStatus(ctx, self.Name, cluster.NetworkAvailablePatch(c.now())); err != nil {
				errs = append(errs, fmt.Errorf("set node condition NetworkUnavailable=False: %w", err))
			} else {
				c.log.Info("node network is available", "node", self.Name)
			}
		}
		if len(errs) == 0 {
			*conditionSet = true
			select {
			case <-c.ready:
			default:
				close(c.ready)
			}
		}
	}
	if len(self.PodCIDRs) == 0 {
		errs = append(errs, fmt.Errorf("%w: node %s: %v", errWaiting, self.Name, cluster.ErrNoPodCIDR))
	}
	return errors.Join(errs...)
}

// encapsulation is the mode and type in effect: the BGPConfiguration's
// where it sets them, else the flags'.
func (c *Controller) encapsulation() (encap.Mode, encap.Type) {
	mode, typ := c.cfg.Encapsulation, c.cfg.EncapsulationType
	if c.crds != nil {
		m, t := c.crds.encapsulation()
		mode, typ = cmp.Or(m, mode), cmp.Or(t, typ)
	}
	if mode == "" {
		mode = encap.DefaultMode
	}
	if typ == "" {
		typ = encap.DefaultType
	}
	return mode, typ
}

// encapInputs reads what the encapsulation decision needs from the kernel
// and the plan. Without Tunnels it returns the zero Encap (native routes).
// The link MTU is best effort: unknown, it is 0 and the tunnels get the
// kernel's default.
func (c *Controller) encapInputs(mode encap.Mode, typ encap.Type, nodeIP netip.Addr, plan cluster.Plan) (routes.Encap, int, error) {
	if c.tunnels == nil {
		return routes.Encap{}, 0, nil
	}
	connected, err := c.tunnels.Connected()
	if err != nil {
		// Without them every next hop would look remote and be tunnelled.
		return routes.Encap{}, 0, fmt.Errorf("read connected subnets: %w", err)
	}
	hostMTU, err := c.tunnels.LinkMTU(nodeIP)
	if err != nil {
		if msg := err.Error(); msg != c.hostMTUErr {
			c.log.Warn("read the node link's MTU; the pod MTU is not derived", "err", err)
			c.hostMTUErr = msg
		}
		hostMTU = 0
	} else {
		c.hostMTUErr = ""
	}
	var fabric []netip.Addr
	for _, p := range plan.Peers {
		if p.External {
			fabric = append(fabric, p.Address)
		}
	}
	return routes.Encap{Mode: mode, Type: typ, Connected: connected, FabricPeers: fabric, PodCIDROwners: plan.Policy.PodCIDROwners}, hostMTU, nil
}

// logEncap logs each learned route's encapsulation when it changes.
func (c *Controller) logEncap(desired []routes.Route) {
	now := map[netip.Prefix]string{}
	for _, r := range desired {
		if r.Reason == "" {
			continue
		}
		now[r.Dst] = r.Reason
		prev, seen := c.encapReasons[r.Dst]
		switch {
		case prev == r.Reason:
		case r.Dev != "" || seen:
			// Tunnelled, or a change: worth a line at the default level.
			c.log.Info("route encapsulation", "prefix", r.Dst, "reason", r.Reason, "was", prev, "route", r.String())
		default:
			// A native route, first seen: there may be 100k of them.
			c.log.Debug("route encapsulation", "prefix", r.Dst, "reason", r.Reason, "route", r.String())
		}
	}
	c.encapReasons = now
}

// logRejections logs each refused path once, when it starts being refused,
// and returns those it logged at Warn.
func (c *Controller) logRejections(paths []bgp.Path) (fresh []rejection) {
	now := map[rejection]bool{}
	for _, p := range paths {
		if p.Rejected == "" {
			continue
		}
		r := rejection{prefix: p.Prefix.Masked(), peer: p.PeerAddress, reason: p.Rejected}
		now[r] = true
		if !c.rejected[r] && r.reason == bgp.ReasonOutsideAllowed && slices.ContainsFunc(c.serviceBlocks, func(b netip.Prefix) bool { return b.Bits() <= r.prefix.Bits() && b.Contains(r.prefix.Addr()) }) {
			// Nodes advertise Service addresses to each other too; they
			// are for the fabric, not for this node to route.
			c.log.Debug("service path from a peer not installed", "prefix", r.prefix, "peer", r.peer)
		} else if !c.rejected[r] {
			c.log.Warn("path rejected by import policy", "prefix", r.prefix, "peer", r.peer, "next_hop", p.NextHop, "reason", r.reason)
			fresh = append(fresh, r)
		}
	}
	c.rejected = now
	return fresh
}

// rejectionSummary is one Event's text for the paths newly refused in a
// sync: the count and the first few, so a peer sending a full table makes
// one Event, not one per prefix.
func rejectionSummary(rs []rejection) string {
	slices.SortFunc(rs, func(a, b rejection) int {
		return cmp.Or(a.peer.Compare(b.peer), a.prefix.Addr().Compare(b.prefix.Addr()), cmp.Compare(a.prefix.Bits(), b.prefix.Bits()))
	})
	const shown = 5
	var parts []string
	for _, r := range rs[:min(len(rs), shown)] {
		parts = append(parts, fmt.Sprintf("%s from %s (%s)", r.prefix, r.peer, r.reason))
	}
	msg := fmt.Sprintf("import policy refused %d path(s): %s", len(rs), strings.Join(parts, ", "))
	if len(rs) > shown {
		msg += fmt.Sprintf(", and %d more (meridianctl routes --source rib, meridianctl peers -o wide)", len(rs)-shown)
	}
	return msg
}

// reportSessions records an Event on the Node when a session comes up or
// goes down (a first sight of a session that is not up yet says nothing:
// that is start-up, not news).
func (c *Controller) reportSessions(node *corev1.Node, states []bgp.PeerState) {
	now := make(map[netip.Addr]bool, len(states))
	for _, st := range states {
		up := st.State == "established"
		now[st.Address] = up
		was, seen := c.sessionUp[st.Address]
		switch {
		case up && !was:
			c.nodeEvent(node, corev1.EventTypeNormal, "BGPSessionEstablished", fmt.Sprintf("BGP session with %s (%s, AS %d) established", st.Name, st.Address, st.ASN))
		case !up && was && seen:
			msg := fmt.Sprintf("BGP session with %s (%s, AS %d) is %s", st.Name, st.Address, st.ASN, st.State)
			if st.LastError != "" {
				msg += ": " + st.LastError
			}
			c.nodeEvent(node, corev1.EventTypeWarning, "BGPSessionDown", msg)
		}
	}
	c.sessionUp = now
}

// nodeEvent records an Event on this node's Node object, when the
// controller has a recorder.
func (c *Controller) nodeEvent(node *corev1.Node, eventType, reason, msg string) {
	if c.record != nil && node != nil {
		c.record(node, eventType, reason, msg)
	}
}

// checkLimits reports peers with the Warn action above their prefix limit
// (Restart is GoBGP's, Drop the import policy's).
func (c *Controller) checkLimits(peers []bgp.Peer, paths []bgp.Path) {
	counts := bgp.Count(paths)
	now := map[netip.Addr]bool{}
	for _, p := range peers {
		if p.MaxPrefixAction != bgp.MaxPrefixWarn || p.MaxPrefixes == 0 {
			continue
		}
		if n := counts[p.Address].Accepted; n > int(p.MaxPrefixes) {
			now[p.Address] = true
			if !c.overLimit[p.Address] {
				c.log.Warn("peer exceeds its prefix limit", "peer", p.Address, "name", p.Name, "accepted", n, "limit", p.MaxPrefixes)
			}
		}
	}
	c.overLimit = now
}

func (c *Controller) logSkipped(skips []cluster.PeerSkip) {
	now := map[cluster.PeerSkip]bool{}
	for _, s := range skips {
		now[s] = true
		if !c.skipped[s] {
			c.log.Warn("BGPPeer not configured on this node", "bgppeer", s.Name, "reason", s.Reason)
		}
	}
	c.skipped = now
}

func sameSpeakerConfig(a, b bgp.Config) bool {
	return a.RouterID == b.RouterID && a.ASN == b.ASN && a.ListenPort == b.ListenPort && a.LocalAddress == b.LocalAddress &&
		slices.Equal(a.ListenAddresses, b.ListenAddresses) && a.GracefulRestartTime == b.GracefulRestartTime
}

func relevantChange(o, n *corev1.Node) bool {
	if o.Annotations[cluster.ASNAnnotation] != n.Annotations[cluster.ASNAnnotation] {
		return true
	}
	// BGPPeer node selectors and the reflector role read labels.
	if !maps.Equal(o.Labels, n.Labels) {
		return true
	}
	if !slices.Equal(o.Spec.PodCIDRs, n.Spec.PodCIDRs) || o.Spec.PodCIDR != n.Spec.PodCIDR {
		return true
	}
	if !slices.Equal(o.Status.Addresses, n.Status.Addresses) {
		return true
	}
	return cluster.NetworkAvailable(o) != cluster.NetworkAvailable(n)
}
