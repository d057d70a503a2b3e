package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
)

// Config is what one node's agent needs.
type Config struct {
	NodeName   string
	NodeIP     netip.Addr
	Kubeconfig string
	// CNIConfDir holds the network configuration; the first .conflist in
	// lexical order is used, as kubelet and containerd do.
	CNIConfDir string
	CNIBinDirs []string
	// StateDir is the node's own directory for the agent's files (pod
	// state and libcni's result cache).
	StateDir string
	// ClusterDNS and ClusterDomain are the kubelet's --cluster-dns and
	// --cluster-domain, written into every pod's resolv.conf. Default:
	// DefaultClusterDNS and DefaultClusterDomain.
	ClusterDNS    netip.Addr
	ClusterDomain string
	// CoreDNSBin is the CoreDNS executable the agent runs for pods whose
	// container image is CoreDNS. Default: coredns in one of CNIBinDirs
	// (the lab's bin directory holds both).
	CoreDNSBin string
	// ImageArchive is the node's image store, a docker-archive: host-network
	// pods whose images are all in it run for real (workload.go), from
	// images unpacked into ImageCacheDir by ContainerInit (the argv of
	// meridian-lab container-init). Empty: every pod is a stand-in.
	ImageArchive  string
	ImageCacheDir string
	ContainerInit []string
	// LogDir and PidDir receive the log and pid record of every container
	// run for real, as <container>-<node>.log and .pid: the lab's process
	// conventions. Default: StateDir/logs and StateDir/pids.
	LogDir string
	PidDir string
}

func (c Config) withDefaults() Config {
	if !c.ClusterDNS.IsValid() {
		c.ClusterDNS = DefaultClusterDNS
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = DefaultClusterDomain
	}
	if c.CoreDNSBin == "" {
		for _, d := range c.CNIBinDirs {
			p := filepath.Join(d, coreDNSImageName)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				c.CoreDNSBin = p
				break
			}
		}
	}
	if c.LogDir == "" {
		c.LogDir = filepath.Join(c.StateDir, "logs")
	}
	if c.PidDir == "" {
		c.PidDir = filepath.Join(c.StateDir, "pids")
	}
	if c.ImageCacheDir == "" {
		c.ImageCacheDir = filepath.Join(c.StateDir, "images")
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("node name is empty"))
	}
	if !c.NodeIP.IsValid() {
		errs = append(errs, errors.New("node IP is not set"))
	}
	if c.Kubeconfig == "" {
		errs = append(errs, errors.New("kubeconfig is empty"))
	}
	if c.CNIConfDir == "" {
		errs = append(errs, errors.New("cni conf dir is empty"))
	}
	if len(c.CNIBinDirs) == 0 {
		errs = append(errs, errors.New("no cni bin dir"))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("state dir is empty"))
	}
	if c.ImageArchive != "" && len(c.ContainerInit) == 0 {
		errs = append(errs, errors.New("an image archive needs the container-init command"))
	}
	return errors.Join(errs...)
}

const (
	// eventComponent signs the agent's events; it is not the kubelet.
	eventComponent = "meridian-lab-agent"
	// podResync re-runs every pod's sync now and then, repairing drift
	// (a netns removed by hand) without an API change.
	podResync = 30 * time.Second
	workers   = 4
	// Backoff of a failing pod: CNI ADD fails until meridiand has written
	// the node's pod CIDR, which takes seconds, so start fast, cap low.
	retryBase = 500 * time.Millisecond
	retryMax  = 30 * time.Second
	// registerRetryMax caps the wait between attempts to reach the API
	// server at start.
	registerRetryMax = 10 * time.Second
)

// Run is one node's agent: it registers the node and keeps it alive, then
// wires and serves the node's pods until ctx ends. Pods keep their netns
// when Run returns (like containers surviving a kubelet restart); their
// stand-in servers stop with the process, and the next Run adopts them.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("invalid config: %w", err)
	}
	cfg = cfg.withDefaults()
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	rc.UserAgent = eventComponent + "/" + cfg.NodeName
	rc.QPS, rc.Burst = 50, 100
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("create client: %w", err)
	}
	api, err := apiEndpointFrom(rc)
	if err != nil {
		return err
	}
	a := newAgent(cfg, client, log)
	a.api = api
	return a.run(ctx)
}

// agent wires the node's parts; run starts them.
type agent struct {
	cfg    Config
	client kubernetes.Interface
	log    *slog.Logger
	cni    *cniRunner
	states stateStore
	images *imageStore
	now    func() time.Time
	// api is where CoreDNS pods reach the API server.
	api apiEndpoint

	// Set up by run.
	pods     cache.Indexer
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder record.EventRecorder

	mu      sync.Mutex
	records map[string]*podRecord // by pod key namespace/name
}

// podRecord is the agent's memory of one pod's sandbox. Only the worker
// holding the pod's key in the queue touches its fields.
type podRecord struct {
	state       podState
	hostNetwork bool
	// adopted records come from disk or libcni's cache after a restart: the
	// netns may be wired, which CNI CHECK confirms before it is trusted.
	adopted      bool
	sandboxReady bool
	sandboxErr   string
	servers      *servers
	// coredns runs the real CoreDNS for a CoreDNS pod.
	coredns *coreDNSRun
	// workload runs the containers of a pod that runs for real.
	workload *workload
	// grace is how long its containers get between SIGTERM and SIGKILL
	// when the pod goes.
	grace     time.Duration
	startedAt time.Time
}

func newAgent(cfg Config, client kubernetes.Interface, log *slog.Logger) *agent {
	log = log.With("node", cfg.NodeName)
	return &agent{
		cfg:     cfg,
		client:  client,
		log:     log,
		cni:     newCNIRunner(cfg.CNIConfDir, cfg.CNIBinDirs, filepath.Join(cfg.StateDir, "cni-cache")),
		states:  stateStore{dir: filepath.Join(cfg.StateDir, "pods")},
		images:  newImageStore(cfg.ImageArchive, cfg.ImageCacheDir),
		now:     time.Now,
		records: map[string]*podRecord{},
	}
}

func (a *agent) run(ctx context.Context) error {
	a.warnIfPrivateMountNS()
	version, err := a.serverVersion(ctx)
	if err != nil {
		return err
	}
	heart := &nodeHeart{
		client: a.client,
		facts:  nodeFacts{Name: a.cfg.NodeName, IP: a.cfg.NodeIP, KubeletVersion: version, KernelVersion: kernelVersion()},
		log:    a.log,
		now:    a.now,
	}
	if err := a.retry(ctx, "register node", heart.register); err != nil {
		return err
	}
	a.log.Info("node registered", "kubeletVersion", version)

	if err := ensureNetnsDir(); err != nil {
		return err
	}
	a.loadRecords()

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	a.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: eventComponent, Host: a.cfg.NodeName})

	a.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](retryBase, retryMax),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "pods"})
	factory := informers.NewSharedInformerFactoryWithOptions(a.client, podResync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    a.enqueue,
		UpdateFunc: func(_, obj any) { a.enqueue(obj) },
		DeleteFunc: a.enqueue,
	}); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	a.pods = inf.GetIndexer()

	var wg sync.WaitGroup
	defer func() {
		a.queue.ShutDown()
		factory.Shutdown()
		wg.Wait()
		a.stopAllServers()
	}()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil
	}
	// Records from disk whose pods are gone get no informer event: queue
	// them, so the ordinary sync tears them down.
	a.mu.Lock()
	for key := range a.records {
		a.queue.Add(key)
	}
	a.mu.Unlock()

	wg.Go(func() { heart.run(ctx) })
	for range workers {
		wg.Go(func() {
			for a.processNext(ctx) {
			}
		})
	}
	a.log.Info("agent running")
	<-ctx.Done()
	a.log.Info("agent stopping")
	return nil
}

// retry calls fn until it succeeds or ctx ends, waiting longer each time:
// in the lab, the agent may start before the API server answers.
func (a *agent) retry(ctx context.Context, what string, fn func(context.Context) error) error {
	wait := time.Second
	for {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, errors.Join(ctx.Err(), err))
		}
		a.log.Warn(what+" failed, retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, errors.Join(ctx.Err(), err))
		case <-time.After(wait):
		}
		wait = min(2*wait, registerRetryMax)
	}
}

// serverVersion is what the node reports as its kubelet version: the API
// server's, so version-skew checks in tools stay quiet.
func (a *agent) serverVersion(ctx context.Context) (string, error) {
	var v string
	err := a.retry(ctx, "get server version", func(context.Context) error {
		info, err := a.client.Discovery().ServerVersion()
		if err != nil {
			return err
		}
		v = info.GitVersion
		return nil
	})
	return v, err
}

func kernelVersion() string {
	b, err := os.ReadFile(nodeInfoKernelVersionFile)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// warnIfPrivateMountNS says so when /run/netns is not shared with the
// host's: pod netns the agent mounts would then be visible only to it (as
// under `ip netns exec`). The lab gives agents a mount namespace of their
// own, the node's view of the disk, but keeps /run/netns shared.
func (a *agent) warnIfPrivateMountNS() {
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	init, err2 := os.Readlink("/proc/1/ns/mnt")
	if err1 != nil || err2 != nil || self == init {
		return
	}
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(info), "\n") {
		f := strings.Fields(line)
		if len(f) > 6 && (f[4] == "/run/netns" || f[4] == netnsDir) {
			if strings.Contains(line, " shared:") {
				return
			}
			break
		}
	}
	a.log.Warn("agent runs in a mount namespace of its own where /run/netns is not shared; pod netns will be visible only inside it",
		"self", self, "init", init)
}

// loadRecords recovers the sandboxes of a previous run: the state files,
// and libcni's cache for any sandbox whose state file is missing. They are
// adopted if their pod still exists and torn down otherwise.
func (a *agent) loadRecords() {
	states, err := a.states.load()
	if err != nil {
		a.log.Warn("some pod state could not be read", "err", err)
	}
	known := map[string]bool{}
	for _, st := range states {
		known[string(st.UID)] = true
	}
	cached, err := a.cni.cachedSandboxes()
	if err != nil {
		a.log.Warn("cni cache could not be read", "err", err)
	}
	for _, st := range cached {
		if !known[string(st.UID)] {
			states = append(states, st)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, st := range states {
		key := st.key()
		if st.Namespace == "" || st.Name == "" {
			// No pod can have this key, so its sync tears the sandbox down.
			key = "orphan/" + string(st.UID)
		}
		if _, dup := a.records[key]; dup {
			key = "orphan/" + string(st.UID)
		}
		a.records[key] = &podRecord{state: st, adopted: true}
		a.log.Info("found sandbox of previous run", "pod", key, "netns", st.Netns)
	}
}

func (a *agent) enqueue(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		a.log.Warn("cannot key pod", "err", err)
		return
	}
	a.queue.Add(key)
}

func (a *agent) processNext(ctx context.Context) bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	err := a.syncPod(ctx, key)
	switch {
	case err == nil:
		a.queue.Forget(key)
	case ctx.Err() != nil:
	default:
		a.log.Warn("pod sync failed, retrying", "pod", key, "err", err, "retries", a.queue.NumRequeues(key))
		a.queue.AddRateLimited(key)
	}
	return true
}

func (a *agent) record(key string) *podRecord {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.records[key]
}

func (a *agent) setRecord(key string, r *podRecord) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r == nil {
		delete(a.records, key)
		return
	}
	a.records[key] = r
}

// syncPod brings one pod's sandbox, stand-ins and status to what the pod
// in the informer cache calls for.
func (a *agent) syncPod(ctx context.Context, key string) error {
	var pod *corev1.Pod
	obj, exists, err := a.pods.GetByKey(key)
	if err != nil {
		return fmt.Errorf("read pod cache: %w", err)
	}
	if exists {
		pod = obj.(*corev1.Pod)
	}
	log := a.log.With("pod", key)
	rec := a.record(key)

	// The pod is gone (force-deleted, or deleted while the agent was down),
	// or a new pod took its name: tear down the old sandbox first.
	if rec != nil && (pod == nil || pod.UID != rec.state.UID) {
		if err := a.teardown(ctx, log, rec); err != nil {
			return err
		}
		a.setRecord(key, nil)
		rec = nil
	}
	if pod == nil {
		return nil
	}
	if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		if rec != nil {
			rec.grace = terminationGrace(pod)
			if err := a.teardown(ctx, log, rec); err != nil {
				return err
			}
			a.setRecord(key, nil)
		}
		if pod.DeletionTimestamp == nil {
			return nil
		}
		return a.finishDeletion(ctx, log, pod)
	}

	if rec == nil {
		rec = &podRecord{state: podState{UID: pod.UID, Namespace: pod.Namespace, Name: pod.Name}}
		a.setRecord(key, rec)
	}
	rec.hostNetwork = pod.Spec.HostNetwork
	if !rec.hostNetwork {
		rec.state.Netns = PodNetnsName(pod.UID)
	}
	sandboxErr := a.ensureSandbox(ctx, log, pod, rec)
	if sandboxErr == nil && a.images.runsForReal(pod.Spec.HostNetwork, podImages(pod)) {
		if rec.workload == nil {
			log.Info("running the pod's containers from its images")
			rec.workload = a.startWorkload(key, pod)
		}
		rec.grace = terminationGrace(pod)
		return a.syncStatus(ctx, pod, rec)
	}
	var serveErr, dnsErr error
	if sandboxErr == nil {
		serveErr = a.ensureServers(log, pod, rec)
		dnsErr = a.ensureCoreDNS(ctx, log, key, pod, rec)
	}
	return errors.Join(sandboxErr, serveErr, dnsErr, a.syncStatus(ctx, pod, rec))
}

// ensureSandbox wires the pod's netns through CNI, once; an adopted
// sandbox is confirmed with CHECK, and rewired (DEL, ADD) if that fails.
func (a *agent) ensureSandbox(ctx context.Context, log *slog.Logger, pod *corev1.Pod, rec *podRecord) error {
	if rec.hostNetwork {
		rec.state.IPs = []netip.Addr{a.cfg.NodeIP}
		rec.sandboxReady = true
		return nil
	}
	if rec.sandboxReady {
		if netnsExists(rec.state.Netns) {
			return a.ensureResolvConf(pod, rec)
		}
		log.Warn("pod netns vanished; wiring it again", "netns", rec.state.Netns)
		rec.servers.Stop()
		rec.servers = nil
		rec.coredns.Stop()
		rec.coredns = nil
		rec.sandboxReady = false
		rec.adopted = true
	}
	// Saved before the netns exists, so a crash never leaves a netns this
	// node cannot attribute to itself.
	if err := a.states.save(rec.state); err != nil {
		return err
	}
	if err := createNetns(rec.state.Netns); err != nil {
		return a.sandboxFailed(pod, rec, err)
	}
	if err := a.ensureResolvConf(pod, rec); err != nil {
		return a.sandboxFailed(pod, rec, err)
	}

	var ips []netip.Addr
	var err error
	if rec.adopted {
		ips, err = a.cni.check(ctx, rec.state)
		if err != nil {
			log.Info("adopted sandbox failed check; wiring it again", "netns", rec.state.Netns, "err", err)
			if err = a.cni.del(ctx, rec.state); err == nil {
				ips, err = a.cni.add(ctx, rec.state)
			}
		}
	} else {
		ips, err = a.cni.add(ctx, rec.state)
	}
	if err != nil {
		// Release whatever a half-done ADD took; the next try starts clean.
		if derr := a.cni.del(ctx, rec.state); derr != nil {
			log.Debug("cni del after failed add", "err", derr)
		}
		rec.adopted = false
		return a.sandboxFailed(pod, rec, err)
	}
	rec.adopted = false
	rec.state.IPs = ips
	rec.sandboxReady = true
	rec.sandboxErr = ""
	log.Info("pod sandbox ready", "netns", rec.state.Netns, "ips", fmt.Sprint(ips))
	return a.states.save(rec.state)
}

func (a *agent) sandboxFailed(pod *corev1.Pod, rec *podRecord, err error) error {
	rec.sandboxErr = err.Error()
	a.recorder.Eventf(pod, corev1.EventTypeWarning, reasonFailedCreatePodSandBox,
		"Failed to create pod sandbox: %v", err)
	return fmt.Errorf("create sandbox: %w", err)
}

// ensureResolvConf writes the pod's /etc/netns resolv.conf (see
// resolvConf), or removes it when the pod uses the node's resolver.
func (a *agent) ensureResolvConf(pod *corev1.Pod, rec *podRecord) error {
	conf, ok := resolvConf(pod, a.cfg.ClusterDNS, a.cfg.ClusterDomain)
	if !ok {
		return removeEtcNetns(rec.state.Netns)
	}
	return writeResolvConf(rec.state.Netns, conf)
}

// ensureServers starts the stand-in containers in the pod's netns.
func (a *agent) ensureServers(log *slog.Logger, pod *corev1.Pod, rec *podRecord) error {
	if rec.hostNetwork {
		// Servers in the node's netns would collide with the node's own
		// ports and with other hostNetwork pods: report them as running.
		if rec.startedAt.IsZero() {
			rec.startedAt = a.now()
		}
		return nil
	}
	ports := standInPorts(pod)
	ip := rec.state.IPs[0]
	if rec.servers.matches(ports, ip) {
		return nil
	}
	rec.servers.Stop()
	rec.servers = nil
	id := podIdentity{Name: pod.Name, Namespace: pod.Namespace, Node: a.cfg.NodeName, IP: ip.String()}
	s, err := startServers(podNetnsPath(rec.state.Netns), ports, id, log)
	if err != nil {
		return fmt.Errorf("start stand-in servers: %w", err)
	}
	rec.servers = s
	rec.startedAt = a.now()
	log.Info("stand-in servers listening", "ports", fmt.Sprint(ports))
	for _, c := range pod.Spec.Containers {
		a.recorder.Eventf(pod, corev1.EventTypeNormal, reasonStarted, "Started container %s (meridian-lab stand-in)", c.Name)
	}
	return nil
}

// syncStatus writes the computed status if it differs from the pod's. On
// a conflict the pod is read again and the status computed anew.
func (a *agent) syncStatus(ctx context.Context, pod *corev1.Pod, rec *podRecord) error {
	obs := podObservation{
		NodeIP:       a.cfg.NodeIP,
		SandboxReady: rec.sandboxReady,
		SandboxError: rec.sandboxErr,
		Running:      rec.sandboxReady && (rec.hostNetwork || rec.servers != nil),
		// Only CoreDNS has a readiness probe the agent runs; stand-ins
		// are ready as soon as they listen.
		ReadinessFailing: rec.coredns != nil && !rec.coredns.Ready(),
		StartedAt:        rec.startedAt,
		Now:              a.now(),
	}
	if rec.sandboxReady {
		obs.PodIPs = rec.state.IPs
	}
	if rec.workload != nil {
		snap := rec.workload.snapshot()
		obs.Workload = &snap
		if snap.VolumeError != "" {
			obs.SandboxError = snap.VolumeError
		}
	}
	pods := a.client.CoreV1().Pods(pod.Namespace)
	cur := pod
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		st := computePodStatus(cur, obs)
		if equality.Semantic.DeepEqual(st, cur.Status) {
			return nil
		}
		p := cur.DeepCopy()
		p.Status = st
		_, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			fresh, gerr := pods.Get(ctx, pod.Name, metav1.GetOptions{})
			if gerr != nil {
				return gerr
			}
			if fresh.UID != pod.UID {
				return nil
			}
			cur = fresh
		}
		return err
	})
	if apierrors.IsNotFound(err) {
		// Deleted meanwhile: the delete event brings the key back.
		return nil
	}
	if err != nil {
		return fmt.Errorf("update pod status: %w", err)
	}
	return nil
}

// teardown stops the stand-ins, runs CNI DEL and removes the netns and the
// state file, in that order, so that a failed step is retried with all it
// needs still in place.
func (a *agent) teardown(ctx context.Context, log *slog.Logger, rec *podRecord) error {
	rec.servers.Stop()
	rec.servers = nil
	rec.coredns.Stop()
	rec.coredns = nil
	rec.sandboxReady = false
	if w := rec.workload; w != nil {
		w.stop(rec.grace)
		rec.workload = nil
		if err := w.cleanup(); err != nil {
			return fmt.Errorf("tear down pod: %w", err)
		}
		log.Info("pod containers stopped")
	}
	if rec.hostNetwork || rec.state.Netns == "" {
		return nil
	}
	if err := a.cni.del(ctx, rec.state); err != nil {
		return fmt.Errorf("tear down sandbox: %w", err)
	}
	if err := deleteNetns(rec.state.Netns); err != nil {
		return fmt.Errorf("tear down sandbox: %w", err)
	}
	if err := removeEtcNetns(rec.state.Netns); err != nil {
		return fmt.Errorf("tear down sandbox: %w", err)
	}
	if err := os.RemoveAll(a.coreDNSDir(string(rec.state.UID))); err != nil {
		return fmt.Errorf("tear down sandbox: remove coredns files: %w", err)
	}
	if err := a.states.remove(rec.state.UID); err != nil {
		return err
	}
	log.Info("pod sandbox removed", "netns", rec.state.Netns)
	return nil
}

// finishDeletion removes the pod object once its sandbox is gone, as the
// kubelet does when the containers have stopped: grace period zero, and
// only this incarnation of the pod (UID precondition).
func (a *agent) finishDeletion(ctx context.Context, log *slog.Logger, pod *corev1.Pod) error {
	err := a.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: new(int64(0)),
		Preconditions:      metav1.NewUIDPreconditions(string(pod.UID)),
	})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete pod: %w", err)
	}
	log.Info("pod deleted")
	return nil
}

func (a *agent) stopAllServers() {
	a.mu.Lock()
	recs := make([]*podRecord, 0, len(a.records))
	for _, r := range a.records {
		recs = append(recs, r)
	}
	a.mu.Unlock()
	for _, r := range recs {
		r.servers.Stop()
		r.servers = nil
		r.coredns.Stop()
		r.coredns = nil
		// Real containers outlive the agent, as they outlive a kubelet.
		if r.workload != nil {
			r.workload.detach()
			r.workload = nil
		}
	}
}

// podImages are the images of every container of pod.
func podImages(pod *corev1.Pod) []string {
	var out []string
	for _, c := range pod.Spec.InitContainers {
		out = append(out, c.Image)
	}
	for _, c := range pod.Spec.Containers {
		out = append(out, c.Image)
	}
	return out
}

// terminationGrace is the time a going pod's containers get: the deletion's
// grace period, else the pod's.
func terminationGrace(pod *corev1.Pod) time.Duration {
	if g := pod.DeletionGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return 30 * time.Second
}
