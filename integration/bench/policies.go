package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/meridian-net/meridian/integration/lab"
)

// PoliciesOptions configure RunPolicies.
type PoliciesOptions struct {
	BinDir   string
	Policies int // 1000
	Pods     int // generated pods, 2000
	// Connects per latency measurement (1000).
	Connects int
	// Trials is how many probe pods are timed from IP to enforcement (5).
	Trials int
	Out    io.Writer
}

// PolicyRun is what one agent showed.
type PolicyRun struct {
	Agent string `json:"agent"`
	// Label names the build that ran, e.g. "kube-network-policies v0.8.0
	// (xt NFQUEUE build: ...)" when the release could not run here.
	Label    string `json:"label,omitempty"`
	Policies int    `json:"policies"`
	Pods     int    `json:"pods"`
	// LocalPods is how many pods the measured node hosts; Elements how
	// many addresses of theirs the agent's sets must hold (Meridian: one
	// per pod and isolated direction; kube-network-policies: one per
	// selected pod).
	LocalPods int `json:"local_pods"`
	Elements  int `json:"elements"`
	// ProgramAll is from the agent's start, every object in the API, until
	// its table held every isolated local pod.
	ProgramAll float64 `json:"program_all_s"`
	// Enforce is, per probe pod, from the status update that gives it its
	// IP until a connect from a source no policy allows is dropped.
	Enforce []float64 `json:"enforce_ms"`
	// Verified: after ProgramAll, the allowed client connects to the
	// server and ProbeSource is dropped.
	Verified bool `json:"verified"`
	// SyncMetric is meridiand's own sync duration histogram sum, over
	// SyncCount syncs, when the measurements end.
	SyncMetric float64 `json:"sync_metric_s,omitempty"`
	SyncCount  uint64  `json:"sync_metric_count,omitempty"`
	// KernelKiB is the kernel memory freed by deleting the agent's table.
	KernelKiB float64    `json:"kernel_kib"`
	Objects   NftObjects `json:"objects"`
	PeakRSS   float64    `json:"peak_rss_mib"`
	RSS       float64    `json:"rss_mib"`
	// Connect latency, client to server, with no policy in the API
	// (Connect0*) and with all of them (Connect*).
	Connect0Median float64 `json:"connect0_median_ms"`
	Connect0P99    float64 `json:"connect0_p99_ms"`
	ConnectMedian  float64 `json:"connect_median_ms"`
	ConnectP99     float64 `json:"connect_p99_ms"`
	// Error says why the agent could not be measured (the others still
	// are).
	Error string `json:"error,omitempty"`
}

// The agents, as PolicyRun.Agent spells them.
const (
	AgentMeridian = "meridiand"
	AgentKNP      = "kube-network-policies"
)

// measuredNodeAddr is the measured bench Node's InternalIP, owned by the
// agent's namespace; the other bench Nodes get the next addresses, which
// nobody owns.
var measuredNodeAddr = netip.MustParseAddr("198.18.0.242")

// RunPolicies measures meridiand and kube-network-policies, one after the
// other, as the first of three bench Nodes in the same namespaces, against
// the same API state: opts.Pods pods spread over the three Nodes and
// PolicyNamespaces namespaces, and opts.Policies policies. The other two
// Nodes have no agent: their pods are API state that selector sets must
// still hold.
func RunPolicies(ctx context.Context, l *lab.Lab, opts PoliciesOptions) ([]Figure, []PolicyRun, error) {
	if opts.Policies == 0 {
		opts.Policies = 1000
	}
	if opts.Pods == 0 {
		opts.Pods = 2000
	}
	if opts.Connects == 0 {
		opts.Connects = 1000
	}
	if opts.Trials == 0 {
		opts.Trials = 5
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.Pods > MaxPolicyPods {
		return nil, nil, fmt.Errorf("at most %d pods", MaxPolicyPods)
	}
	if opts.Policies < 2 {
		return nil, nil, errors.New("at least 2 policies (the first two allow client -> server)")
	}
	if opts.Trials > maxProbes {
		opts.Trials = maxProbes
	}
	for _, bin := range []string{"meridiand", knpRelease} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, bin)); err != nil {
			return nil, nil, fmt.Errorf("need %s (make bench builds it): %w", bin, err)
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
	out := opts.Out

	// The lab's meridiands would compile the bench policies too, on the
	// same two cores: they rest while the agents under test run.
	fmt.Fprintf(out, "# NetworkPolicy: meridiand vs kube-network-policies, %d policies over %d pods in %d namespaces on %d bench Nodes; the agent runs as %s (its pods are a third); lab meridiands paused\n",
		opts.Policies, opts.Pods, PolicyNamespaces, PolicyNodes, PolicyNodeName(0))
	if err := l.PauseDaemons(); err != nil {
		return nil, nil, err
	}
	defer func() {
		if err := l.ResumeDaemons(context.WithoutCancel(ctx)); err != nil {
			fmt.Fprintf(out, "# resume the lab's meridiands: %v\n", err)
		}
	}()

	work, err := os.MkdirTemp("", "meridian-bench-policies-")
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(out, "# logs in %s\n", work)

	hbCtx, stopHB := context.WithCancel(ctx)
	var nodes []string
	defer func() {
		stopHB()
		fmt.Fprintln(out, "# removing the bench pods, policies, namespaces and Nodes")
		if err := deletePolicyObjects(cleanupCtx, c, true); err != nil {
			fmt.Fprintf(out, "# remove bench objects: %v\n", err)
		}
		for _, n := range nodes {
			_ = c.CoreV1().Nodes().Delete(cleanupCtx, n, metav1.DeleteOptions{})
		}
	}()
	if err := deletePolicyObjects(ctx, c, false); err != nil {
		return nil, nil, fmt.Errorf("remove an earlier run's objects: %w", err)
	}
	for i := range PolicyNodes {
		n := PolicyNodeName(i)
		addr := measuredNodeAddr
		for range i {
			addr = addr.Next()
		}
		if err := ensurePolicyNode(ctx, c, n, addr); err != nil {
			return nil, nil, err
		}
		nodes = append(nodes, n)
	}
	go renewLeases(hbCtx, c, nodes)

	bn := newBenchNet("pol")
	defer bn.teardown()
	if err := bn.setup(); err != nil {
		return nil, nil, fmt.Errorf("bench namespaces: %w", err)
	}
	if err := bn.attachToLab("bench-pol", measuredNodeAddr); err != nil {
		return nil, nil, err
	}
	if err := addClientAddr(bn.client); err != nil {
		return nil, nil, err
	}
	stopServer, err := serveEndpoints(bn.ep)
	if err != nil {
		return nil, nil, fmt.Errorf("server: %w", err)
	}
	defer stopServer()

	t0 := time.Now()
	if err := createPolicyPods(ctx, c, opts.Pods); err != nil {
		return nil, nil, fmt.Errorf("create pods: %w", err)
	}
	fmt.Fprintf(out, "# %d pods (+ server and client) in the API (%s)\n", opts.Pods, time.Since(t0).Round(100*time.Millisecond))

	env, cleanCreds, err := knpCredentials(ctx, c, l.Kubeconfig(), work)
	if err != nil {
		return nil, nil, err
	}
	defer cleanCreds()
	agents := []*policyAgent{meridianPolicyAgent(), knpPolicyAgent(env, opts.BinDir, knpRelease)}
	runs := make([]PolicyRun, len(agents))
	for i, a := range agents {
		runs[i] = PolicyRun{Agent: a.name, Label: a.label, Policies: opts.Policies, Pods: opts.Pods}
	}

	// Connect latency with no policy at all.
	server := netip.AddrPortFrom(ServerAddr, serverPort)
	for i, a := range agents {
		p, err := startAgent(ctx, a, bn, opts, work, l.Kubeconfig(), "0")
		if errors.Is(err, errNoNFTQueue) && a.bin == knpRelease {
			// The release first, so that kernels with CONFIG_NFT_QUEUE
			// measure it as it ships; the xtqueue build only where the
			// kernel refuses the release's table.
			xt := knpPolicyAgent(env, opts.BinDir, knpXTQueue)
			if _, serr := os.Stat(filepath.Join(opts.BinDir, xt.bin)); serr != nil {
				err = fmt.Errorf("%w\n(make bench builds bin/%s, the release patched for such kernels: %v)", err, xt.bin, serr)
			} else {
				first, _, _ := strings.Cut(err.Error(), "\n")
				first = strings.TrimSuffix(first, ":")
				fmt.Fprintf(out, "  %-22s cannot run: %s\n  %-22s running %s instead\n", a.label, first, "", xt.bin)
				a = xt
				agents[i], runs[i].Label = a, a.label
				p, err = startAgent(ctx, a, bn, opts, work, l.Kubeconfig(), "0")
			}
		}
		if ctx.Err() != nil {
			return nil, runs, ctx.Err()
		}
		if err != nil {
			// One agent that cannot run here still leaves the other's
			// figures worth having.
			runs[i].Error = err.Error()
			fmt.Fprintf(out, "  %-22s CANNOT RUN: %v\n", a.label, err)
			continue
		}
		// Let start-up work (informer lists, BGP, the first syncs) end:
		// the latency is the packet path's, not the agent's start.
		settle(ctx)
		lat, err := connectLatency(ctx, bn.client, server, opts.Connects)
		p.kill()
		if err != nil {
			return nil, runs, fmt.Errorf("%s, no policies: %w", a.name, err)
		}
		runs[i].Connect0Median, runs[i].Connect0P99 = ms(Percentile(lat, 0.5)), ms(Percentile(lat, 0.99))
		fmt.Fprintf(out, "  %-22s no policies: connect median %.3f ms p99 %.3f ms\n", a.label, runs[i].Connect0Median, runs[i].Connect0P99)
		if err := removeTables(bn.proxy, tableRef{family: a.table.Family, table: a.table.Name}); err != nil {
			return nil, runs, err
		}
	}

	policies := BenchPolicies(opts.Policies)
	t0 = time.Now()
	if err := parallel(ctx, len(policies), func(ctx context.Context, i int) error {
		_, err := c.NetworkingV1().NetworkPolicies(policies[i].Namespace).Create(ctx, policies[i], metav1.CreateOptions{})
		return err
	}); err != nil {
		return nil, runs, fmt.Errorf("create policies: %w", err)
	}
	fmt.Fprintf(out, "# %d policies in the API (%s)\n", len(policies), time.Since(t0).Round(100*time.Millisecond))

	var pods []*corev1.Pod
	for i := range opts.Pods {
		pods = append(pods, BenchPod(i))
	}
	pods = append(pods, RealPods()...)
	iso, err := ExpectedIsolation(pods, PolicyPodAddrs(opts.Pods), policies, PolicyNodeName(0))
	if err != nil {
		return nil, runs, err
	}
	local := 0
	for _, p := range pods {
		if p.Spec.NodeName == PolicyNodeName(0) {
			local++
		}
	}
	for i, a := range agents {
		r := &runs[i]
		r.LocalPods = local
		if r.Error != "" {
			continue
		}
		if err := measurePolicyAgent(ctx, c, a, bn, iso, opts, work, l.Kubeconfig(), r); err != nil {
			return nil, runs, fmt.Errorf("%s: %w", a.label, err)
		}
		own := ""
		if r.SyncCount > 0 {
			own = fmt.Sprintf(" (own metric: %.2f s over %d syncs)", r.SyncMetric, r.SyncCount)
		}
		fmt.Fprintf(out, "  %-22s %d policies: program all %.2f s (%d set elements for %d local pods: %s), IP to enforced %v ms%s, kernel %.0f KiB for %d chains %d rules %d sets %d elements, RSS %.0f MiB (peak %.0f), connect median %.3f ms p99 %.3f ms, verified %v\n",
			a.label, r.Policies, r.ProgramAll, r.Elements, r.LocalPods, a.how, fmtMs(r.Enforce), own, r.KernelKiB,
			r.Objects.Chains, r.Objects.Rules, r.Objects.Sets, r.Objects.Elements, r.RSS, r.PeakRSS, r.ConnectMedian, r.ConnectP99, r.Verified)
	}
	return PolicyFigures(runs), runs, nil
}

// startAgent starts an agent from a clean table and waits for its first
// programming and a working client -> server path.
func startAgent(ctx context.Context, a *policyAgent, bn *benchNet, opts PoliciesOptions, work, kubeconfig, tag string) (*proc, error) {
	if err := removeTables(bn.proxy, tableRef{family: a.table.Family, table: a.table.Name}); err != nil {
		return nil, err
	}
	logPath := filepath.Join(work, fmt.Sprintf("%s-%s.log", a.bin, tag))
	p, err := startProc(a.name, bn.proxy, a.argv(opts.BinDir, PolicyNodeName(0), kubeconfig, work), a.env, logPath)
	if err != nil {
		return nil, err
	}
	polls := 0
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 90*time.Second, true, func(context.Context) (bool, error) {
		if !p.alive() {
			return false, errors.New("exited")
		}
		ok, err := hasChain(bn.proxy, a.table, a.base)
		// A known refusal repeats every sync and never heals: give up on
		// it at once rather than after the whole timeout (the caller may
		// have another build to try).
		if polls++; !ok && err == nil && a.diagnose != nil && polls%20 == 0 && a.diagnose(p.logTail()) != nil {
			return false, errors.New("table refused")
		}
		return ok, err
	})
	if err == nil {
		err = dialFrom(bn.client, ClientAddr, netip.AddrPortFrom(ServerAddr, serverPort), 2*time.Second)
	}
	if err != nil {
		p.kill()
		tail := p.logTail()
		if a.diagnose != nil {
			if cause := a.diagnose(tail); cause != nil {
				return nil, fmt.Errorf("no working table (%w): %w; log %s:\n%s", err, cause, logPath, tail)
			}
		}
		return nil, fmt.Errorf("no working table (%w); log %s:\n%s", err, logPath, tail)
	}
	return p, nil
}

func settle(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
}

// measurePolicyAgent runs one agent from a cold start with every policy
// in the API.
func measurePolicyAgent(ctx context.Context, c kubernetes.Interface, a *policyAgent, bn *benchNet, iso Isolation, opts PoliciesOptions, work, kubeconfig string, r *PolicyRun) error {
	if err := removeTables(bn.proxy, tableRef{family: a.table.Family, table: a.table.Name}); err != nil {
		return err
	}
	logPath := filepath.Join(work, fmt.Sprintf("%s-%d.log", a.bin, opts.Policies))
	p, err := startProc(a.name, bn.proxy, a.argv(opts.BinDir, PolicyNodeName(0), kubeconfig, work), a.env, logPath)
	if err != nil {
		return err
	}
	killed := false
	defer func() {
		if !killed {
			p.kill()
		}
	}()
	fail := func(err error) error { return fmt.Errorf("%w (log %s):\n%s", err, logPath, p.logTail()) }

	for {
		got, want, err := a.programmed(bn.proxy, iso)
		if err != nil {
			return fail(err)
		}
		r.Elements = want
		if got >= want {
			r.ProgramAll = time.Since(p.start).Seconds()
			break
		}
		if !p.alive() {
			return fail(errors.New("exited before programming every pod"))
		}
		if time.Since(p.start) > 20*time.Minute {
			return fail(fmt.Errorf("%d of %d pod addresses after 20 minutes", got, want))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}

	server := netip.AddrPortFrom(ServerAddr, serverPort)
	allowed := dialFrom(bn.client, ClientAddr, server, 2*time.Second)
	denied := dialFrom(bn.client, ProbeSource, server, 500*time.Millisecond)
	r.Verified = allowed == nil && denied != nil
	if !r.Verified {
		fmt.Fprintf(opts.Out, "  %s: NOT VERIFIED: client -> server: %v; %s -> server: %v (want connected, then dropped)\n", a.label, allowed, ProbeSource, denied)
	}

	for n := range opts.Trials {
		d, err := enforceTrial(ctx, c, bn, n)
		if err != nil {
			return fail(fmt.Errorf("probe pod %d: %w", n, err))
		}
		r.Enforce = append(r.Enforce, float64(d.Microseconds())/1000)
	}

	settle(ctx)
	lat, err := connectLatency(ctx, bn.client, server, opts.Connects)
	if err != nil {
		return fail(err)
	}
	if a.metric != "" {
		if text, err := scrape(ctx, bn.proxy, a.metricsURL); err == nil {
			if sum, count, ok := HistogramSumCount(text, a.metric); ok {
				r.SyncMetric, r.SyncCount = sum, count
			}
		}
	}
	r.ConnectMedian, r.ConnectP99 = ms(Percentile(lat, 0.5)), ms(Percentile(lat, 0.99))

	if v, err := readVmRSS(p.cmd.Process.Pid); err == nil {
		r.RSS = mib(v)
	}
	p.kill()
	killed = true
	own, _ := p.peaks()
	r.PeakRSS = mib(own)
	if r.Objects, err = countObjects(bn.proxy, a.table); err != nil {
		return err
	}
	if r.KernelKiB, err = tableKernelMem(bn.proxy, a.table); err != nil {
		return err
	}
	return deleteProbePods(ctx, c, opts.Trials)
}

// enforceTrial creates probe pod n, gives it its IP and times until a
// connect from ProbeSource to it is dropped. Before the pod exists its
// address is no pod's and nothing filters it.
func enforceTrial(ctx context.Context, c kubernetes.Interface, bn *benchNet, n int) (time.Duration, error) {
	dst := netip.AddrPortFrom(ProbeAddr(n), serverPort)
	if err := dialFrom(bn.client, ProbeSource, dst, 2*time.Second); err != nil {
		return 0, fmt.Errorf("%s unreachable before its pod exists: %w", dst, err)
	}
	pod := ProbePod(n)
	created, err := c.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return 0, err
	}
	// Idle a moment so that the create's own sync is not what is timed.
	time.Sleep(500 * time.Millisecond)
	started := make(chan struct{})
	type result struct {
		attempts []Attempt
		err      error
	}
	done := make(chan result, 1)
	go func() {
		a, err := probeUntilDropped(ctx, bn.client, dst, 3, 2*time.Minute, started)
		done <- result{a, err}
	}()
	select {
	case <-started:
	case res := <-done:
		return 0, res.err
	}
	created.Status = RunningStatus(ProbeAddr(n))
	t0 := time.Now()
	if _, err := c.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		<-done
		return 0, fmt.Errorf("set probe pod IP: %w", err)
	}
	res := <-done
	if res.err != nil {
		return 0, res.err
	}
	at, ok := EnforcedAt(res.attempts, 3)
	if !ok || at.Before(t0) {
		return 0, fmt.Errorf("connects failed before the pod had its IP (%d attempts)", len(res.attempts))
	}
	return at.Sub(t0), nil
}

// createPolicyPods creates the generated and real pods with their IPs.
func createPolicyPods(ctx context.Context, c kubernetes.Interface, n int) error {
	for i := range PolicyNamespaces {
		ns := PolicyNamespaceObject(i)
		if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w", ns.Name, err)
		}
	}
	// The ServiceAccount admission plugin refuses pods until their
	// namespace's default account exists.
	for i := range PolicyNamespaces {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			_, err := c.CoreV1().ServiceAccounts(PolicyNamespace(i)).Get(ctx, "default", metav1.GetOptions{})
			return err == nil, nil
		})
		if err != nil {
			return fmt.Errorf("default service account of %s: %w", PolicyNamespace(i), err)
		}
	}
	real := RealPods()
	return parallel(ctx, n+len(real), func(ctx context.Context, i int) error {
		pod, ip := (*corev1.Pod)(nil), netip.Addr{}
		if i < n {
			pod, ip = BenchPod(i), GeneratedPodAddr(i)
		} else {
			pod = real[i-n]
			ip = []netip.Addr{ServerAddr, ClientAddr}[i-n]
		}
		created, err := c.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		created.Status = RunningStatus(ip)
		_, err = c.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	})
}

func deleteProbePods(ctx context.Context, c kubernetes.Interface, n int) error {
	for i := range n {
		p := ProbePod(i)
		err := c.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	// Wait until they are gone: the next agent starts from the same state.
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := c.CoreV1().Pods(PolicyNamespace(0)).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, p := range l.Items {
			if strings.HasPrefix(p.Name, "bench-probe-") {
				return false, nil
			}
		}
		return true, nil
	})
}

// deletePolicyObjects removes bench pods (at once: no kubelet would
// confirm a graceful deletion) and policies, and with namespaces also the
// namespaces and the account kube-network-policies used. Without, it also
// waits for namespaces an earlier run left terminating.
func deletePolicyObjects(ctx context.Context, c kubernetes.Interface, namespaces bool) error {
	var errs []error
	for i := range PolicyNamespaces {
		ns := PolicyNamespace(i)
		err := c.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("policies of %s: %w", ns, err))
		}
		err = c.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}, metav1.ListOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("pods of %s: %w", ns, err))
		}
		if namespaces {
			err = c.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("namespace %s: %w", ns, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Pods of an earlier run must be gone before their names are reused,
	// and its namespaces, still terminating, refuse new pods.
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		for i := range PolicyNamespaces {
			if !namespaces {
				ns, err := c.CoreV1().Namespaces().Get(ctx, PolicyNamespace(i), metav1.GetOptions{})
				if err == nil && ns.DeletionTimestamp != nil {
					return false, nil
				}
			}
			l, err := c.CoreV1().Pods(PolicyNamespace(i)).List(ctx, metav1.ListOptions{Limit: 1})
			if err != nil && !apierrors.IsNotFound(err) {
				return false, nil
			}
			if err == nil && len(l.Items) > 0 {
				return false, nil
			}
		}
		return true, nil
	})
}

// PolicyFigures turns the two agents' runs into figures: Meridian against
// kube-network-policies, and each agent's connect latency with every
// policy against its own with none.
func PolicyFigures(runs []PolicyRun) []Figure {
	var m, k *PolicyRun
	for i := range runs {
		switch runs[i].Agent {
		case AgentMeridian:
			m = &runs[i]
		case AgentKNP:
			k = &runs[i]
		}
	}
	if m == nil || m.Error != "" {
		return nil
	}
	peer := k != nil && k.Error == ""
	// label is what a run's figures call its agent: the build that ran
	// when known (release version, or the xtqueue build), else its name.
	label := func(r *PolicyRun) string {
		if r.Label != "" {
			return r.Label
		}
		return r.Agent
	}
	sz := fmt.Sprintf("%d policies, %d pods", m.Policies, m.Pods)
	vs := func(name, unit string, get func(*PolicyRun) float64, note string) Figure {
		f := Figure{Name: fmt.Sprintf("%s, %s (meridiand)", name, sz), Value: get(m), Unit: unit, Note: note}
		if peer {
			f.Against, f.Baseline, f.Ratio = label(k), get(k), ratio(get(m), get(k))
		} else {
			f.Note = strings.TrimPrefix(f.Note+"; "+AgentKNP+" could not run", "; ")
		}
		return f
	}
	out := []Figure{
		vs("policy program all from start", "s", func(r *PolicyRun) float64 { return r.ProgramAll },
			fmt.Sprintf("agent start to every isolated local pod in its sets (%d local pods); API state complete before start", m.LocalPods)),
		vs("pod IP to policy enforced, median", "ms", func(r *PolicyRun) float64 { return medianF(r.Enforce) },
			"status update giving a selected pod its IP to a connect from a disallowed source dropped"),
		vs("policy table kernel memory", "KiB", func(r *PolicyRun) float64 { return r.KernelKiB },
			"SUnreclaim+VmallocUsed+Percpu freed by deleting the agent's table"),
		vs("policy agent RSS", "MiB", func(r *PolicyRun) float64 { return r.RSS }, "VmRSS after the measurements"),
		vs("policy agent peak RSS", "MiB", func(r *PolicyRun) float64 { return r.PeakRSS }, "VmHWM"),
		vs("pod-to-pod TCP connect with policies, median", "ms", func(r *PolicyRun) float64 { return r.ConnectMedian }, "client and server both isolated, allowed"),
		vs("pod-to-pod TCP connect with policies, p99", "ms", func(r *PolicyRun) float64 { return r.ConnectP99 }, ""),
		vs("pod-to-pod TCP connect without policies, median", "ms", func(r *PolicyRun) float64 { return r.Connect0Median }, ""),
	}
	for _, r := range []*PolicyRun{m, k} {
		if r == nil || r.Error != "" {
			continue
		}
		// Figure names stay keyed by agent; the note says which build.
		build := ""
		if r.Label != "" && r.Label != r.Agent {
			build = "; " + r.Label
		}
		out = append(out,
			Figure{Name: fmt.Sprintf("%s TCP connect median, %d policies", r.Agent, r.Policies), Value: r.ConnectMedian, Unit: "ms",
				Against: "0 policies", Baseline: r.Connect0Median, Ratio: ratio(r.ConnectMedian, r.Connect0Median), Note: "flat is the goal: ratio ~1" + build},
			Figure{Name: fmt.Sprintf("%s TCP connect p99, %d policies", r.Agent, r.Policies), Value: r.ConnectP99, Unit: "ms",
				Against: "0 policies", Baseline: r.Connect0P99, Ratio: ratio(r.ConnectP99, r.Connect0P99), Note: strings.TrimPrefix(build, "; ")})
	}
	return out
}
