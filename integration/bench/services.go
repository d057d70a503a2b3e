package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/meridian-net/meridian/integration/lab"
)

// ServicesOptions configure RunServices.
type ServicesOptions struct {
	BinDir string
	// Sizes are the Service counts to measure at, ascending; 10 is always
	// measured first as the baseline of the connect latency.
	Sizes []int
	// Connects per latency measurement (1000).
	Connects int
	// Changes is how many endpoint changes are timed per size and proxy (3).
	Changes int
	Out     io.Writer
}

// BaselineServices is the small size the connect latency is compared to.
const BaselineServices = 10

// ServiceRun is what one proxy showed at one size.
type ServiceRun struct {
	Proxy    string  `json:"proxy"`
	Services int     `json:"services"`
	FullSync float64 `json:"full_sync_s"`
	// SyncMetric is the proxy's own sync duration histogram sum at the
	// moment the table was complete, over SyncMetricCount syncs.
	SyncMetric      float64   `json:"sync_metric_s"`
	SyncMetricCount uint64    `json:"sync_metric_count"`
	EndpointChange  []float64 `json:"endpoint_change_ms"`
	PeakRSS         float64   `json:"peak_rss_mib"`
	ChildPeakRSS    float64   `json:"child_peak_rss_mib,omitempty"`
	ConnectMedian   float64   `json:"connect_median_ms"`
	ConnectP99      float64   `json:"connect_p99_ms"`
}

type proxyKind struct {
	name   string // as printed
	short  string // in namespace and Node names
	table  tableRef
	metric string // sync duration histogram
	argv   func(binDir, node, kubeconfig, work string) []string
	url    string // metrics, inside its namespace
	net    *benchNet
	// addr is its address on the lab segment, the bench Node's InternalIP.
	addr   netip.Addr
	stopEP func()
}

func benchNodeName(short string) string { return "meridian-bench-" + short }

func kubeProxyKind() *proxyKind {
	return &proxyKind{
		name: "kube-proxy", short: "kp", table: kubeProxyTable, addr: netip.MustParseAddr("198.18.0.240"),
		metric: "kubeproxy_sync_full_proxy_rules_duration_seconds",
		url:    "http://127.0.0.1:10249/metrics",
		argv: func(binDir, node, kubeconfig, _ string) []string {
			return []string{
				filepath.Join(binDir, "kube-proxy"), "--proxy-mode=nftables",
				"--kubeconfig=" + kubeconfig, "--hostname-override=" + node,
				"--cluster-cidr=" + lab.ClusterCIDR.String(),
				// Leave every sysctl alone: 0 means "as it is".
				"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
				"--conntrack-tcp-timeout-close-wait=0",
				"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256",
				"--v=2",
			}
		},
	}
}

func meridianKind() *proxyKind {
	return &proxyKind{
		name: "meridiand", short: "mer", table: meridianTable, addr: netip.MustParseAddr("198.18.0.241"),
		metric: "meridian_nftables_sync_duration_seconds",
		url:    "http://127.0.0.1:9091/metrics",
		argv: func(binDir, node, kubeconfig, work string) []string {
			// The real meridiand, BGP included: its sessions to the lab
			// nodes stay down (their meridiands are paused) and it has
			// no pods, so only its dataplane works.
			return []string{
				filepath.Join(binDir, "meridiand"), "--node-name=" + node,
				"--kubeconfig=" + kubeconfig, "--state-dir=" + filepath.Join(work, "meridiand-state"),
				"--api-socket=", "--metrics-addr=127.0.0.1:9091",
				"--cluster-cidr=" + lab.ClusterCIDR.String(),
			}
		},
	}
}

// RunServices measures kube-proxy's nftables mode and meridiand against
// the same API state, each in its own namespaces, at each size.
func RunServices(ctx context.Context, l *lab.Lab, opts ServicesOptions) ([]Figure, []ServiceRun, error) {
	if opts.Connects == 0 {
		opts.Connects = 1000
	}
	if opts.Changes == 0 {
		opts.Changes = 3
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	sizes := slices.Compact(slices.Sorted(slices.Values(append([]int{BaselineServices}, opts.Sizes...))))
	for _, bin := range []string{"kube-proxy", "meridiand"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, bin)); err != nil {
			return nil, nil, fmt.Errorf("need %s (make build tools): %w", bin, err)
		}
	}
	unlock, err := lab.LockHost(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	c, err := l.Client()
	if err != nil {
		return nil, nil, err
	}
	cleanupCtx := context.WithoutCancel(ctx)

	// The lab's own meridiands would program every bench Service too, and
	// at 10k each of their syncs costs tens of seconds of the same two
	// cores: they rest while the proxies under test run.
	fmt.Fprintf(opts.Out, "# Service NAT: kube-proxy --proxy-mode=nftables vs meridiand, %d endpoints per Service; lab meridiands paused\n", EndpointsPerService)
	if err := l.PauseDaemons(); err != nil {
		return nil, nil, err
	}
	defer func() {
		if err := l.ResumeDaemons(context.WithoutCancel(ctx)); err != nil {
			fmt.Fprintf(opts.Out, "# resume the lab's meridiands: %v\n", err)
		}
	}()

	work, err := os.MkdirTemp("", "meridian-bench-services-")
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(opts.Out, "# logs in %s\n", work)
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ServicesNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, nil, fmt.Errorf("create namespace: %w", err)
	}
	kinds := []*proxyKind{kubeProxyKind(), meridianKind()}
	defer func() {
		for _, k := range kinds {
			if k.stopEP != nil {
				k.stopEP()
			}
			if k.net != nil {
				k.net.teardown()
			}
			_ = c.CoreV1().Nodes().Delete(cleanupCtx, benchNodeName(k.short), metav1.DeleteOptions{})
		}
		fmt.Fprintln(opts.Out, "# removing the bench Services")
		if err := deleteServices(cleanupCtx, c, 0); err != nil {
			fmt.Fprintf(opts.Out, "# remove bench Services: %v\n", err)
		}
	}()
	for _, k := range kinds {
		if err := ensureBenchNode(ctx, c, benchNodeName(k.short), k.addr); err != nil {
			return nil, nil, err
		}
		k.net = newBenchNet(k.short)
		if err := k.net.setup(); err != nil {
			return nil, nil, fmt.Errorf("%s namespaces: %w", k.name, err)
		}
		if err := k.net.attachToLab("bench-"+k.short, k.addr); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", k.name, err)
		}
		if k.stopEP, err = serveEndpoints(k.net.ep); err != nil {
			return nil, nil, fmt.Errorf("%s endpoints: %w", k.name, err)
		}
	}

	objs := &benchObjects{c: c, ips: map[int]netip.Addr{}}
	var runs []ServiceRun
	change := 0
	for _, n := range sizes {
		t0 := time.Now()
		if err := objs.ensure(ctx, n); err != nil {
			return nil, runs, fmt.Errorf("create %d Services: %w", n, err)
		}
		fmt.Fprintf(opts.Out, "# %d Services with their EndpointSlices in the API (%s)\n", n, time.Since(t0).Round(100*time.Millisecond))
		for _, k := range kinds {
			r, err := measure(ctx, k, objs, n, &change, opts, work, l.Kubeconfig())
			if err != nil {
				return nil, runs, fmt.Errorf("%s at %d Services: %w", k.name, n, err)
			}
			runs = append(runs, r)
			child := ""
			if r.ChildPeakRSS > 0 {
				child = fmt.Sprintf(" (+ child %.0f MiB)", r.ChildPeakRSS)
			}
			fmt.Fprintf(opts.Out, "  %-10s %6d svc: full sync %7.2f s (own metric %.2f s over %d syncs), endpoint change %v ms, peak RSS %.0f MiB%s, connect median %.3f ms p99 %.3f ms\n",
				r.Proxy, n, r.FullSync, r.SyncMetric, r.SyncMetricCount, fmtMs(r.EndpointChange), r.PeakRSS, child, r.ConnectMedian, r.ConnectP99)
		}
	}
	return ServiceFigures(runs), runs, nil
}

func fmtMs(v []float64) string {
	s := "["
	for i, x := range v {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%.0f", x)
	}
	return s + "]"
}

func ensureBenchNode(ctx context.Context, c kubernetes.Interface, name string, addr netip.Addr) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{benchLabel: "node"}},
		// No agent runs for it: the scheduler must not put pods there.
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: benchLabel, Value: "true", Effect: corev1.TaintEffectNoSchedule}}},
	}
	if _, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create bench node %s: %w", name, err)
	}
	// kube-proxy waits 30 s for its Node's addresses before it programs
	// anything. The controller manager writes the Node too (pod CIDR).
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		got, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		got.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr.String()}}
		_, err = c.CoreV1().Nodes().UpdateStatus(ctx, got, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("bench node %s address: %w", name, err)
	}
	return nil
}

// benchObjects tracks the bench Services in the API and their ClusterIPs.
type benchObjects struct {
	c   kubernetes.Interface
	mu  sync.Mutex
	ips map[int]netip.Addr
	// listed is set once the objects of an earlier run were read.
	listed bool
}

// workers bounds parallel API calls: the API server on 2 shared cores
// slows from about 250 to 70 creations a second as it grows
// (/work/shared/notes/nftables-scale.md); parallel calls keep it busy.
const workers = 24

// ensure makes Services 0..n-1 and their slices exist, and no others.
func (o *benchObjects) ensure(ctx context.Context, n int) error {
	if !o.listed {
		svcs, err := o.c.CoreV1().Services(ServicesNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, s := range svcs.Items {
			if i, ok := ServiceIndex(s.Name); ok {
				if ip, err := netip.ParseAddr(s.Spec.ClusterIP); err == nil {
					o.ips[i] = ip
				}
			}
		}
		// Slices of an earlier run may carry its endpoint changes; they
		// are rewritten below with the generated endpoints.
		o.listed = true
		if err := deleteServices(ctx, o.c, n); err != nil {
			return err
		}
		for i := range o.ips {
			if i >= n {
				delete(o.ips, i)
			}
		}
	}
	return parallel(ctx, n, func(ctx context.Context, i int) error {
		o.mu.Lock()
		_, have := o.ips[i]
		o.mu.Unlock()
		if !have {
			s, err := o.c.CoreV1().Services(ServicesNamespace).Create(ctx, BenchService(i), metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				s, err = o.c.CoreV1().Services(ServicesNamespace).Get(ctx, ServiceName(i), metav1.GetOptions{})
			}
			if err != nil {
				return err
			}
			ip, err := netip.ParseAddr(s.Spec.ClusterIP)
			if err != nil {
				return fmt.Errorf("service %s: ClusterIP %q: %w", s.Name, s.Spec.ClusterIP, err)
			}
			o.mu.Lock()
			o.ips[i] = ip
			o.mu.Unlock()
		}
		return o.setEndpoints(ctx, i, EndpointAddrs(i), have)
	})
}

// setEndpoints creates or replaces Service i's slice.
func (o *benchObjects) setEndpoints(ctx context.Context, i int, addrs []netip.Addr, mayExist bool) error {
	api := o.c.DiscoveryV1().EndpointSlices(ServicesNamespace)
	want := BenchSlice(i, addrs)
	if !mayExist {
		_, err := api.Create(ctx, want, metav1.CreateOptions{})
		if !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	cur, err := api.Get(ctx, want.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, want, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	want.ResourceVersion = cur.ResourceVersion
	_, err = api.Update(ctx, want, metav1.UpdateOptions{})
	return err
}

func (o *benchObjects) clusterIPs(n int) map[netip.Addr]bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[netip.Addr]bool, n)
	for i := range n {
		out[o.ips[i]] = true
	}
	return out
}

func (o *benchObjects) clusterIP(i int) netip.Addr {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ips[i]
}

// deleteServices removes bench Services (and slices) with index >= from.
func deleteServices(ctx context.Context, c kubernetes.Interface, from int) error {
	svcs, err := c.CoreV1().Services(ServicesNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	if from == 0 {
		// One call for every slice; Services go one by one. At 10k slices
		// the API server can give up on the collection (an HTTP/2 stream
		// reset was seen here); the loop below deletes each Service's
		// slice too, so that is only slower, not an error.
		_ = c.DiscoveryV1().EndpointSlices(ServicesNamespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: benchLabel})
	}
	var names []string
	for _, s := range svcs.Items {
		if i, ok := ServiceIndex(s.Name); ok && i >= from {
			names = append(names, s.Name)
		}
	}
	return parallel(ctx, len(names), func(ctx context.Context, j int) error {
		err := c.CoreV1().Services(ServicesNamespace).Delete(ctx, names[j], metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		err = c.DiscoveryV1().EndpointSlices(ServicesNamespace).Delete(ctx, names[j]+"-bench", metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		return nil
	})
}

// parallel runs f(0..n-1) on a few workers and returns the first error.
func parallel(ctx context.Context, n int, f func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(ctx, i); err != nil {
					cancel(fmt.Errorf("item %d: %w", i, err))
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// measure runs one proxy from a cold start at n Services.
func measure(ctx context.Context, k *proxyKind, objs *benchObjects, n int, change *int, opts ServicesOptions, work, kubeconfig string) (ServiceRun, error) {
	r := ServiceRun{Proxy: k.name, Services: n}
	if err := removeTables(k.net.proxy, k.table); err != nil {
		return r, err
	}
	node := benchNodeName(k.short)
	logPath := filepath.Join(work, fmt.Sprintf("%s-%d.log", k.name, n))
	p, err := startProc(k.name, k.net.proxy, k.argv(opts.BinDir, node, kubeconfig, work), nil, logPath)
	if err != nil {
		return r, err
	}
	defer p.stop(10 * time.Second)
	fail := func(err error) (ServiceRun, error) {
		return r, fmt.Errorf("%w (log %s):\n%s", err, logPath, p.logTail())
	}

	// Full sync: process start until the frontend map holds every bench
	// Service's ClusterIP.
	want := objs.clusterIPs(n)
	for {
		got, err := countFrontends(k.net.proxy, k.table, want)
		if err != nil {
			return fail(err)
		}
		if got >= n {
			r.FullSync = time.Since(p.start).Seconds()
			break
		}
		if !p.alive() {
			return fail(errors.New("exited before programming every Service"))
		}
		if time.Since(p.start) > 20*time.Minute {
			return fail(fmt.Errorf("%d of %d Services after 20 minutes", got, n))
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	// The metric is observed when the sync returns, just after the commit.
	for try := 0; try < 100; try++ {
		text, err := scrape(ctx, k.net.proxy, k.url)
		if err == nil {
			if sum, count, ok := HistogramSumCount(text, k.metric); ok && count > 0 {
				r.SyncMetric, r.SyncMetricCount = sum, count
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Endpoint changes: one slice's last endpoint replaced by a fresh
	// address, timed from the API call until its chain is committed.
	for range opts.Changes {
		// Idle first: kube-proxy holds syncs 1 s apart (--min-sync-period),
		// meridiand 100 ms; a change right after a sync would time that
		// hold-off, not the work.
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(2 * time.Second):
		}
		*change++
		svc := 1 + (*change*7919)%(n-1)
		addrs := EndpointAddrs(svc)
		fresh := ChangedAddr(*change)
		addrs[len(addrs)-1] = fresh
		w, err := watchChains(k.net.proxy)
		if err != nil {
			return fail(err)
		}
		t0 := time.Now()
		if err := objs.setEndpoints(ctx, svc, addrs, true); err != nil {
			w.close()
			return fail(fmt.Errorf("update slice of %s: %w", ServiceName(svc), err))
		}
		at, err := w.waitEndpoint(ctx, fresh, 2*time.Minute)
		w.close()
		if err != nil {
			return fail(fmt.Errorf("%w; %s", err, changeDiagnosis(ctx, objs.c, k, svc)))
		}
		r.EndpointChange = append(r.EndpointChange, float64(at.Sub(t0).Microseconds())/1000)
	}

	// Connect latency through the data path to Service 0's real endpoints.
	target := netip.AddrPortFrom(objs.clusterIP(0), servicePort)
	lat, err := connectLatency(ctx, k.net.client, target, opts.Connects)
	if err != nil {
		return fail(err)
	}
	r.ConnectMedian = ms(Percentile(lat, 0.5))
	r.ConnectP99 = ms(Percentile(lat, 0.99))

	own, child := p.peaks()
	r.PeakRSS, r.ChildPeakRSS = mib(own), mib(child)
	return r, nil
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// ServiceFigures turns runs into figures: Meridian against kube-proxy at
// each size, and each proxy's connect latency against its own at the
// baseline size.
func ServiceFigures(runs []ServiceRun) []Figure {
	by := map[string]map[int]ServiceRun{}
	var sizes []int
	for _, r := range runs {
		if by[r.Proxy] == nil {
			by[r.Proxy] = map[int]ServiceRun{}
		}
		by[r.Proxy][r.Services] = r
		if !slices.Contains(sizes, r.Services) {
			sizes = append(sizes, r.Services)
		}
	}
	slices.Sort(sizes)
	const kp, mer = "kube-proxy", "meridiand"
	var out []Figure
	vs := func(name string, unit string, n int, get func(ServiceRun) float64, note string) {
		m, okM := by[mer][n]
		b, okB := by[kp][n]
		if !okM || !okB {
			return
		}
		out = append(out, Figure{
			Name: fmt.Sprintf("%s, %d Services (meridiand)", name, n), Value: get(m), Unit: unit,
			Against: kp + " nftables", Baseline: get(b), Ratio: ratio(get(m), get(b)), Note: note,
		})
	}
	for _, n := range sizes {
		vs("full sync from start", "s", n, func(r ServiceRun) float64 { return r.FullSync }, "API state complete before start; table polled over netlink")
		vs("sync time, own metric", "s", n, func(r ServiceRun) float64 { return r.SyncMetric }, "meridian_nftables_sync_duration_seconds vs kubeproxy_sync_full_proxy_rules_duration_seconds, sum")
		vs("one endpoint change, median", "ms", n, func(r ServiceRun) float64 { return medianF(r.EndpointChange) }, "EndpointSlice update to new endpoint chain committed")
		vs("peak RSS", "MiB", n, func(r ServiceRun) float64 { return r.PeakRSS }, "VmHWM; kube-proxy's nft child not included")
		if b, ok := by[kp][n]; ok && b.ChildPeakRSS > 0 {
			out = append(out, Figure{Name: fmt.Sprintf("kube-proxy nft child peak RSS, %d Services", n), Value: b.ChildPeakRSS, Unit: "MiB", Note: "sampled every 20 ms"})
		}
		vs("TCP connect to a ClusterIP, median", "ms", n, func(r ServiceRun) float64 { return r.ConnectMedian }, "")
		vs("TCP connect to a ClusterIP, p99", "ms", n, func(r ServiceRun) float64 { return r.ConnectP99 }, "")
	}
	if len(sizes) > 1 {
		lo, hi := sizes[0], sizes[len(sizes)-1]
		for _, p := range []string{mer, kp} {
			a, okA := by[p][hi]
			b, okB := by[p][lo]
			if !okA || !okB {
				continue
			}
			out = append(out,
				Figure{Name: fmt.Sprintf("%s TCP connect median, %d Services", p, hi), Value: a.ConnectMedian, Unit: "ms", Against: fmt.Sprintf("%d Services", lo), Baseline: b.ConnectMedian, Ratio: ratio(a.ConnectMedian, b.ConnectMedian), Note: "flat is the goal: ratio ~1"},
				Figure{Name: fmt.Sprintf("%s TCP connect p99, %d Services", p, hi), Value: a.ConnectP99, Unit: "ms", Against: fmt.Sprintf("%d Services", lo), Baseline: b.ConnectP99, Ratio: ratio(a.ConnectP99, b.ConnectP99)})
		}
	}
	return out
}

func medianF(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return median(v)
}

// PrintFigures prints figures the way Run does.
func PrintFigures(w io.Writer, figs []Figure) {
	for _, f := range figs {
		line := fmt.Sprintf("%-56s %10.3f %s", f.Name, f.Value, f.Unit)
		if f.Against != "" {
			line += fmt.Sprintf("   vs %s %.3f %s (ratio %.2f)", f.Against, f.Baseline, f.Unit, f.Ratio)
		}
		fmt.Fprintln(w, line)
	}
}

// changeDiagnosis says what the API and the proxy's metrics show when an
// endpoint change did not arrive.
func changeDiagnosis(ctx context.Context, c kubernetes.Interface, k *proxyKind, svc int) string {
	out := ""
	if s, err := c.DiscoveryV1().EndpointSlices(ServicesNamespace).Get(ctx, ServiceName(svc)+"-bench", metav1.GetOptions{}); err == nil {
		var addrs []string
		for _, e := range s.Endpoints {
			addrs = append(addrs, e.Addresses...)
		}
		out += fmt.Sprintf("slice %s in the API: %v", s.Name, addrs)
	} else {
		out += fmt.Sprintf("slice: %v", err)
	}
	if text, err := scrape(ctx, k.net.proxy, k.url); err == nil {
		for _, line := range strings.Split(text, "\n") {
			if strings.Contains(line, "sync") && !strings.HasPrefix(line, "#") && !strings.Contains(line, "_bucket") {
				out += "\n  " + line
			}
		}
	} else {
		out += fmt.Sprintf("; metrics: %v", err)
	}
	return out
}
