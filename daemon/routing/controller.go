// Package routing keeps a node's BGP speaker and kernel routes in step with
// the cluster: it peers with every other Node, advertises this node's pod
// CIDR and installs the best paths it learns. One goroutine owns all of it;
// informer callbacks and speaker events only wake it up.
package routing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/cluster"
	"github.com/meridian-net/meridian/daemon/routes"
)

// RouteApplier is the part of routes.Applier the controller uses.
type RouteApplier interface {
	Current() ([]routes.Route, error)
	Apply(desired []routes.Route, prune bool) (routes.Result, error)
}

// NewSpeaker builds a speaker for one router ID and ASN.
type NewSpeaker func(cfg bgp.Config) (bgp.Speaker, error)

// NodeStateWriter publishes the node's pod CIDRs for the CNI plugin.
type NodeStateWriter func(nodeName string, podCIDRs []netip.Prefix) error

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
}

// Controller is the node's routing loop.
type Controller struct {
	cfg        Config
	client     kubernetes.Interface
	applier    RouteApplier
	newSpeaker NewSpeaker
	writeState NodeStateWriter
	log        *slog.Logger
	now        func() time.Time

	trigger chan struct{}
	// rejected holds the prefixes whose paths were last rejected, so each
	// rejection is logged when it starts, not on every sync.
	rejected map[netip.Prefix]bool
	// ready is closed after the first sync that installed every route with
	// BGP converged; the health endpoint and the Node condition use it.
	ready chan struct{}
}

// New wires a controller; Run starts it.
func New(cfg Config, client kubernetes.Interface, applier RouteApplier, newSpeaker NewSpeaker, writeState NodeStateWriter, log *slog.Logger) *Controller {
	if cfg.ResyncPeriod == 0 {
		cfg.ResyncPeriod = 30 * time.Second
	}
	return &Controller{
		cfg:        cfg,
		client:     client,
		applier:    applier,
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
	for !cache.WaitForCacheSync(ctx.Done(), nodeInformer.Informer().HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
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
	var lastState []netip.Prefix
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

		err := c.sync(ctx, lister, &sp, restarting, &lastState, &conditionSet, problem)
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

func (c *Controller) sync(ctx context.Context, lister corelisters.NodeLister, sp **running, restarting bool, lastState *[]netip.Prefix, conditionSet *bool, problem func(string, ...any)) error {
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
	asn := cluster.EffectiveASN(self, c.cfg.DefaultASN)
	if err := cluster.ValidateASN(asn); err != nil {
		return fmt.Errorf("%w: node %s: %w", errBadConfig, c.cfg.NodeName, err)
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

	if !slices.Equal(*lastState, self.PodCIDRs) && len(self.PodCIDRs) > 0 {
		if err := c.writeState(self.Name, self.PodCIDRs); err != nil {
			return fmt.Errorf("publish node state for the CNI plugin: %w", err)
		}
		*lastState = slices.Clone(self.PodCIDRs)
	}

	var errs []error
	if err := speaker.SetPeers(ctx, cluster.Peers(self, nodes, c.cfg.DefaultASN)); err != nil {
		errs = append(errs, fmt.Errorf("set BGP peers: %w", err))
	}
	if err := speaker.SetAdvertisements(ctx, cluster.Advertisements(self)); err != nil {
		errs = append(errs, fmt.Errorf("set advertisements: %w", err))
	}
	paths, err := speaker.Paths(ctx)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("read RIB: %w", err))...)
	}
	paths, hijacks := fromOwners(paths, cluster.PodCIDROwners(nodes))
	rejected := map[netip.Prefix]bool{}
	for _, s := range hijacks {
		rejected[s.Prefix] = true
		if !c.rejected[s.Prefix] {
			c.log.Warn("path rejected: next hop is not the node that owns this pod CIDR", "prefix", s.Prefix, "reason", s.Reason)
		}
	}
	c.rejected = rejected
	desired, skipped := routes.Desired(paths, routes.Local{
		PodCIDRs:        self.PodCIDRs,
		NodeIP:          self.InternalIP,
		AllowedPrefixes: cluster.RemotePodCIDRs(self, nodes),
	})
	for _, s := range skipped {
		c.log.Debug("path not installed", "prefix", s.Prefix, "reason", s.Reason)
	}
	// Until every peer has re-sent its routes after a restart, a route
	// missing from the RIB may just not have arrived yet: add, never prune.
	converged := speaker.Converged()
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

func sameSpeakerConfig(a, b bgp.Config) bool {
	return a.RouterID == b.RouterID && a.ASN == b.ASN && a.ListenPort == b.ListenPort && a.LocalAddress == b.LocalAddress &&
		slices.Equal(a.ListenAddresses, b.ListenAddresses) && a.GracefulRestartTime == b.GracefulRestartTime
}

func relevantChange(o, n *corev1.Node) bool {
	if o.Annotations[cluster.ASNAnnotation] != n.Annotations[cluster.ASNAnnotation] {
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
