package dataplane

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/services"
	"github.com/meridian-net/meridian/policy"
)

// Config is what the controller needs beyond the API state.
type Config struct {
	NodeName string
	// ClusterCIDRs are the pod ranges of the whole cluster. Empty derives
	// them from every Node's spec.podCIDRs, which is exact for clusters
	// whose pods only get addresses from their node's range.
	ClusterCIDRs []netip.Prefix
	// Services holds the kube-proxy-style knobs (masquerade-all, NAT
	// outgoing, NodePort addresses).
	Services services.Config
	// MinSyncInterval is the least time between two syncs: events within it
	// are coalesced into one sync. Default 100ms.
	MinSyncInterval time.Duration
	// ResyncInterval is how often the kernel table is read back and
	// repaired even without API events (someone else edited our table).
	// Default 5 minutes.
	ResyncInterval time.Duration
}

// Renderers turn the two models into parts of table inet meridian with
// disjoint object names; the controller merges them.
type Renderers struct {
	Services func(*services.Model) nft.Table
	Policy   func(*policy.Model) nft.Table
	// PolicyFailClosed, if set, renders the policy part again after the
	// kernel refused a sync, with the pods whose enforcement changed since
	// applied (the suspects) reduced to a counted drop: they fail closed,
	// every other pod keeps its enforcement, and Services still sync.
	// It returns the table and the pods ("namespace/name") failed closed.
	PolicyFailClosed func(m *policy.Model, applied nft.Table) (nft.Table, []string)
}

// HealthChecks answers load balancers' health checks for Services with
// externalTrafficPolicy Local (kube-proxy's healthCheckNodePort).
type HealthChecks interface {
	Sync(checks []HealthCheck) error
}

// HealthCheck is one Service's health-check node port and how many ready
// endpoints it has on this node.
type HealthCheck struct {
	Namespace, Name string
	NodePort        uint16
	LocalEndpoints  int
}

// SyncReport describes one sync, for metrics and logs.
type SyncReport struct {
	Duration time.Duration
	Ops      int
	Dumped   bool
	Err      error
	// StaleFlows is how many conntrack entries were deleted after it.
	StaleFlows uint
	Services   int
	Pods       int // local pods under policy
	// FailedClosed counts the pods whose policy the kernel refused and
	// that drop new traffic until it accepts the full table.
	FailedClosed int
}

// Status is the state of the last successful sync, for the API.
type Status struct {
	Services        *services.Model
	ServiceProblems []services.Problem
	Policy          *policy.Model
	PolicyProblems  []policy.Problem
	Table           nft.Table
	SyncedAt        time.Time
	LastError       error
}

// Controller keeps table inet meridian equal to what the API state asks for.
type Controller struct {
	cfg       Config
	client    kubernetes.Interface
	conn      nft.Conn
	render    Renderers
	conntrack Conntrack
	health    HealthChecks
	onSync    func(SyncReport)
	events    EventSink
	log       *slog.Logger

	trigger chan struct{}
	ready   chan struct{}

	mu     sync.Mutex
	status Status
}

// EventSink reports problems with API objects as Kubernetes Events on this
// node's Node object.
type EventSink interface {
	Warning(reason, message string)
}

// Options are the optional collaborators of a Controller.
type Options struct {
	Conntrack    Conntrack        // nil: stale UDP entries are left to time out
	HealthChecks HealthChecks     // nil: no health-check node ports
	OnSync       func(SyncReport) // nil: no callback
	Events       EventSink        // nil: problems are only logged
}

// New wires a controller; Run starts it.
func New(cfg Config, client kubernetes.Interface, conn nft.Conn, render Renderers, opts Options, log *slog.Logger) *Controller {
	if cfg.MinSyncInterval == 0 {
		cfg.MinSyncInterval = 100 * time.Millisecond
	}
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = 5 * time.Minute
	}
	return &Controller{
		cfg:       cfg,
		client:    client,
		conn:      conn,
		render:    render,
		conntrack: opts.Conntrack,
		health:    opts.HealthChecks,
		onSync:    opts.OnSync,
		events:    opts.Events,
		log:       log.With("subsys", "dataplane"),
		trigger:   make(chan struct{}, 1),
		ready:     make(chan struct{}),
	}
}

// Ready is closed after the first sync that programmed the whole table.
func (c *Controller) Ready() <-chan struct{} { return c.ready }

// Status returns the state of the last successful sync.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

func (c *Controller) wake() {
	select {
	case c.trigger <- struct{}{}:
	default:
	}
}

// stripManagedFields keeps cached objects small: field-manager bookkeeping
// is often larger than the object and no one here reads it.
func stripManagedFields(obj any) (any, error) {
	if a, err := meta.Accessor(obj); err == nil {
		a.SetManagedFields(nil)
	}
	return obj, nil
}

// Run blocks until ctx is done. It never removes the table on the way out:
// the next meridiand adopts it.
func (c *Controller) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(c.client, 0, informers.WithTransform(stripManagedFields))
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.wake() },
		UpdateFunc: func(_, _ any) { c.wake() },
		DeleteFunc: func(any) { c.wake() },
	}
	svcInf := factory.Core().V1().Services()
	sliceInf := factory.Discovery().V1().EndpointSlices()
	podInf := factory.Core().V1().Pods()
	nsInf := factory.Core().V1().Namespaces()
	polInf := factory.Networking().V1().NetworkPolicies()
	nodeInf := factory.Core().V1().Nodes()
	for name, inf := range map[string]cache.SharedIndexInformer{
		"services": svcInf.Informer(), "endpointslices": sliceInf.Informer(), "pods": podInf.Informer(),
		"namespaces": nsInf.Informer(), "networkpolicies": polInf.Informer(),
	} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("watch %s: %w", name, err)
		}
	}
	if _, err := nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { c.wake() },
		UpdateFunc: func(o, n any) {
			// Node heartbeats come every few seconds; only addresses and
			// pod CIDRs matter here.
			on, ok1 := o.(*corev1.Node)
			nn, ok2 := n.(*corev1.Node)
			if !ok1 || !ok2 || !slices.Equal(on.Spec.PodCIDRs, nn.Spec.PodCIDRs) || !slices.Equal(on.Status.Addresses, nn.Status.Addresses) {
				c.wake()
			}
		},
		DeleteFunc: func(any) { c.wake() },
	}); err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	// Programming from half-filled caches would remove every Service not
	// yet listed, so nothing is synced before all of them are complete.
	for _, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return nil
		}
	}
	c.log.Info("caches synced; programming nftables", "node", c.cfg.NodeName)

	state := &syncState{syncer: nft.NewSyncer(c.conn, c.log), compiler: services.NewCompiler(), policies: policy.NewCompiler()}
	read := func() (snapshot, error) {
		var s snapshot
		var err error
		if s.services, err = svcInf.Lister().List(labels.Everything()); err != nil {
			return s, err
		}
		if s.slices, err = sliceInf.Lister().List(labels.Everything()); err != nil {
			return s, err
		}
		if s.pods, err = podInf.Lister().List(labels.Everything()); err != nil {
			return s, err
		}
		if s.namespaces, err = nsInf.Lister().List(labels.Everything()); err != nil {
			return s, err
		}
		if s.policies, err = polInf.Lister().List(labels.Everything()); err != nil {
			return s, err
		}
		s.nodes, err = nodeInf.Lister().List(labels.Everything())
		return s, err
	}

	retry := time.NewTimer(0)
	defer retry.Stop()
	resync := time.NewTicker(c.cfg.ResyncInterval)
	defer resync.Stop()
	backoff := time.Second
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.trigger:
		case <-retry.C:
		case <-resync.C:
			// A fresh syncer reads the kernel back before planning, which
			// repairs edits made behind our back.
			state.syncer = nft.NewSyncer(c.conn, c.log)
		}
		if wait := c.cfg.MinSyncInterval - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		// Events that arrived while waiting are covered by this sync.
		select {
		case <-c.trigger:
		default:
		}
		last = time.Now()
		snap, err := read()
		if err == nil {
			err = c.sync(snap, state)
		}
		if err != nil {
			c.log.Warn("dataplane sync failed; retrying", "err", err, "retryIn", backoff)
			retry.Reset(backoff)
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		backoff = time.Second
	}
}

// snapshot is the API state one sync reads.
type snapshot struct {
	services   []*corev1.Service
	slices     []*discoveryv1.EndpointSlice
	pods       []*corev1.Pod
	namespaces []*corev1.Namespace
	policies   []*networkingv1.NetworkPolicy
	nodes      []*corev1.Node
}

// syncState is what the loop carries from one sync to the next.
type syncState struct {
	syncer *nft.Syncer
	// compiler remembers each Service's model while its objects are
	// unchanged, so a sync costs the Services that changed.
	compiler *services.Compiler
	// policies keeps parsed label selectors while their policies are
	// unchanged, so pod churn parses none.
	policies *policy.Compiler
	// applied is the Service model in the kernel, nil until the first
	// successful sync of this process.
	applied  *services.Model
	problems map[string]bool
}

func (c *Controller) sync(snap snapshot, st *syncState) error {
	start := time.Now()
	node, clusterCIDRs := c.nodeInfo(snap.nodes)
	svcModel, svcProblems := st.compiler.Desired(services.Snapshot{
		Services:       snap.services,
		EndpointSlices: snap.slices,
		Node:           services.Node{Name: c.cfg.NodeName, Addresses: node, ClusterCIDRs: clusterCIDRs},
		Config:         c.cfg.Services,
	})
	polModel, polProblems := st.policies.Compile(policy.Snapshot{
		Policies:   snap.policies,
		Pods:       snap.pods,
		Namespaces: snap.namespaces,
		Node:       c.cfg.NodeName,
	})
	c.report(st, svcProblems, polProblems)

	table, err := nft.Merge(c.render.Services(svcModel), c.render.Policy(polModel))
	if err != nil {
		// Two renderers claiming one name is a bug, not bad input: keep
		// what runs.
		return fmt.Errorf("merge services and policy tables: %w", err)
	}
	res, err := st.syncer.Sync(table)
	if err != nil && c.render.PolicyFailClosed != nil && len(polModel.Pods) > 0 {
		c.mu.Lock()
		applied := c.status.Table
		c.mu.Unlock()
		polTable, closed := c.render.PolicyFailClosed(polModel, applied)
		fallback, merr := nft.Merge(c.render.Services(svcModel), polTable)
		if merr == nil {
			if fres, ferr := st.syncer.Sync(fallback); ferr == nil {
				c.log.Error("kernel refused the table; pods whose policy changed fail closed until it accepts it", "err", err, "pods", closed)
				if c.events != nil {
					c.events.Warning("PolicyFailedClosed", fmt.Sprintf("nftables refused the policy update (%v); affected pods drop new traffic until it applies", err))
				}
				// The real table is retried with backoff; the fallback
				// holds meanwhile.
				rep := SyncReport{Duration: time.Since(start), Ops: res.Ops + fres.Ops, Err: err, Services: len(svcModel.Services), Pods: len(polModel.Pods), FailedClosed: len(closed)}
				c.emit(rep)
				c.mu.Lock()
				c.status.LastError = err
				c.mu.Unlock()
				return err
			}
		}
	}
	rep := SyncReport{Duration: time.Since(start), Ops: res.Ops, Dumped: res.Dumped, Err: err, Services: len(svcModel.Services), Pods: len(polModel.Pods)}
	if err != nil {
		c.emit(rep)
		c.mu.Lock()
		c.status.LastError = err
		c.mu.Unlock()
		return err
	}
	// Stale entries are found against what this process applied; right
	// after a restart we do not know what the old one had, and deleting
	// every UDP entry would reshuffle running flows for nothing.
	if st.applied != nil && c.conntrack != nil {
		if stale := services.StaleUDPFlows(st.applied, svcModel); len(stale) > 0 {
			n, err := c.conntrack.DeleteUDP(stale)
			if err != nil {
				c.log.Warn("clear stale UDP conntrack entries", "flows", len(stale), "err", err)
			}
			rep.StaleFlows = n
		}
	}
	st.applied = svcModel
	if c.health != nil {
		if err := c.health.Sync(healthChecks(svcModel)); err != nil {
			c.log.Warn("health-check node ports", "err", err)
		}
	}
	c.mu.Lock()
	c.status = Status{
		Services: svcModel, ServiceProblems: svcProblems,
		Policy: polModel, PolicyProblems: polProblems,
		Table: table, SyncedAt: time.Now(),
	}
	c.mu.Unlock()
	// Reported before readiness, so whoever waits for Ready sees the sync
	// that made it ready.
	c.emit(rep)
	select {
	case <-c.ready:
	default:
		close(c.ready)
		c.log.Info("nftables programmed", "services", len(svcModel.Services), "policyPods", len(polModel.Pods), "ops", res.Ops, "adopted", res.Dumped && res.Ops == 0)
	}
	if res.Ops > 0 {
		c.log.Debug("nftables synced", "ops", res.Ops, "duration", rep.Duration, "staleFlows", rep.StaleFlows)
	}
	return nil
}

func (c *Controller) emit(r SyncReport) {
	if c.onSync != nil {
		c.onSync(r)
	}
}

// informational are Service decisions that are normal operation (no
// endpoints yet, headless) rather than something an operator must fix; the
// API shows them, the log and events do not.
var informational = map[services.Reason]bool{
	services.ReasonNoEndpoints:             true,
	services.ReasonNoLocalEndpoints:        true,
	services.ReasonTerminatingFallback:     true,
	services.ReasonHeadless:                true,
	services.ReasonExternalName:            true,
	services.ReasonNodePortAddressFiltered: true,
}

// report logs each problem once when it appears and once when it is gone,
// and raises a Warning event on the Node for new ones.
func (c *Controller) report(st *syncState, svc []services.Problem, pol []policy.Problem) {
	type problem struct{ reason, text string }
	cur := map[string]problem{}
	for _, p := range svc {
		if !informational[p.Reason] {
			cur["service "+p.String()] = problem{"InvalidService", p.String()}
		}
	}
	for _, p := range pol {
		cur["networkpolicy "+p.String()] = problem{"InvalidNetworkPolicy", p.String()}
	}
	for k, p := range cur {
		if _, seen := st.problems[k]; seen {
			continue
		}
		c.log.Warn("cannot program as asked", "problem", k)
		if c.events != nil {
			c.events.Warning(p.reason, p.text)
		}
	}
	for k := range st.problems {
		if _, ok := cur[k]; !ok {
			c.log.Info("problem resolved", "problem", k)
		}
	}
	st.problems = map[string]bool{}
	for k := range cur {
		st.problems[k] = true
	}
}

// nodeInfo returns this node's addresses (NodePorts listen on them) and the
// cluster's pod ranges.
func (c *Controller) nodeInfo(nodes []*corev1.Node) (addrs []netip.Addr, cidrs []netip.Prefix) {
	cidrs = slices.Clone(c.cfg.ClusterCIDRs)
	derive := len(cidrs) == 0
	for _, n := range nodes {
		if n.Name == c.cfg.NodeName {
			for _, a := range n.Status.Addresses {
				if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
					continue
				}
				if ip, err := netip.ParseAddr(a.Address); err == nil && !slices.Contains(addrs, ip.Unmap()) {
					addrs = append(addrs, ip.Unmap())
				}
			}
		}
		if !derive {
			continue
		}
		for _, s := range n.Spec.PodCIDRs {
			if p, err := netip.ParsePrefix(s); err == nil {
				cidrs = append(cidrs, p.Masked())
			}
		}
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	slices.SortFunc(cidrs, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return addrs, slices.Compact(cidrs)
}

func healthChecks(m *services.Model) []HealthCheck {
	var out []HealthCheck
	for _, s := range m.Services {
		if s.HealthCheck == nil {
			continue
		}
		out = append(out, HealthCheck{Namespace: s.Namespace, Name: s.Name, NodePort: s.HealthCheck.NodePort, LocalEndpoints: s.HealthCheck.LocalEndpoints})
	}
	return out
}
