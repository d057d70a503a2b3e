package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meridian-net/meridian/integration/nodeagent/container"
)

// A workload is a pod the agent runs for real: a host-network pod whose
// images are in the node's image store (in the lab, Meridian's DaemonSet
// pod). Its init containers run to completion in order, then every
// container runs under supervision with the pod's restart policy (Always,
// as for a DaemonSet), its readiness and liveness probes, and a log and pid
// record in the lab's conventions (<LogDir>/<container>-<node>.log,
// <PidDir>/<container>-<node>.pid), so the lab's process tools see it.
//
// Containers outlive the agent, as they outlive a kubelet restart: a new
// agent adopts the processes recorded under StateDir/containers. A
// container is stopped only when its pod goes (SIGTERM, then SIGKILL after
// the pod's grace period), when its liveness probe fails, or when the lab
// holds it (StateDir/hold/<container> exists: stopped containers are not
// restarted while the file is there, which is how the lab stops meridiand
// for a test).

// Restart backoff of a container that exited: the kubelet's doubling, on a
// lab's time scale.
const (
	restartBackoffBase = 2 * time.Second
	restartBackoffMax  = 60 * time.Second
	// restartBackoffReset: a container that ran this long starts over at
	// the base backoff, as with the kubelet's.
	restartBackoffReset = 10 * time.Minute
	volumeRefresh       = time.Minute
	holdPoll            = 200 * time.Millisecond
)

// Container waiting reasons, the kubelet's where it has them.
const (
	reasonCreateContainerConfigError = "CreateContainerConfigError"
	reasonCreateContainerError       = "CreateContainerError"
	reasonCrashLoopBackOff           = "CrashLoopBackOff"
	reasonHeld                       = "HeldByLab"
	reasonError                      = "Error"
	reasonFailedMount                = "FailedMount"
	reasonUnhealthy                  = "Unhealthy"
	reasonKilling                    = "Killing"
)

// ctrState is what the agent knows of one container.
type ctrState struct {
	Init      bool
	Image     string
	Running   bool
	PID       int
	Start     uint64
	StartedAt time.Time
	Ready     bool
	Restarts  int32
	Instance  int
	Waiting   string
	Message   string
	Term      *corev1.ContainerStateTerminated
	LastTerm  *corev1.ContainerStateTerminated
}

// ctrRecord is a running container as saved for the next agent.
type ctrRecord struct {
	PID       int       `json:"pid"`
	Start     uint64    `json:"start"`
	StartedAt time.Time `json:"startedAt"`
	Restarts  int32     `json:"restarts"`
	Instance  int       `json:"instance"`
}

type workload struct {
	a    *agent
	key  string
	uid  types.UID
	pod  *corev1.Pod
	log  *slog.Logger
	vols *volumeManager

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	kill      bool          // stop the containers when ctx ends, not just the supervision
	grace     time.Duration // for kill
	volErr    string
	initDone  bool
	ctrs      map[string]*ctrState
	procs     map[string]*os.Process // started by this agent, so Wait works
	liveFails map[string]chan struct{}
}

// workloadSnapshot is a workload's state for the pod status.
type workloadSnapshot struct {
	VolumeError string
	InitDone    bool
	Containers  map[string]ctrState
}

func (a *agent) startWorkload(key string, pod *corev1.Pod) *workload {
	ctx, cancel := context.WithCancel(context.Background())
	w := &workload{
		a: a, key: key, uid: pod.UID, pod: pod.DeepCopy(),
		log:  a.log.With("pod", key),
		vols: newVolumeManager(a.client, a.cfg.NodeIP.String(), a.volumeDir(pod.UID), a.now),
		ctx:  ctx, cancel: cancel, done: make(chan struct{}),
		ctrs: map[string]*ctrState{}, procs: map[string]*os.Process{}, liveFails: map[string]chan struct{}{},
	}
	for _, c := range pod.Spec.InitContainers {
		w.ctrs[c.Name] = &ctrState{Init: true, Image: c.Image, Waiting: reasonPodInitializing}
	}
	for _, c := range pod.Spec.Containers {
		w.ctrs[c.Name] = &ctrState{Image: c.Image, Waiting: reasonContainerCreating}
	}
	go w.run()
	return w
}

func (a *agent) volumeDir(uid types.UID) string {
	return filepath.Join(a.cfg.StateDir, "volumes", string(uid))
}

func (a *agent) containerRecordDir(uid types.UID) string {
	return filepath.Join(a.cfg.StateDir, "containers", string(uid))
}

func (a *agent) holdPath(name string) string {
	return filepath.Join(a.cfg.StateDir, "hold", name)
}

// procName is the lab's name for a container's log and pid record.
func (a *agent) procName(ctr string) string { return ctr + "-" + a.cfg.NodeName }

func (w *workload) notify() {
	if q := w.a.queue; q != nil {
		q.Add(w.key)
	}
}

func (w *workload) snapshot() workloadSnapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := workloadSnapshot{VolumeError: w.volErr, InitDone: w.initDone, Containers: map[string]ctrState{}}
	for n, c := range w.ctrs {
		s.Containers[n] = *c
	}
	return s
}

func (w *workload) update(name string, f func(*ctrState)) {
	w.mu.Lock()
	f(w.ctrs[name])
	w.mu.Unlock()
	w.notify()
}

// stop ends the pod: its containers get SIGTERM and, after grace, SIGKILL.
// It returns once they are gone.
func (w *workload) stop(grace time.Duration) {
	w.mu.Lock()
	w.kill, w.grace = true, grace
	w.mu.Unlock()
	w.cancel()
	<-w.done
}

// detach stops supervising and leaves the containers running, for the
// next agent to adopt.
func (w *workload) detach() {
	w.cancel()
	<-w.done
}

func (w *workload) run() {
	defer close(w.done)
	dirs, ok := w.ensureVolumes()
	if !ok {
		return
	}
	go w.refreshVolumes()
	if !w.adopt() {
		for _, c := range w.pod.Spec.InitContainers {
			if !w.runInit(c, dirs) {
				return
			}
		}
	}
	w.mu.Lock()
	w.initDone = true
	w.mu.Unlock()
	w.notify()
	var wg sync.WaitGroup
	for _, c := range w.pod.Spec.Containers {
		wg.Go(func() { w.supervise(c, dirs) })
	}
	wg.Wait()
}

// ensureVolumes retries until the volumes are in place or the pod goes.
func (w *workload) ensureVolumes() (map[string]string, bool) {
	wait := restartBackoffBase
	for {
		dirs, err := w.vols.ensure(w.ctx, w.pod)
		if err == nil {
			w.mu.Lock()
			w.volErr = ""
			w.mu.Unlock()
			return dirs, true
		}
		w.log.Warn("volumes not ready", "err", err)
		w.mu.Lock()
		w.volErr = err.Error()
		w.mu.Unlock()
		w.a.recorder.Eventf(w.pod, corev1.EventTypeWarning, reasonFailedMount, "MountVolume failed: %v", err)
		w.notify()
		select {
		case <-w.ctx.Done():
			return nil, false
		case <-time.After(wait):
		}
		wait = min(2*wait, restartBackoffMax)
	}
}

// refreshVolumes rewrites changed ConfigMaps and Secrets and renews
// tokens, as the kubelet's periodic volume sync does.
func (w *workload) refreshVolumes() {
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-time.After(volumeRefresh):
		}
		if _, err := w.vols.ensure(w.ctx, w.pod); err != nil && w.ctx.Err() == nil {
			w.log.Warn("refresh volumes", "err", err)
		}
	}
}

// adopt takes over containers a previous agent started and that still
// run; it reports whether all the pod's containers were adopted, in which
// case the init containers have run already.
func (w *workload) adopt() bool {
	all := true
	for _, c := range w.pod.Spec.Containers {
		b, err := os.ReadFile(filepath.Join(w.a.containerRecordDir(w.uid), c.Name+".json"))
		var r ctrRecord
		if err != nil || json.Unmarshal(b, &r) != nil || !container.Alive(r.PID, r.Start) {
			all = false
			continue
		}
		w.mu.Lock()
		st := w.ctrs[c.Name]
		st.Running, st.PID, st.Start, st.StartedAt = true, r.PID, r.Start, r.StartedAt
		st.Restarts, st.Instance, st.Waiting = r.Restarts, r.Instance, ""
		st.Ready = c.ReadinessProbe == nil
		w.mu.Unlock()
		w.log.Info("adopted running container", "container", c.Name, "pid", r.PID)
	}
	return all
}

// runInit runs an init container until it exits 0, restarting it with
// backoff otherwise; false means the pod went meanwhile (a going pod's
// init container is killed, a detached one left to finish).
func (w *workload) runInit(c corev1.Container, dirs map[string]string) bool {
	wait := restartBackoffBase
	for {
		if p, err := w.start(c, dirs); err == nil {
			exited := make(chan int, 1)
			go func() { exited <- w.waitExit(c.Name, p) }()
			select {
			case code := <-exited:
				if code == 0 {
					return true
				}
				w.a.recorder.Eventf(w.pod, corev1.EventTypeWarning, "BackOff", "Back-off restarting failed init container %s (exit code %d)", c.Name, code)
			case <-w.ctx.Done():
				w.mu.Lock()
				kill := w.kill
				w.mu.Unlock()
				if kill {
					_ = p.Kill()
					<-exited
				}
				return false
			}
		}
		if !w.sleep(&wait) {
			return false
		}
	}
}

// supervise keeps a container running until the pod goes.
func (w *workload) supervise(c corev1.Container, dirs map[string]string) {
	wait := restartBackoffBase
	for {
		w.mu.Lock()
		st := w.ctrs[c.Name]
		var p *os.Process
		if st.Running {
			p = w.procs[c.Name] // nil for an adopted one
		}
		running := st.Running
		w.mu.Unlock()
		if !running {
			if !w.waitHold(c.Name) {
				return
			}
			var err error
			if p, err = w.start(c, dirs); err != nil {
				if !w.sleep(&wait) {
					return
				}
				continue
			}
		}
		started := time.Now()
		pctx, stopProbes := context.WithCancel(w.ctx)
		live := w.startProbes(pctx, c)
		exited := make(chan int, 1)
		go func() { exited <- w.waitExit(c.Name, p) }()
		select {
		case code := <-exited:
			stopProbes()
			w.log.Warn("container exited", "container", c.Name, "code", code)
		case <-live:
			stopProbes()
			w.a.recorder.Eventf(w.pod, corev1.EventTypeNormal, reasonKilling, "Container %s failed liveness probe, will be restarted", c.Name)
			w.signal(c.Name, syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(terminationGrace(w.pod)):
				w.signal(c.Name, syscall.SIGKILL)
				<-exited
			}
		case <-w.ctx.Done():
			stopProbes()
			w.mu.Lock()
			kill, grace := w.kill, w.grace
			w.mu.Unlock()
			if !kill {
				return
			}
			w.signal(c.Name, syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(grace):
				w.signal(c.Name, syscall.SIGKILL)
				<-exited
			}
			_ = os.Remove(filepath.Join(w.a.cfg.PidDir, w.a.procName(c.Name)+".pid"))
			return
		}
		if w.ctx.Err() != nil {
			continue // the pod is going: the case above stops it
		}
		if time.Since(started) > restartBackoffReset {
			wait = restartBackoffBase
		}
		if w.held(c.Name) {
			continue // restarted, without backoff, when the lab lets go
		}
		w.update(c.Name, func(s *ctrState) { s.Waiting = reasonCrashLoopBackOff })
		w.a.recorder.Eventf(w.pod, corev1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s", c.Name)
		if !w.sleep(&wait) {
			return
		}
	}
}

func (w *workload) sleep(wait *time.Duration) bool {
	select {
	case <-w.ctx.Done():
		return false
	case <-time.After(*wait):
	}
	*wait = min(2**wait, restartBackoffMax)
	return true
}

func (w *workload) held(name string) bool {
	_, err := os.Stat(w.a.holdPath(name))
	return err == nil
}

// waitHold waits while the lab holds the container; false if the pod goes.
func (w *workload) waitHold(name string) bool {
	reported := false
	for w.held(name) {
		if !reported {
			w.update(name, func(s *ctrState) { s.Waiting, s.Message = reasonHeld, "stopped by the lab (meridian-lab)" })
			reported = true
		}
		select {
		case <-w.ctx.Done():
			return false
		case <-time.After(holdPoll):
		}
	}
	return true
}

func (w *workload) signal(name string, sig syscall.Signal) {
	w.mu.Lock()
	pid := w.ctrs[name].PID
	w.mu.Unlock()
	if pid > 0 {
		_ = syscall.Kill(pid, sig)
	}
}

// startProbes runs the readiness probe (or marks the container ready) and
// the liveness probe; the returned channel closes when liveness fails.
func (w *workload) startProbes(ctx context.Context, c corev1.Container) <-chan struct{} {
	live := make(chan struct{})
	podIP := w.a.cfg.NodeIP.String()
	if c.ReadinessProbe == nil {
		w.update(c.Name, func(s *ctrState) { s.Ready = true })
	} else {
		go newProber(c.ReadinessProbe, c, podIP).run(ctx, false, func(ok bool, err error) {
			if !ok {
				w.a.recorder.Eventf(w.pod, corev1.EventTypeWarning, reasonUnhealthy, "Readiness probe failed: %v", err)
			}
			w.update(c.Name, func(s *ctrState) { s.Ready = ok })
		})
	}
	if c.LivenessProbe != nil {
		go newProber(c.LivenessProbe, c, podIP).run(ctx, true, func(ok bool, err error) {
			if !ok {
				w.a.recorder.Eventf(w.pod, corev1.EventTypeWarning, reasonUnhealthy, "Liveness probe failed: %v", err)
				close(live)
			}
		})
	}
	return live
}

// waitExit waits for the container's process and records how it ended.
// Adopted processes are not this agent's children, so they are polled.
func (w *workload) waitExit(name string, p *os.Process) int {
	code := -1
	var reason string
	if p != nil {
		ps, err := p.Wait()
		if err == nil {
			code = ps.ExitCode()
			if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
		}
	} else {
		w.mu.Lock()
		pid, start := w.ctrs[name].PID, w.ctrs[name].Start
		w.mu.Unlock()
		for container.Alive(pid, start) {
			time.Sleep(holdPoll)
		}
	}
	switch {
	case code == 0:
		reason = reasonCompleted
	default:
		reason = reasonError
	}
	now := metav1.NewTime(w.a.now())
	w.update(name, func(s *ctrState) {
		t := &corev1.ContainerStateTerminated{ExitCode: int32(code), Reason: reason,
			StartedAt: metav1.NewTime(s.StartedAt), FinishedAt: now, ContainerID: w.containerID(name, s.Instance)}
		s.Running, s.Ready, s.PID, s.Start = false, false, 0, 0
		if s.Init && code == 0 {
			s.Term, s.Waiting = t, ""
			return
		}
		s.LastTerm, s.Term = t, nil
		if !s.Init || code != 0 {
			s.Restarts++
		}
		s.Waiting = reasonCrashLoopBackOff
	})
	_ = os.Remove(filepath.Join(w.a.containerRecordDir(w.uid), name+".json"))
	return code
}

func (w *workload) containerID(name string, instance int) string {
	return fmt.Sprintf("%s%s-%s-%d", containerRuntimeScheme, w.uid, name, instance)
}

// start builds the container's spec from the pod, the image and what the
// API holds now, and starts it.
func (w *workload) start(c corev1.Container, dirs map[string]string) (*os.Process, error) {
	spec, err := w.spec(c, dirs)
	if err != nil {
		w.log.Warn("container config", "container", c.Name, "err", err)
		w.update(c.Name, func(s *ctrState) { s.Waiting, s.Message = reasonCreateContainerConfigError, err.Error() })
		w.a.recorder.Eventf(w.pod, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		return nil, err
	}
	name := w.a.procName(c.Name)
	for _, d := range []string{w.a.cfg.LogDir, w.a.cfg.PidDir, w.a.containerRecordDir(w.uid)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	logf, err := os.OpenFile(filepath.Join(w.a.cfg.LogDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open container log: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s meridian-lab agent starts container %s of pod %s (%s): %s\n",
		time.Now().Format(time.RFC3339), c.Name, w.key, c.Image, strings.Join(spec.Args, " "))
	p, err := container.Start(spec, w.a.cfg.ContainerInit, logf, logf)
	if err != nil {
		w.log.Warn("start container", "container", c.Name, "err", err)
		w.update(c.Name, func(s *ctrState) { s.Waiting, s.Message = reasonCreateContainerError, err.Error() })
		w.a.recorder.Eventf(w.pod, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		return nil, err
	}
	start, _ := container.StartTime(p.Pid)
	now := w.a.now()
	var rec ctrRecord
	w.mu.Lock()
	st := w.ctrs[c.Name]
	st.Instance++
	st.Running, st.PID, st.Start, st.StartedAt = true, p.Pid, start, now
	st.Waiting, st.Message, st.Term = "", "", nil
	st.Ready = false
	w.procs[c.Name] = p
	rec = ctrRecord{PID: p.Pid, Start: start, StartedAt: now, Restarts: st.Restarts, Instance: st.Instance}
	w.mu.Unlock()
	w.notify()
	w.a.recorder.Eventf(w.pod, corev1.EventTypeNormal, reasonStarted, "Started container %s", c.Name)
	w.log.Info("container started", "container", c.Name, "pid", p.Pid)
	if !st.Init {
		b, _ := json.Marshal(rec)
		if err := writeIfChanged(filepath.Join(w.a.containerRecordDir(w.uid), c.Name+".json"), b, 0o644); err != nil {
			w.log.Warn("save container record", "err", err)
		}
		pidRec := fmt.Sprintf("%d %d\n", p.Pid, start)
		if err := writeIfChanged(filepath.Join(w.a.cfg.PidDir, name+".pid"), []byte(pidRec), 0o644); err != nil {
			w.log.Warn("write pid record", "err", err)
		}
	}
	return p, nil
}

func (w *workload) spec(c corev1.Container, dirs map[string]string) (container.Spec, error) {
	img, err := w.a.images.get(c.Image)
	if err != nil {
		return container.Spec{}, err
	}
	src, err := w.envSources(c)
	if err != nil {
		return container.Spec{}, err
	}
	resolv, hosts, err := w.etcFiles()
	if err != nil {
		return container.Spec{}, err
	}
	return containerSpec(w.pod, c, img, src, dirs, resolv, hosts)
}

// envSources reads what the container's env refers to: the Service links
// and the ConfigMaps and Secrets named in env and envFrom.
func (w *workload) envSources(c corev1.Container) (envSources, error) {
	ctx := w.ctx
	src := envSources{Pod: w.pod, NodeIP: w.a.cfg.NodeIP.String(), ConfigMaps: map[string]*corev1.ConfigMap{}, Secrets: map[string]*corev1.Secret{}}
	core := w.a.client.CoreV1()
	var svcs []*corev1.Service
	if k, err := core.Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{}); err == nil {
		svcs = append(svcs, k)
	} else {
		return src, fmt.Errorf("get the kubernetes service: %w", err)
	}
	if links := w.pod.Spec.EnableServiceLinks; links == nil || *links {
		list, err := core.Services(w.pod.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return src, fmt.Errorf("list services for service links: %w", err)
		}
		for i := range list.Items {
			if w.pod.Namespace == metav1.NamespaceDefault && list.Items[i].Name == "kubernetes" {
				continue
			}
			svcs = append(svcs, &list.Items[i])
		}
	}
	src.ServiceEnv = serviceEnv(svcs)
	var cms, secrets []string
	for _, f := range c.EnvFrom {
		if f.ConfigMapRef != nil {
			cms = append(cms, f.ConfigMapRef.Name)
		}
		if f.SecretRef != nil {
			secrets = append(secrets, f.SecretRef.Name)
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
			cms = append(cms, e.ValueFrom.ConfigMapKeyRef.Name)
		}
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			secrets = append(secrets, e.ValueFrom.SecretKeyRef.Name)
		}
	}
	for _, n := range cms {
		if cm, err := core.ConfigMaps(w.pod.Namespace).Get(ctx, n, metav1.GetOptions{}); err == nil {
			src.ConfigMaps[n] = cm
		}
	}
	for _, n := range secrets {
		if s, err := core.Secrets(w.pod.Namespace).Get(ctx, n, metav1.GetOptions{}); err == nil {
			src.Secrets[n] = s
		}
	}
	return src, nil
}

// etcFiles are the resolv.conf and hosts the kubelet gives a host-network
// container: the cluster's resolver for ClusterFirstWithHostNet, the
// node's otherwise, and the node's hosts file.
func (w *workload) etcFiles() (resolv, hosts string, err error) {
	resolv = "/etc/resolv.conf"
	if conf, ok := resolvConf(w.pod, w.a.cfg.ClusterDNS, w.a.cfg.ClusterDomain); ok {
		resolv = filepath.Join(w.a.volumeDir(w.uid), "..resolv.conf")
		if err := os.MkdirAll(filepath.Dir(resolv), 0o755); err != nil {
			return "", "", err
		}
		if err := writeIfChanged(resolv, []byte(conf), 0o644); err != nil {
			return "", "", err
		}
	}
	if _, err := os.Stat(resolv); err != nil {
		resolv = ""
	}
	hosts = "/etc/hosts"
	if _, err := os.Stat(hosts); err != nil {
		hosts = ""
	}
	return resolv, hosts, nil
}

// cleanup removes what the pod left on the node once it is gone.
func (w *workload) cleanup() error {
	return errors.Join(
		os.RemoveAll(w.a.volumeDir(w.uid)),
		os.RemoveAll(w.a.containerRecordDir(w.uid)))
}
