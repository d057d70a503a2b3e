package nodeagent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"time"

	cnitypes "github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Reasons the agent writes into pod conditions and events; kubelet's own
// strings where kubelet has one, so `kubectl describe` reads the same.
const (
	reasonFailedCreatePodSandBox = "FailedCreatePodSandBox"
	reasonContainersNotReady     = "ContainersNotReady"
	reasonReadinessGatesNotReady = "ReadinessGatesNotReady"
	reasonContainerCreating      = "ContainerCreating"
	reasonPodInitializing        = "PodInitializing"
	reasonCompleted              = "Completed"
	reasonStarted                = "Started"
)

// containerRuntimeScheme prefixes container IDs, as "containerd://" does
// on a real node.
const containerRuntimeScheme = "meridian-lab://"

// maxConditionMessage keeps a sandbox error from bloating the pod object.
const maxConditionMessage = 1024

// podObservation is everything the agent knows about one pod's sandbox and
// stand-in containers; computePodStatus turns it into the status to report.
type podObservation struct {
	NodeIP netip.Addr
	// PodIPs are the sandbox's addresses, primary first; empty until the
	// sandbox is ready.
	PodIPs []netip.Addr
	// SandboxReady is true once the netns is wired (always for hostNetwork).
	SandboxReady bool
	// SandboxError is the last failure to create the sandbox, if any.
	SandboxError string
	// Running is true once the stand-in servers listen.
	Running bool
	// ReadinessFailing is true while a container's readiness probe fails
	// (or has not yet passed): the pod runs but is not Ready.
	ReadinessFailing bool
	// StartedAt is when the stand-ins started listening.
	StartedAt time.Time
	// Now stamps transitions that happen in this computation.
	Now time.Time
	// Workload, for a pod whose containers run for real (workload.go),
	// replaces Running, ReadinessFailing and StartedAt with what each
	// container does.
	Workload *workloadSnapshot
}

// podIPsFromResult picks the pod's IPs from a CNI result the way the
// kubelet does: the first address is the primary, then the first address
// of the other family, if any. Addresses on host-side interfaces (those
// with no sandbox) are skipped.
func podIPsFromResult(res cnitypes.Result) ([]netip.Addr, error) {
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("convert cni result: %w", err)
	}
	var out []netip.Addr
	for _, ipc := range r.IPs {
		if ipc.Interface != nil && *ipc.Interface >= 0 && *ipc.Interface < len(r.Interfaces) &&
			r.Interfaces[*ipc.Interface].Sandbox == "" {
			continue
		}
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		switch {
		case len(out) == 0:
			out = append(out, a)
		case len(out) == 1 && out[0].Is4() != a.Is4():
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("cni result has no pod address")
	}
	return out, nil
}

// computePodStatus is the status the agent reports for pod, given what it
// observed. It starts from the pod's current status so that fields others
// own (qosClass, nominatedNodeName, resize) and timestamps of states that
// did not change are kept: computing twice from the written status gives
// the same status, so an unchanged pod costs no API write.
func computePodStatus(pod *corev1.Pod, obs podObservation) corev1.PodStatus {
	st := *pod.Status.DeepCopy()
	now := metav1.NewTime(obs.Now)

	if obs.NodeIP.IsValid() {
		st.HostIP = obs.NodeIP.String()
		st.HostIPs = []corev1.HostIP{{IP: obs.NodeIP.String()}}
	}
	if obs.SandboxReady && len(obs.PodIPs) > 0 {
		st.PodIP = obs.PodIPs[0].String()
		st.PodIPs = nil
		for _, ip := range obs.PodIPs {
			st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip.String()})
		}
	}
	if st.StartTime == nil {
		st.StartTime = &now
	}
	running := obs.SandboxReady && obs.Running
	ready := running && !obs.ReadinessFailing
	started := metav1.NewTime(obs.StartedAt)
	if obs.StartedAt.IsZero() {
		started = now
	}
	initialized := obs.SandboxReady

	phaseRunning := running
	if w := obs.Workload; w != nil {
		running, ready, initialized = workloadStatuses(pod, &st, *w)
		running = running && obs.SandboxReady
		ready = ready && running
		phaseRunning = obs.SandboxReady && workloadPhaseRunning(st.ContainerStatuses, initialized)
	} else {
		st.InitContainerStatuses = initContainerStatuses(pod, st.InitContainerStatuses, obs.SandboxReady, running, ready, started)
		st.ContainerStatuses = containerStatuses(pod, pod.Spec.Containers, st.ContainerStatuses, running, ready, started)
	}

	if phaseRunning {
		st.Phase = corev1.PodRunning
	} else {
		st.Phase = corev1.PodPending
	}

	sandbox := condition(corev1.PodReadyToStartContainers, obs.SandboxReady, "", "")
	if !obs.SandboxReady && obs.SandboxError != "" {
		sandbox.Reason = reasonFailedCreatePodSandBox
		sandbox.Message = truncate(obs.SandboxError, maxConditionMessage)
	}
	setCondition(&st, sandbox, now)
	initCond := condition(corev1.PodInitialized, initialized, "", "")
	if !initialized && obs.Workload != nil {
		var pending []string
		for _, c := range st.InitContainerStatuses {
			if c.State.Terminated == nil || c.State.Terminated.ExitCode != 0 {
				pending = append(pending, c.Name)
			}
		}
		initCond.Reason = "ContainersNotInitialized"
		initCond.Message = fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(pending, " "))
	}
	setCondition(&st, initCond, now)

	containersReady := condition(corev1.ContainersReady, ready, "", "")
	if !ready {
		containersReady.Reason = reasonContainersNotReady
		containersReady.Message = fmt.Sprintf("containers with unready status: [%s]", containerNames(pod))
	}
	podReady := containersReady
	podReady.Type = corev1.PodReady
	if ready {
		if missing := unmetReadinessGates(pod, st.Conditions); len(missing) > 0 {
			podReady = condition(corev1.PodReady, false, reasonReadinessGatesNotReady,
				fmt.Sprintf("the status of pod readiness gates is not \"True\": [%s]", strings.Join(missing, " ")))
		}
	}
	setCondition(&st, podReady, now)
	setCondition(&st, containersReady, now)
	if findCondition(st.Conditions, corev1.PodScheduled) == nil {
		setCondition(&st, condition(corev1.PodScheduled, true, "", ""), now)
	}
	return st
}

func condition(t corev1.PodConditionType, ok bool, reason, msg string) corev1.PodCondition {
	s := corev1.ConditionFalse
	if ok {
		s = corev1.ConditionTrue
	}
	return corev1.PodCondition{Type: t, Status: s, Reason: reason, Message: msg}
}

// setCondition replaces or appends c, keeping the existing transition time
// when the status did not change (and the existing probe time, which the
// agent never sets).
func setCondition(st *corev1.PodStatus, c corev1.PodCondition, now metav1.Time) {
	c.LastTransitionTime = now
	if old := findCondition(st.Conditions, c.Type); old != nil {
		if old.Status == c.Status {
			c.LastTransitionTime = old.LastTransitionTime
		}
		c.LastProbeTime = old.LastProbeTime
		c.ObservedGeneration = old.ObservedGeneration
		*old = c
		return
	}
	st.Conditions = append(st.Conditions, c)
}

func findCondition(cs []corev1.PodCondition, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range cs {
		if cs[i].Type == t {
			return &cs[i]
		}
	}
	return nil
}

func unmetReadinessGates(pod *corev1.Pod, cs []corev1.PodCondition) []string {
	var missing []string
	for _, g := range pod.Spec.ReadinessGates {
		if c := findCondition(cs, g.ConditionType); c == nil || c.Status != corev1.ConditionTrue {
			missing = append(missing, string(g.ConditionType))
		}
	}
	return missing
}

func containerNames(pod *corev1.Pod) string {
	names := make([]string, 0, len(pod.Spec.Containers))
	for _, c := range pod.Spec.Containers {
		names = append(names, c.Name)
	}
	return strings.Join(names, " ")
}

// containerStatuses reports every container as running (once the stand-ins
// listen) or as waiting in ContainerCreating; running ones are ready unless
// a readiness probe fails.
func containerStatuses(pod *corev1.Pod, cs []corev1.Container, old []corev1.ContainerStatus, running, ready bool, started metav1.Time) []corev1.ContainerStatus {
	out := make([]corev1.ContainerStatus, 0, len(cs))
	for _, c := range cs {
		out = append(out, containerStatus(pod.UID, c, findContainerStatus(old, c.Name), running, ready, started))
	}
	return out
}

func containerStatus(uid types.UID, c corev1.Container, old *corev1.ContainerStatus, running, ready bool, started metav1.Time) corev1.ContainerStatus {
	s := corev1.ContainerStatus{Name: c.Name, Image: c.Image, Started: new(running), Ready: running && ready}
	if !running {
		s.State.Waiting = &corev1.ContainerStateWaiting{Reason: reasonContainerCreating}
		return s
	}
	s.ContainerID = containerID(uid, c.Name)
	s.ImageID = imageID(c.Image)
	s.State.Running = &corev1.ContainerStateRunning{StartedAt: started}
	// The same stand-in keeps its start time across reconciles and
	// agent restarts: only the first report stamps it.
	if old != nil && old.ContainerID == s.ContainerID && old.State.Running != nil {
		s.State.Running.StartedAt = old.State.Running.StartedAt
	}
	return s
}

// initContainerStatuses reports init containers as completed as soon as the
// sandbox is up (they have nothing to do), and sidecars like containers.
func initContainerStatuses(pod *corev1.Pod, old []corev1.ContainerStatus, sandboxReady, running, ready bool, started metav1.Time) []corev1.ContainerStatus {
	if len(pod.Spec.InitContainers) == 0 {
		return nil
	}
	out := make([]corev1.ContainerStatus, 0, len(pod.Spec.InitContainers))
	for _, c := range pod.Spec.InitContainers {
		prev := findContainerStatus(old, c.Name)
		if isSidecar(c) {
			out = append(out, containerStatus(pod.UID, c, prev, running, ready, started))
			continue
		}
		s := corev1.ContainerStatus{Name: c.Name, Image: c.Image, Started: new(false)}
		if !sandboxReady {
			s.State.Waiting = &corev1.ContainerStateWaiting{Reason: reasonPodInitializing}
			out = append(out, s)
			continue
		}
		s.Ready = true
		s.ContainerID = containerID(pod.UID, c.Name)
		s.ImageID = imageID(c.Image)
		s.State.Terminated = &corev1.ContainerStateTerminated{
			ExitCode: 0, Reason: reasonCompleted, StartedAt: started, FinishedAt: started, ContainerID: s.ContainerID,
		}
		if prev != nil && prev.ContainerID == s.ContainerID && prev.State.Terminated != nil {
			s.State.Terminated = prev.State.Terminated.DeepCopy()
		}
		out = append(out, s)
	}
	return out
}

func findContainerStatus(ss []corev1.ContainerStatus, name string) *corev1.ContainerStatus {
	for i := range ss {
		if ss[i].Name == name {
			return &ss[i]
		}
	}
	return nil
}

// containerID names a stand-in container the way a runtime would.
func containerID(uid types.UID, name string) string {
	return containerRuntimeScheme + string(uid) + "-" + name
}

// imageID is a stable, digest-shaped ID for an image that was never
// pulled: the reference pinned to the SHA-256 of its own name.
func imageID(image string) string {
	if strings.Contains(image, "@sha256:") {
		return image
	}
	sum := sha256.Sum256([]byte(image))
	ref := image
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref + "@sha256:" + hex.EncodeToString(sum[:])
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// workloadStatuses writes the container statuses of a pod that runs for
// real and reports whether all its containers run, all are ready, and its
// init containers are done.
func workloadStatuses(pod *corev1.Pod, st *corev1.PodStatus, w workloadSnapshot) (running, ready, initialized bool) {
	st.InitContainerStatuses = nil
	for _, c := range pod.Spec.InitContainers {
		st.InitContainerStatuses = append(st.InitContainerStatuses, workloadContainerStatus(pod.UID, c, w.Containers[c.Name], w.VolumeError))
	}
	st.ContainerStatuses = nil
	running, ready = len(pod.Spec.Containers) > 0, len(pod.Spec.Containers) > 0
	for _, c := range pod.Spec.Containers {
		cs := w.Containers[c.Name]
		st.ContainerStatuses = append(st.ContainerStatuses, workloadContainerStatus(pod.UID, c, cs, w.VolumeError))
		running = running && cs.Running
		ready = ready && cs.Running && cs.Ready
	}
	return running, ready, w.InitDone
}

// volumeErr, while the pod's volumes cannot be set up, explains why a
// container waits (the kubelet says it in a FailedMount event).
func workloadContainerStatus(uid types.UID, c corev1.Container, cs ctrState, volumeErr string) corev1.ContainerStatus {
	s := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: imageID(c.Image), RestartCount: cs.Restarts,
		Started: new(cs.Running), Ready: cs.Running && cs.Ready, LastTerminationState: corev1.ContainerState{Terminated: cs.LastTerm}}
	switch {
	case cs.Running:
		s.ContainerID = fmt.Sprintf("%s%s-%s-%d", containerRuntimeScheme, uid, c.Name, cs.Instance)
		s.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(cs.StartedAt)}
	case cs.Term != nil:
		s.ContainerID = cs.Term.ContainerID
		s.State.Terminated = cs.Term
		s.Ready = cs.Init && cs.Term.ExitCode == 0
	default:
		reason := cs.Waiting
		if reason == "" {
			reason = reasonContainerCreating
		}
		msg := cs.Message
		if msg == "" && volumeErr != "" {
			msg = "volumes: " + volumeErr
		}
		s.State.Waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: truncate(msg, maxConditionMessage)}
	}
	return s
}

// workloadPhaseRunning is the kubelet's getPhase for restartPolicy Always:
// Pending until the init containers are done or while a container waits
// to start for the first time; Running once every container has run, even
// one restarting after a crash (CrashLoopBackOff shows as Running).
func workloadPhaseRunning(cs []corev1.ContainerStatus, initialized bool) bool {
	if !initialized || len(cs) == 0 {
		return false
	}
	for _, c := range cs {
		if c.State.Waiting != nil && c.LastTerminationState.Terminated == nil {
			return false
		}
	}
	return true
}
