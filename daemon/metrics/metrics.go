// Package metrics exposes meridiand's Prometheus metrics and its health
// endpoints (/healthz, /readyz) on one HTTP listener.
//
// Names follow Prometheus conventions: the meridian_ prefix, base units
// (seconds, bytes), _total for counters. Values that already live in a
// subsystem (BGP sessions, IPAM allocations) are read at scrape time by
// collectors rather than copied into gauges, so they cannot go stale.
package metrics

import (
	"log/slog"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/dataplane"
	"github.com/meridian-net/meridian/daemon/routes"
)

// Metrics holds the registry and the instruments the daemon updates.
type Metrics struct {
	Registry *prometheus.Registry

	nftSyncSeconds  prometheus.Histogram
	nftSyncFailures prometheus.Counter
	nftOps          prometheus.Counter
	staleFlows      prometheus.Counter
	services        prometheus.Gauge
	policyPods      prometheus.Gauge
	failedClosed    prometheus.Gauge
	routeOps        *prometheus.CounterVec
	routeFailures   prometheus.Counter
}

// New registers every metric in a fresh registry, with the Go runtime and
// process collectors.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		nftSyncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "meridian_nftables_sync_duration_seconds",
			Help: "Time to compute and apply one sync of table inet meridian (Services and NetworkPolicy).",
			// From a no-op sync (well under a millisecond) to a cold full
			// sync of tens of thousands of Services.
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
		}),
		nftSyncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meridian_nftables_sync_failures_total",
			Help: "Syncs of table inet meridian the kernel refused or that could not be computed.",
		}),
		nftOps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meridian_nftables_operations_total",
			Help: "Object-level nftables operations sent (chains, sets, elements, rules).",
		}),
		staleFlows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meridian_conntrack_stale_entries_deleted_total",
			Help: "UDP conntrack entries deleted because their Service endpoint went away.",
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meridian_services_programmed",
			Help: "Services programmed in the node's nftables table at the last sync.",
		}),
		policyPods: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meridian_policy_local_pods",
			Help: "Local pods whose NetworkPolicy enforcement was programmed at the last sync.",
		}),
		failedClosed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meridian_policy_failed_closed_pods",
			Help: "Local pods dropping new traffic because the kernel refused their NetworkPolicy rules (0 once the full table applies).",
		}),
	}
	m.routeOps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_route_operations_total",
		Help: "Kernel routes Meridian installed (op=add), changed in place (replace) or deleted (remove).",
	}, []string{"op"})
	m.routeFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meridian_route_failures_total",
		Help: "Route installs, changes and removals the kernel refused or that could not be expressed.",
	})
	for _, op := range []string{"add", "replace", "remove"} {
		m.routeOps.WithLabelValues(op) // present at 0 before the first change
	}
	m.Registry.MustRegister(m.routeOps, m.routeFailures)
	m.Registry.MustRegister(m.nftSyncSeconds, m.nftSyncFailures, m.nftOps, m.staleFlows, m.services, m.policyPods, m.failedClosed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveSync records one dataplane sync; pass it as the dataplane's
// OnSync callback.
func (m *Metrics) ObserveSync(r dataplane.SyncReport) {
	m.nftSyncSeconds.Observe(r.Duration.Seconds())
	m.nftOps.Add(float64(r.Ops))
	m.failedClosed.Set(float64(r.FailedClosed))
	if r.Err != nil {
		m.nftSyncFailures.Inc()
		return
	}
	m.staleFlows.Add(float64(r.StaleFlows))
	m.services.Set(float64(r.Services))
	m.policyPods.Set(float64(r.Pods))
}

// ObserveRoutes records what one route apply did.
func (m *Metrics) ObserveRoutes(r routes.Result) {
	m.routeOps.WithLabelValues("add").Add(float64(r.Added))
	m.routeOps.WithLabelValues("replace").Add(float64(r.Replaced))
	m.routeOps.WithLabelValues("remove").Add(float64(r.Removed))
	m.routeFailures.Add(float64(r.Failed))
}

// WatchBGP registers a collector that reads the speaker's sessions at each
// scrape. peers returns an error while there is no speaker yet; the scrape
// then has no BGP series rather than failing.
func (m *Metrics) WatchBGP(peers func() ([]bgp.PeerState, error), log *slog.Logger) {
	m.Registry.MustRegister(&bgpCollector{peers: peers, log: log})
}

// WatchIPAM registers a collector of the node's pod address pool usage.
func (m *Metrics) WatchIPAM(usage func() (used, size int, err error), log *slog.Logger) {
	m.Registry.MustRegister(&ipamCollector{usage: usage, log: log})
}

var (
	bgpUp = prometheus.NewDesc("meridian_bgp_session_up",
		"1 when the BGP session with the peer is established.", []string{"peer", "peer_asn"}, nil)
	bgpPrefixes = prometheus.NewDesc("meridian_bgp_prefixes",
		"IPv4 unicast paths from the peer, by import verdict (received, accepted).", []string{"peer", "state"}, nil)
	bgpRejected = prometheus.NewDesc("meridian_bgp_prefixes_rejected",
		"Paths from the peer that the import policy rejected, by reason.", []string{"peer", "reason"}, nil)
	ipamUsed = prometheus.NewDesc("meridian_ipam_addresses_allocated",
		"Pod addresses allocated from this node's pool.", nil, nil)
	ipamSize = prometheus.NewDesc("meridian_ipam_addresses_total",
		"Usable pod addresses in this node's pool.", nil, nil)
)

type bgpCollector struct {
	peers func() ([]bgp.PeerState, error)
	log   *slog.Logger
}

func (c *bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- bgpUp
	ch <- bgpPrefixes
	ch <- bgpRejected
}

func (c *bgpCollector) Collect(ch chan<- prometheus.Metric) {
	peers, err := c.peers()
	if err != nil {
		c.log.Debug("bgp metrics unavailable", "err", err)
		return
	}
	for _, p := range peers {
		addr := p.Address.String()
		up := 0.0
		if p.State == "established" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(bgpUp, prometheus.GaugeValue, up, addr, formatASN(p.ASN))
		ch <- prometheus.MustNewConstMetric(bgpPrefixes, prometheus.GaugeValue, float64(p.Received), addr, "received")
		ch <- prometheus.MustNewConstMetric(bgpPrefixes, prometheus.GaugeValue, float64(p.Accepted), addr, "accepted")
		for reason, n := range p.Rejected {
			ch <- prometheus.MustNewConstMetric(bgpRejected, prometheus.GaugeValue, float64(n), addr, reason)
		}
	}
}

type ipamCollector struct {
	usage func() (used, size int, err error)
	log   *slog.Logger
}

func (c *ipamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ipamUsed
	ch <- ipamSize
}

func (c *ipamCollector) Collect(ch chan<- prometheus.Metric) {
	used, size, err := c.usage()
	if err != nil {
		c.log.Debug("ipam metrics unavailable", "err", err)
		return
	}
	ch <- prometheus.MustNewConstMetric(ipamUsed, prometheus.GaugeValue, float64(used))
	ch <- prometheus.MustNewConstMetric(ipamSize, prometheus.GaugeValue, float64(size))
}

func formatASN(asn uint32) string { return strconv.FormatUint(uint64(asn), 10) }
