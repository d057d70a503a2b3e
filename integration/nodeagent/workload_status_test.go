package nodeagent

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const meridianImage = "ghcr.io/meridian-net/meridian:dev"

// workloadPod is the chart's DaemonSet pod as the lab agent runs it: host
// network, one init container, meridiand.
func workloadPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "meridian-x7k2p", Namespace: "kube-system", UID: "0c8d5a4e-1111-2222-3333-444455556666"},
		Spec: corev1.PodSpec{
			NodeName: "node-1", HostNetwork: true, RestartPolicy: corev1.RestartPolicyAlways,
			InitContainers: []corev1.Container{{Name: "install-cni", Image: meridianImage}},
			Containers:     []corev1.Container{{Name: "meridiand", Image: meridianImage}},
		},
		Status: corev1.PodStatus{
			Phase:    corev1.PodPending,
			QOSClass: corev1.PodQOSBurstable,
			Conditions: []corev1.PodCondition{{
				Type: corev1.PodScheduled, Status: corev1.ConditionTrue,
				LastTransitionTime: metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
			}},
		},
	}
}

func workloadObs(w workloadSnapshot, now time.Time) podObservation {
	return podObservation{NodeIP: nodeIP, PodIPs: []netip.Addr{nodeIP}, SandboxReady: true, Now: now, Workload: &w}
}

// installDone is the init container after it exited 0.
func installDone() ctrState {
	return ctrState{Init: true, Image: meridianImage, Term: &corev1.ContainerStateTerminated{
		ExitCode: 0, Reason: reasonCompleted, StartedAt: metav1.NewTime(t0), FinishedAt: metav1.NewTime(t0.Add(2 * time.Second)),
		ContainerID: "meridian-lab://0c8d5a4e-1111-2222-3333-444455556666-install-cni-1",
	}}
}

func meridiandRunning(ready bool) ctrState {
	return ctrState{Image: meridianImage, Running: true, Ready: ready, PID: 4242, StartedAt: t0.Add(3 * time.Second), Instance: 1}
}

func TestComputePodStatusWorkloadRunning(t *testing.T) {
	pod := workloadPod()
	snap := workloadSnapshot{InitDone: true, Containers: map[string]ctrState{"install-cni": installDone(), "meridiand": meridiandRunning(true)}}
	st := computePodStatus(pod, workloadObs(snap, t0.Add(5*time.Second)))

	if st.Phase != corev1.PodRunning || st.PodIP != "198.18.0.11" || st.HostIP != "198.18.0.11" {
		t.Errorf("phase %s podIP %q hostIP %q", st.Phase, st.PodIP, st.HostIP)
	}
	for _, ct := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		if c := cond(st, ct); c.Status != corev1.ConditionTrue || c.Reason != "" {
			t.Errorf("%s = %+v, want True", ct, c)
		}
	}
	if st.QOSClass != corev1.PodQOSBurstable {
		t.Errorf("qosClass lost: %q", st.QOSClass)
	}
	if len(st.InitContainerStatuses) != 1 || len(st.ContainerStatuses) != 1 {
		t.Fatalf("statuses: init %d, containers %d", len(st.InitContainerStatuses), len(st.ContainerStatuses))
	}
	ic := st.InitContainerStatuses[0]
	if ic.Name != "install-cni" || !ic.Ready || ic.Started == nil || *ic.Started || ic.State.Terminated == nil ||
		ic.State.Terminated.Reason != reasonCompleted || ic.State.Terminated.ExitCode != 0 ||
		ic.ContainerID != "meridian-lab://0c8d5a4e-1111-2222-3333-444455556666-install-cni-1" ||
		ic.State.Waiting != nil || ic.State.Running != nil {
		t.Errorf("init container: %+v", ic)
	}
	mc := st.ContainerStatuses[0]
	if mc.Name != "meridiand" || !mc.Ready || mc.Started == nil || !*mc.Started || mc.State.Running == nil ||
		!mc.State.Running.StartedAt.Time.Equal(t0.Add(3*time.Second)) || mc.RestartCount != 0 ||
		mc.ContainerID != "meridian-lab://0c8d5a4e-1111-2222-3333-444455556666-meridiand-1" ||
		mc.Image != meridianImage || !strings.HasPrefix(mc.ImageID, "ghcr.io/meridian-net/meridian@sha256:") ||
		mc.LastTerminationState.Terminated != nil {
		t.Errorf("meridiand: %+v", mc)
	}

	// Computing again later from the written status changes nothing.
	pod.Status = st
	again := computePodStatus(pod, workloadObs(snap, t0.Add(time.Hour)))
	if !equality.Semantic.DeepEqual(st, again) {
		t.Errorf("status not stable:\n%+v\n%+v", st, again)
	}
}

func TestComputePodStatusWorkloadReadiness(t *testing.T) {
	pod := workloadPod()
	snap := workloadSnapshot{InitDone: true, Containers: map[string]ctrState{"install-cni": installDone(), "meridiand": meridiandRunning(false)}}
	t1 := t0.Add(5 * time.Second)
	st := computePodStatus(pod, workloadObs(snap, t1))
	if st.Phase != corev1.PodRunning {
		t.Errorf("phase %s, want Running", st.Phase)
	}
	for _, ct := range []corev1.PodConditionType{corev1.PodReady, corev1.ContainersReady} {
		if c := cond(st, ct); c.Status != corev1.ConditionFalse || c.Reason != reasonContainersNotReady ||
			c.Message != "containers with unready status: [meridiand]" {
			t.Errorf("%s = %+v", ct, c)
		}
	}
	if c := cond(st, corev1.PodInitialized); c.Status != corev1.ConditionTrue {
		t.Errorf("Initialized = %+v", c)
	}
	if mc := st.ContainerStatuses[0]; mc.Ready || mc.Started == nil || !*mc.Started || mc.State.Running == nil {
		t.Errorf("meridiand, probe not passed: %+v", mc)
	}
	pod.Status = st
	if again := computePodStatus(pod, workloadObs(snap, t1.Add(time.Minute))); !equality.Semantic.DeepEqual(st, again) {
		t.Errorf("unready status not stable:\n%+v\n%+v", st, again)
	}

	// The probe passes: Ready from then on, the transition stamped now.
	t2 := t1.Add(10 * time.Second)
	snap.Containers["meridiand"] = meridiandRunning(true)
	st = computePodStatus(pod, workloadObs(snap, t2))
	if c := cond(st, corev1.PodReady); c.Status != corev1.ConditionTrue || !c.LastTransitionTime.Time.Equal(t2) || c.Reason != "" || c.Message != "" {
		t.Errorf("Ready after the probe passed: %+v", c)
	}
	if c := cond(st, corev1.PodInitialized); !c.LastTransitionTime.Time.Equal(t1) {
		t.Errorf("Initialized transition time moved: %+v", c)
	}
	if !st.ContainerStatuses[0].Ready {
		t.Errorf("meridiand not ready: %+v", st.ContainerStatuses[0])
	}
}

func TestComputePodStatusWorkloadInitializing(t *testing.T) {
	pod := workloadPod()
	for _, tc := range []struct {
		name      string
		install   ctrState
		wantState func(corev1.ContainerStatus) bool
	}{
		{
			name:      "init running",
			install:   ctrState{Init: true, Image: meridianImage, Running: true, StartedAt: t0, Instance: 1},
			wantState: func(s corev1.ContainerStatus) bool { return s.State.Running != nil && !s.Ready },
		},
		{
			name: "init failed, backing off",
			install: ctrState{Init: true, Image: meridianImage, Waiting: "CrashLoopBackOff", Restarts: 2,
				LastTerm: &corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error", ContainerID: "meridian-lab://x-install-cni-2"}},
			wantState: func(s corev1.ContainerStatus) bool {
				return s.State.Waiting != nil && s.State.Waiting.Reason == "CrashLoopBackOff" && s.RestartCount == 2 &&
					s.LastTerminationState.Terminated != nil && s.LastTerminationState.Terminated.ExitCode == 1 && !s.Ready
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap := workloadSnapshot{Containers: map[string]ctrState{
				"install-cni": tc.install,
				"meridiand":   {Image: meridianImage, Waiting: reasonPodInitializing},
			}}
			st := computePodStatus(pod, workloadObs(snap, t0))
			if st.Phase != corev1.PodPending {
				t.Errorf("phase %s, want Pending", st.Phase)
			}
			if c := cond(st, corev1.PodInitialized); c.Status != corev1.ConditionFalse {
				t.Errorf("Initialized = %+v", c)
			}
			if c := cond(st, corev1.PodReady); c.Status != corev1.ConditionFalse {
				t.Errorf("Ready = %+v", c)
			}
			if c := cond(st, corev1.PodReadyToStartContainers); c.Status != corev1.ConditionTrue {
				t.Errorf("PodReadyToStartContainers = %+v", c)
			}
			if !tc.wantState(st.InitContainerStatuses[0]) {
				t.Errorf("install-cni: %+v", st.InitContainerStatuses[0])
			}
			mc := st.ContainerStatuses[0]
			if mc.State.Waiting == nil || mc.State.Waiting.Reason != reasonPodInitializing || mc.Ready || mc.ContainerID != "" {
				t.Errorf("meridiand: %+v", mc)
			}
		})
	}
}

func TestComputePodStatusWorkloadCrashLoop(t *testing.T) {
	pod := workloadPod()
	last := &corev1.ContainerStateTerminated{
		ExitCode: 1, Reason: "Error", StartedAt: metav1.NewTime(t0.Add(10 * time.Second)), FinishedAt: metav1.NewTime(t0.Add(11 * time.Second)),
		ContainerID: "meridian-lab://0c8d5a4e-1111-2222-3333-444455556666-meridiand-3",
	}
	msg := "back-off 40s restarting failed container=meridiand pod=meridian-x7k2p_kube-system(0c8d5a4e-1111-2222-3333-444455556666)"
	snap := workloadSnapshot{InitDone: true, Containers: map[string]ctrState{
		"install-cni": installDone(),
		"meridiand":   {Image: meridianImage, Waiting: "CrashLoopBackOff", Message: msg, Restarts: 3, Instance: 3, LastTerm: last},
	}}
	st := computePodStatus(pod, workloadObs(snap, t0.Add(time.Minute)))
	mc := st.ContainerStatuses[0]
	if mc.State.Waiting == nil || mc.State.Waiting.Reason != "CrashLoopBackOff" || mc.State.Waiting.Message != msg {
		t.Errorf("waiting state %+v", mc.State)
	}
	if mc.RestartCount != 3 || mc.Ready || mc.Started == nil || *mc.Started || mc.State.Running != nil || mc.State.Terminated != nil {
		t.Errorf("meridiand: %+v", mc)
	}
	if lt := mc.LastTerminationState.Terminated; lt == nil || lt.ExitCode != 1 || lt.Reason != "Error" || lt.ContainerID != last.ContainerID ||
		!lt.FinishedAt.Time.Equal(t0.Add(11*time.Second)) {
		t.Errorf("last termination %+v", mc.LastTerminationState)
	}
	if c := cond(st, corev1.ContainersReady); c.Status != corev1.ConditionFalse || c.Reason != reasonContainersNotReady {
		t.Errorf("ContainersReady = %+v", c)
	}
	if c := cond(st, corev1.PodInitialized); c.Status != corev1.ConditionTrue {
		t.Errorf("Initialized = %+v", c)
	}
	pod.Status = st
	if again := computePodStatus(pod, workloadObs(snap, t0.Add(2*time.Minute))); !equality.Semantic.DeepEqual(st, again) {
		t.Errorf("crash-loop status not stable:\n%+v\n%+v", st, again)
	}
}

// The kubelet's getPhase counts a waiting container that has terminated
// before as stopped, and a pod with restartPolicy Always whose containers
// are all stopped or running is Running: `kubectl get pods` shows a
// crash-looping DaemonSet pod as Running/CrashLoopBackOff, never Pending.
func TestComputePodStatusWorkloadCrashLoopPhase(t *testing.T) {
	pod := workloadPod()
	snap := workloadSnapshot{InitDone: true, Containers: map[string]ctrState{
		"install-cni": installDone(),
		"meridiand": {Image: meridianImage, Waiting: "CrashLoopBackOff", Restarts: 1, Instance: 1,
			LastTerm: &corev1.ContainerStateTerminated{ExitCode: 2, Reason: "Error"}},
	}}
	st := computePodStatus(pod, workloadObs(snap, t0))
	if st.Phase != corev1.PodRunning {
		t.Errorf("phase %s of a pod whose only container is restarting, want Running (kubelet getPhase)", st.Phase)
	}
}

func TestComputePodStatusWorkloadVolumeError(t *testing.T) {
	pod := workloadPod()
	verr := `volume config: get configmap kube-system/meridian-config: configmaps "meridian-config" not found`
	snap := workloadSnapshot{VolumeError: verr, Containers: map[string]ctrState{
		"install-cni": {Init: true, Image: meridianImage, Waiting: reasonPodInitializing},
		"meridiand":   {Image: meridianImage},
	}}
	st := computePodStatus(pod, workloadObs(snap, t0))
	if st.Phase != corev1.PodPending {
		t.Errorf("phase %s", st.Phase)
	}
	ic, mc := st.InitContainerStatuses[0], st.ContainerStatuses[0]
	if ic.State.Waiting == nil || ic.State.Waiting.Reason != reasonPodInitializing || ic.State.Waiting.Message != "volumes: "+verr {
		t.Errorf("install-cni waiting %+v", ic.State)
	}
	if mc.State.Waiting == nil || mc.State.Waiting.Reason != reasonContainerCreating || mc.State.Waiting.Message != "volumes: "+verr {
		t.Errorf("meridiand waiting %+v", mc.State)
	}
	// A container's own message wins over the volume error.
	snap.Containers["meridiand"] = ctrState{Image: meridianImage, Waiting: "CreateContainerConfigError", Message: `configmap "x" not found`}
	st = computePodStatus(pod, workloadObs(snap, t0))
	if w := st.ContainerStatuses[0].State.Waiting; w == nil || w.Reason != "CreateContainerConfigError" || w.Message != `configmap "x" not found` {
		t.Errorf("own message: %+v", w)
	}
	// A long error is cut to maxConditionMessage.
	snap.VolumeError = strings.Repeat("x", 3*maxConditionMessage)
	snap.Containers["meridiand"] = ctrState{Image: meridianImage}
	st = computePodStatus(pod, workloadObs(snap, t0))
	if w := st.ContainerStatuses[0].State.Waiting; w == nil || len(w.Message) != maxConditionMessage {
		t.Errorf("long volume error: %d bytes", len(w.Message))
	}
	// Once the volumes are there, the message goes.
	snap.VolumeError = ""
	st = computePodStatus(pod, workloadObs(snap, t0))
	if w := st.ContainerStatuses[0].State.Waiting; w == nil || w.Reason != reasonContainerCreating || w.Message != "" {
		t.Errorf("after volumes: %+v", w)
	}
}

// Containers that run are not reported running before the sandbox is.
func TestComputePodStatusWorkloadSandboxNotReady(t *testing.T) {
	pod := workloadPod()
	snap := workloadSnapshot{InitDone: true, Containers: map[string]ctrState{"install-cni": installDone(), "meridiand": meridiandRunning(true)}}
	obs := workloadObs(snap, t0)
	obs.SandboxReady = false
	st := computePodStatus(pod, obs)
	if st.Phase != corev1.PodPending || cond(st, corev1.PodReady).Status != corev1.ConditionFalse ||
		cond(st, corev1.PodReadyToStartContainers).Status != corev1.ConditionFalse {
		t.Errorf("phase %s ready %+v", st.Phase, cond(st, corev1.PodReady))
	}
	if st.PodIP != "" {
		t.Errorf("pod IP %q before the sandbox", st.PodIP)
	}
}

// A pod without containers (not valid in the API, but the agent must not
// call it running) stays Pending.
func TestComputePodStatusWorkloadNoContainers(t *testing.T) {
	pod := workloadPod()
	pod.Spec.Containers = nil
	pod.Spec.InitContainers = nil
	st := computePodStatus(pod, workloadObs(workloadSnapshot{InitDone: true, Containers: map[string]ctrState{}}, t0))
	if st.Phase != corev1.PodPending || cond(st, corev1.PodReady).Status != corev1.ConditionFalse {
		t.Errorf("phase %s ready %+v", st.Phase, cond(st, corev1.PodReady))
	}
}
