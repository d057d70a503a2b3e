package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	"github.com/meridian-net/meridian/integration/lab"
)

// BGPOptions configure RunBGP.
type BGPOptions struct {
	BinDir string
	// Sizes are the prefix counts to inject, ascending (10k, 100k).
	Sizes []int
	// Withdraws is how many times the pod CIDR withdrawal is timed (5; 0
	// skips it).
	Withdraws int
	Out       io.Writer
}

var (
	bgpNodeNet     = speakerNet{name: lab.NetnsPrefix + "bench-bgp", addr: netip.MustParseAddr("198.18.0.243")}
	bgpBIRDNet     = speakerNet{name: lab.NetnsPrefix + "bench-bird", addr: netip.MustParseAddr("198.18.0.244")}
	bgpInjectorNet = speakerNet{name: lab.NetnsPrefix + "bench-inj", addr: netip.MustParseAddr("198.18.0.245")}
)

const (
	bgpBenchNode = "meridian-bench-bgp"
	// BGPPeer objects of the run, both for the bench node only.
	injectorPeerName = "meridian-bench-injector"
	birdPeerName     = "meridian-bench-bird"
)

var bgpPeersGVR = v1alpha1.SchemeGroupVersion.WithResource("bgppeers")

// RunBGP measures meridiand against BIRD learning and installing the
// bench prefixes, and the withdrawal of a node's pod CIDR.
func RunBGP(ctx context.Context, l *lab.Lab, opts BGPOptions) ([]Figure, []BGPRun, []WithdrawSample, error) {
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	meridiand := filepath.Join(opts.BinDir, "meridiand")
	if _, err := os.Stat(meridiand); err != nil {
		return nil, nil, nil, fmt.Errorf("need meridiand (make build): %w", err)
	}
	birdBin, err := exec.LookPath("bird")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("need bird (Debian's bird2, make deps): %w", err)
	}
	for _, n := range opts.Sizes {
		if _, err := BenchPrefixes(n); err != nil {
			return nil, nil, nil, err
		}
	}
	unlock, err := lab.LockHost(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	defer unlock()
	c, err := l.Client()
	if err != nil {
		return nil, nil, nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", l.Kubeconfig())
	if err != nil {
		return nil, nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	work, err := os.MkdirTemp("", "meridian-bench-bgp-")
	if err != nil {
		return nil, nil, nil, err
	}
	fmt.Fprintf(opts.Out, "# BGP: meridiand vs BIRD %s; logs in %s\n", birdVersion(birdBin), work)

	cleanup := context.WithoutCancel(ctx)
	peers := dyn.Resource(bgpPeersGVR)
	defer func() {
		for _, n := range []string{injectorPeerName, birdPeerName} {
			_ = peers.Delete(cleanup, n, metav1.DeleteOptions{})
		}
		_ = c.CoreV1().Nodes().Delete(cleanup, bgpBenchNode, metav1.DeleteOptions{})
		for _, s := range []speakerNet{bgpNodeNet, bgpBIRDNet, bgpInjectorNet} {
			s.teardown()
		}
	}()
	if err := ensureBenchNode(ctx, c, bgpBenchNode, bgpNodeNet.addr); err != nil {
		return nil, nil, nil, err
	}
	podCIDR, err := waitPodCIDR(ctx, c, bgpBenchNode)
	if err != nil {
		return nil, nil, nil, err
	}
	r := &bgpRunner{l: l, c: c, dyn: dyn, peers: peers, opts: opts, work: work, meridiand: meridiand, bird: birdBin}

	var withdraws []WithdrawSample
	if opts.Withdraws > 0 {
		fmt.Fprintf(opts.Out, "# pod CIDR withdrawal: %s of %s, timed on the lab nodes and on a BIRD peering with it\n", podCIDR, bgpBenchNode)
		if withdraws, err = r.withdraws(ctx, podCIDR); err != nil {
			return nil, nil, withdraws, fmt.Errorf("withdraw: %w", err)
		}
	}

	var runs []BGPRun
	if len(opts.Sizes) > 0 {
		// The lab's meridiands would get every learned path from the bench
		// node over the mesh (nodes export eBGP-learned paths to each
		// other) and spend the same two cores on them: they rest.
		fmt.Fprintln(opts.Out, "# learned prefixes: lab meridiands paused; GoBGP injector in its own namespace, eBGP to each speaker in turn")
		if err := l.PauseDaemons(); err != nil {
			return nil, nil, withdraws, err
		}
		defer func() {
			if err := l.ResumeDaemons(context.WithoutCancel(ctx)); err != nil {
				fmt.Fprintf(opts.Out, "# resume the lab's meridiands: %v\n", err)
			}
		}()
		if runs, err = r.prefixes(ctx); err != nil {
			return nil, runs, withdraws, err
		}
	}
	return BGPFigures(runs, withdraws), runs, withdraws, nil
}

type bgpRunner struct {
	l               *lab.Lab
	c               kubernetes.Interface
	dyn             dynamic.Interface
	peers           dynamic.NamespaceableResourceInterface
	opts            BGPOptions
	work            string
	meridiand, bird string
}

func (r *bgpRunner) meridiandArgv(extra ...string) []string {
	return append([]string{
		r.meridiand, "--node-name=" + bgpBenchNode,
		"--kubeconfig=" + r.l.Kubeconfig(), "--state-dir=" + filepath.Join(r.work, "meridiand-state"),
		"--api-socket=", "--metrics-addr=127.0.0.1:9093",
		// The bench range as a second cluster CIDR is what puts it in
		// this meridiand's allowed set (unless the BGPConfiguration
		// names accepted prefixes, checked in prefixes).
		"--cluster-cidr=" + lab.ClusterCIDR.String() + "," + BGPBenchRange.String(),
	}, extra...)
}

// prefixes runs each speaker at each size against one injector.
func (r *bgpRunner) prefixes(ctx context.Context) ([]BGPRun, error) {
	if err := r.checkAccepted(ctx); err != nil {
		return nil, err
	}
	if err := bgpInjectorNet.setup(); err != nil {
		return nil, fmt.Errorf("injector namespace: %w", err)
	}
	inj, err := startInjector(ctx, bgpInjectorNet.name, bgpInjectorNet.addr)
	if err != nil {
		return nil, err
	}
	defer inj.stop()
	if err := r.ensurePeer(ctx, injectorPeerName, bgpInjectorNet.addr, injectorASN); err != nil {
		return nil, err
	}
	var runs []BGPRun
	for _, n := range r.opts.Sizes {
		t0 := time.Now()
		if err := inj.load(ctx, n); err != nil {
			return runs, err
		}
		fmt.Fprintf(r.opts.Out, "# %d prefixes in the injector's RIB (loaded in %s)\n", n, time.Since(t0).Round(10*time.Millisecond))
		for _, sp := range []string{SpeakerMeridiand, SpeakerBIRD} {
			run, err := r.learn(ctx, inj, sp, n)
			if err != nil {
				return runs, fmt.Errorf("%s at %d prefixes: %w", sp, n, err)
			}
			runs = append(runs, run)
			fmt.Fprintf(r.opts.Out, "  %-10s %7d prefixes: Established %.2f s after start, all in the FIB %.2f s later (%.0f routes/s), peak RSS %.1f MiB\n",
				run.Speaker, n, run.Established, run.Install, float64(n)/run.Install, run.PeakRSS)
		}
	}
	return runs, nil
}

// learn starts one speaker in a fresh namespace and times it.
func (r *bgpRunner) learn(ctx context.Context, inj *injector, speaker string, n int) (BGPRun, error) {
	run := BGPRun{Speaker: speaker, Prefixes: n}
	sn := bgpNodeNet
	asn := uint32(64512) // the lab's default node ASN
	if speaker == SpeakerBIRD {
		sn, asn = bgpBIRDNet, birdASN
	}
	if err := sn.setup(); err != nil {
		return run, fmt.Errorf("namespace: %w", err)
	}
	defer sn.teardown()
	if err := inj.accept(ctx, sn.addr, asn); err != nil {
		return run, err
	}
	defer inj.forget(sn.addr)
	w, err := watchFIB(sn.name, BGPBenchRange, n)
	if err != nil {
		return run, err
	}
	defer w.close()

	var argv []string
	if speaker == SpeakerBIRD {
		if argv, err = writeBIRDConfig(r.work, fmt.Sprintf("bird-%d", n), BIRDConfig(sn.addr, inj.addr, injectorASN, BGPBenchRange)); err != nil {
			return run, err
		}
		argv[0] = r.bird
	} else {
		argv = r.meridiandArgv()
	}
	logPath := filepath.Join(r.work, fmt.Sprintf("%s-%d.log", speaker, n))
	p, err := startProc(speaker, sn.name, argv, nil, logPath)
	if err != nil {
		return run, err
	}
	defer p.stop(10 * time.Second)
	fail := func(err error) (BGPRun, error) {
		return run, fmt.Errorf("%w (log %s):\n%s", err, logPath, p.logTail())
	}
	est, err := inj.waitEstablished(ctx, sn.addr, 2*time.Minute, p.alive)
	if err != nil {
		return fail(err)
	}
	run.Established = est.Sub(p.start).Seconds()
	done, err := w.wait(ctx, 20*time.Minute, p.alive)
	if err != nil {
		return fail(err)
	}
	run.Install = done.Sub(est).Seconds()
	// VmHWM is read every 20 ms: one more sample after the last route.
	time.Sleep(100 * time.Millisecond)
	own, _ := p.peaks()
	run.PeakRSS = mib(own)
	return run, nil
}

// withdraws times the bench node's pod CIDR disappearing from the lab
// nodes and from a BIRD peering with the bench node, opts.Withdraws times.
func (r *bgpRunner) withdraws(ctx context.Context, podCIDR netip.Prefix) ([]WithdrawSample, error) {
	for _, s := range []speakerNet{bgpNodeNet, bgpBIRDNet} {
		if err := s.setup(); err != nil {
			return nil, err
		}
		defer s.teardown()
	}
	if err := r.ensurePeer(ctx, birdPeerName, bgpBIRDNet.addr, birdASN); err != nil {
		return nil, err
	}
	defer func() { _ = r.peers.Delete(context.WithoutCancel(ctx), birdPeerName, metav1.DeleteOptions{}) }()
	argv, err := writeBIRDConfig(r.work, "bird-withdraw", BIRDConfig(bgpBIRDNet.addr, bgpNodeNet.addr, 64512, podCIDR))
	if err != nil {
		return nil, err
	}
	argv[0] = r.bird
	birdLog := filepath.Join(r.work, "bird-withdraw.log")
	bird, err := startProc("bird", bgpBIRDNet.name, argv, nil, birdLog)
	if err != nil {
		return nil, err
	}
	defer bird.stop(10 * time.Second)

	// Receivers: each lab node's namespace and BIRD's.
	type receiver struct {
		name string
		has  func() (bool, error)
	}
	var recv []receiver
	for _, ns := range append(nodeNetns(r.l), bgpBIRDNet.name) {
		h, err := handleIn(ns)
		if err != nil {
			return nil, err
		}
		defer h.Close()
		recv = append(recv, receiver{name: ns, has: func() (bool, error) { return hasRoute(h, podCIDR) }})
	}

	var out []WithdrawSample
	for i := range r.opts.Withdraws {
		logPath := filepath.Join(r.work, fmt.Sprintf("meridiand-withdraw-%d.log", i))
		p, err := startProc("meridiand", bgpNodeNet.name, r.meridiandArgv("--withdraw-on-stop"), nil, logPath)
		if err != nil {
			return out, err
		}
		fail := func(err error) ([]WithdrawSample, error) {
			p.stop(10 * time.Second)
			return out, fmt.Errorf("%w (log %s, BIRD's %s):\n%s", err, logPath, birdLog, p.logTail())
		}
		// Every receiver has the route, then a pause so that the mesh and
		// BIRD have settled (end-of-RIB, timers).
		err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
			for _, rc := range recv {
				ok, err := rc.has()
				if err != nil || !ok {
					return false, err
				}
			}
			return true, nil
		})
		if err != nil {
			return fail(fmt.Errorf("%s not on every receiver: %w", podCIDR, err))
		}
		time.Sleep(2 * time.Second)

		gone := make([]time.Duration, len(recv))
		t0 := time.Now()
		_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
		// Polled every 5 ms: each check is a dump of a table of a few
		// dozen routes.
		err = wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
			all := true
			for j, rc := range recv {
				if gone[j] > 0 {
					continue
				}
				// The time of this receiver's own check, not the round's.
				at := time.Since(t0)
				ok, err := rc.has()
				if err != nil {
					return false, err
				}
				if ok {
					all = false
				} else {
					gone[j] = at
				}
			}
			return all, nil
		})
		p.stop(10 * time.Second)
		if err != nil {
			var still []string
			for j, rc := range recv {
				if gone[j] == 0 {
					still = append(still, rc.name)
				}
			}
			return fail(fmt.Errorf("%s still on %v: %w", podCIDR, still, err))
		}
		s := WithdrawSample{PerNode: map[string]float64{}}
		for j, rc := range recv {
			v := ms(gone[j])
			if rc.name == bgpBIRDNet.name {
				s.BIRD = v
				continue
			}
			s.PerNode[rc.name] = v
			s.Nodes = max(s.Nodes, v)
		}
		fmt.Fprintf(r.opts.Out, "  withdraw %d: lab nodes %v ms (slowest %.1f), BIRD %.1f ms\n", i+1, s.PerNode, s.Nodes, s.BIRD)
		out = append(out, s)
	}
	return out, nil
}

func nodeNetns(l *lab.Lab) []string {
	var out []string
	for _, n := range l.Nodes() {
		out = append(out, n.Netns)
	}
	return out
}

// ensurePeer creates (or replaces) a BGPPeer of the bench node.
func (r *bgpRunner) ensurePeer(ctx context.Context, name string, addr netip.Addr, asn int64) error {
	peer := &v1alpha1.BGPPeer{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPPeer"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{benchLabel: "bgp"}},
		Spec:       v1alpha1.BGPPeerSpec{PeerIP: v1alpha1.IPv4(addr.String()), ASNumber: asn, Node: bgpBenchNode},
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(peer)
	if err != nil {
		return err
	}
	_ = r.peers.Delete(ctx, name, metav1.DeleteOptions{})
	if _, err := r.peers.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create BGPPeer %s: %w", name, err)
	}
	return nil
}

// checkAccepted refuses to run when the cluster's BGPConfiguration names
// accepted prefixes that leave out the bench range: they would override
// the bench meridiand's cluster CIDRs and it would refuse every prefix.
func (r *bgpRunner) checkAccepted(ctx context.Context) error {
	obj, err := r.dyn.Resource(v1alpha1.SchemeGroupVersion.WithResource("bgpconfigurations")).Get(ctx, "default", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read BGPConfiguration default: %w", err)
	}
	raw, _, _ := unstructured.NestedStringSlice(obj.Object, "spec", "acceptedPrefixes")
	return AcceptedCoversBench(raw)
}

// AcceptedCoversBench says whether a BGPConfiguration's acceptedPrefixes
// let the bench prefixes in: empty (the cluster CIDRs, which the bench
// meridiand extends) or a prefix containing BGPBenchRange.
func AcceptedCoversBench(accepted []string) error {
	if len(accepted) == 0 {
		return nil
	}
	for _, s := range accepted {
		p, err := netip.ParsePrefix(s)
		if err == nil && p.Bits() <= BGPBenchRange.Bits() && p.Masked().Contains(BGPBenchRange.Addr()) {
			return nil
		}
	}
	return fmt.Errorf("BGPConfiguration default accepts only %v: add %s or clear acceptedPrefixes for the benchmark", accepted, BGPBenchRange)
}

// waitPodCIDR waits for the controller manager to give the node a pod CIDR.
func waitPodCIDR(ctx context.Context, c kubernetes.Interface, name string) (netip.Prefix, error) {
	var out netip.Prefix
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		out, err = nodePodCIDR(n)
		return err == nil, nil
	})
	if err != nil {
		return out, fmt.Errorf("node %s has no pod CIDR: %w", name, err)
	}
	return out, nil
}

func nodePodCIDR(n *corev1.Node) (netip.Prefix, error) {
	if n.Spec.PodCIDR == "" {
		return netip.Prefix{}, errors.New("no pod CIDR")
	}
	return netip.ParsePrefix(n.Spec.PodCIDR)
}

func birdVersion(bin string) string {
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return "(version unknown)"
	}
	v := string(out)
	if i := len("BIRD version "); len(v) > i && v[:i] == "BIRD version " {
		v = v[i:]
	}
	for len(v) > 0 && (v[len(v)-1] == '\n' || v[len(v)-1] == '\r') {
		v = v[:len(v)-1]
	}
	return v
}
