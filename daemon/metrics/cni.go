package metrics

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-net/meridian/cni-plugin/opstats"
)

// CNIRecords turns the records meridian-cni appends in the node's state
// directory (package opstats) into meridian_cni_* metrics. The plugin runs
// for one operation and cannot be scraped, so its measurements wait in the
// file until meridiand drains them: at every scrape, and every
// DrainInterval in Run so the file stays small when nobody scrapes.
type CNIRecords struct {
	stateDir string
	log      *slog.Logger
	// DrainInterval is how often Run drains without a scrape.
	DrainInterval time.Duration

	mu       sync.Mutex // one drain at a time: counts must not be lost or doubled
	duration *prometheus.HistogramVec
	errors   *prometheus.CounterVec
}

// WatchCNI registers the CNI operation metrics read from stateDir; Run
// drains it periodically.
func (m *Metrics) WatchCNI(stateDir string, log *slog.Logger) *CNIRecords {
	c := &CNIRecords{
		stateDir:      stateDir,
		log:           log,
		DrainInterval: 10 * time.Second,
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "meridian_cni_operation_duration_seconds",
			Help: "Time meridian-cni took for one CNI operation (add, del, check), failed ones included.",
			// From a DEL of nothing (a millisecond) to an ADD waiting
			// on the IPAM lock behind a burst of pod starts.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_cni_operation_errors_total",
			Help: "CNI operations meridian-cni failed, by operation and CNI error code (11 try again later, 100 no free address, ...).",
		}, []string{"op", "code"}),
	}
	// Every operation has a series from the start, so rate() sees the
	// first one.
	for _, op := range []opstats.Op{opstats.OpAdd, opstats.OpDel, opstats.OpCheck} {
		c.duration.WithLabelValues(op.String())
	}
	m.Registry.MustRegister(c)
	return c
}

// Run drains the records every DrainInterval until ctx is done.
func (c *CNIRecords) Run(ctx context.Context) {
	t := time.NewTicker(c.DrainInterval)
	defer t.Stop()
	for {
		c.drain()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *CNIRecords) drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	recs, skipped, err := opstats.Drain(c.stateDir)
	if err != nil {
		c.log.Warn("CNI operation records not read", "subsys", "metrics", "err", err)
		return
	}
	if skipped > 0 {
		c.log.Warn("CNI operation records skipped: torn or of another version", "subsys", "metrics", "bytes", skipped)
	}
	for _, r := range recs {
		op := r.Op.String()
		c.duration.WithLabelValues(op).Observe(r.Duration.Seconds())
		if r.Code != 0 {
			c.errors.WithLabelValues(op, strconv.Itoa(int(r.Code))).Inc()
		}
	}
}

// Describe implements prometheus.Collector.
func (c *CNIRecords) Describe(ch chan<- *prometheus.Desc) {
	c.duration.Describe(ch)
	c.errors.Describe(ch)
}

// Collect implements prometheus.Collector: what the plugin recorded since
// the last drain is counted first.
func (c *CNIRecords) Collect(ch chan<- prometheus.Metric) {
	c.drain()
	c.duration.Collect(ch)
	c.errors.Collect(ch)
}
