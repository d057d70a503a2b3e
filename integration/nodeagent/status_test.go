package nodeagent

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	cnitypes "github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func TestPodNetnsName(t *testing.T) {
	for uid, want := range map[string]string{
		"3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b9c": "mlab-pod-3f2b8c1e9a4d",
		"abc":                                  "mlab-pod-abc",
		"0123456789ab-cdef":                    "mlab-pod-0123456789ab",
	} {
		if got := PodNetnsName(types.UID(uid)); got != want {
			t.Errorf("PodNetnsName(%q) = %q, want %q", uid, got, want)
		}
	}
	// The name must fit IFNAMSIZ-free tools, and stay one path element.
	if n := PodNetnsName("3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b9c"); len(n) != 21 || strings.Contains(n, "/") {
		t.Errorf("unexpected name shape %q", n)
	}
}

func cniResult(t *testing.T, json string) cnitypes.Result {
	t.Helper()
	r, err := types100.NewResult([]byte(json))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPodIPsFromResult(t *testing.T) {
	// A routed-veth result: the host side has no address of the pod's; the
	// pod side has a v4 and a v6 address, plus a second v4 that the
	// kubelet would ignore.
	res := cniResult(t, `{"cniVersion":"1.0.0",
		"interfaces":[{"name":"mer1234","mac":"aa:bb:cc:dd:ee:ff"},{"name":"eth0","sandbox":"/var/run/netns/x"}],
		"ips":[
			{"interface":0,"address":"169.254.1.1/32"},
			{"interface":1,"address":"10.244.1.5/24","gateway":"10.244.1.1"},
			{"interface":1,"address":"10.244.1.6/24"},
			{"interface":1,"address":"fd00::5/64"}]}`)
	got, err := podIPsFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00::5")}
	if !slices.Equal(got, want) {
		t.Errorf("podIPsFromResult = %v, want %v", got, want)
	}

	// Results of an older spec version are converted first.
	old := &types100.Result{CNIVersion: "1.0.0", IPs: []*types100.IPConfig{{Address: net.IPNet{IP: net.ParseIP("10.244.2.7"), Mask: net.CIDRMask(32, 32)}}}}
	v04, err := old.GetAsVersion("0.4.0")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := podIPsFromResult(v04); err != nil || !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.244.2.7")}) {
		t.Errorf("0.4.0 result: %v %v", got, err)
	}

	if _, err := podIPsFromResult(cniResult(t, `{"cniVersion":"1.0.0"}`)); err == nil {
		t.Error("result without addresses accepted")
	}
}

func testPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-7d9f-abcde", Namespace: "default", UID: "3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b9c"},
		Spec: corev1.PodSpec{
			NodeName:   "node-1",
			Containers: []corev1.Container{{Name: "web", Image: "nginx:1.27"}, {Name: "metrics", Image: "prom/exporter"}},
		},
		Status: corev1.PodStatus{
			Phase:    corev1.PodPending,
			QOSClass: corev1.PodQOSBestEffort,
			Conditions: []corev1.PodCondition{{
				Type: corev1.PodScheduled, Status: corev1.ConditionTrue,
				LastTransitionTime: metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
			}},
		},
	}
}

func cond(st corev1.PodStatus, t corev1.PodConditionType) corev1.PodCondition {
	if c := findCondition(st.Conditions, t); c != nil {
		return *c
	}
	return corev1.PodCondition{}
}

var (
	t0     = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	nodeIP = netip.MustParseAddr("198.18.0.11")
)

func TestComputePodStatusSandboxFailure(t *testing.T) {
	pod := testPod()
	st := computePodStatus(pod, podObservation{
		NodeIP: nodeIP, SandboxError: "cni add: plugin type=\"meridian-cni\" failed (add): no pod CIDR for node node-1", Now: t0,
	})
	if st.Phase != corev1.PodPending {
		t.Errorf("phase %s, want Pending", st.Phase)
	}
	if st.PodIP != "" || len(st.PodIPs) != 0 {
		t.Errorf("pod IP %q %v before sandbox", st.PodIP, st.PodIPs)
	}
	if st.HostIP != "198.18.0.11" || len(st.HostIPs) != 1 || st.HostIPs[0].IP != "198.18.0.11" {
		t.Errorf("host IPs %q %v", st.HostIP, st.HostIPs)
	}
	c := cond(st, corev1.PodReadyToStartContainers)
	if c.Status != corev1.ConditionFalse || c.Reason != reasonFailedCreatePodSandBox || !strings.Contains(c.Message, "no pod CIDR") {
		t.Errorf("PodReadyToStartContainers = %+v", c)
	}
	for _, ct := range []corev1.PodConditionType{corev1.PodReady, corev1.ContainersReady} {
		if c := cond(st, ct); c.Status != corev1.ConditionFalse || c.Reason != reasonContainersNotReady ||
			c.Message != "containers with unready status: [web metrics]" {
			t.Errorf("%s = %+v", ct, c)
		}
	}
	if len(st.ContainerStatuses) != 2 {
		t.Fatalf("%d container statuses", len(st.ContainerStatuses))
	}
	for _, cs := range st.ContainerStatuses {
		if cs.Ready || cs.State.Waiting == nil || cs.State.Waiting.Reason != reasonContainerCreating || cs.ContainerID != "" {
			t.Errorf("container %s: %+v", cs.Name, cs)
		}
	}
	if st.QOSClass != corev1.PodQOSBestEffort {
		t.Errorf("qosClass lost: %q", st.QOSClass)
	}
}

func TestComputePodStatusRunning(t *testing.T) {
	pod := testPod()
	ips := []netip.Addr{netip.MustParseAddr("10.244.1.5")}
	obs := podObservation{NodeIP: nodeIP, PodIPs: ips, SandboxReady: true, Running: true, StartedAt: t0, Now: t0}
	st := computePodStatus(pod, obs)
	if st.Phase != corev1.PodRunning || st.PodIP != "10.244.1.5" || len(st.PodIPs) != 1 || st.PodIPs[0].IP != "10.244.1.5" {
		t.Fatalf("phase %s podIP %q podIPs %v", st.Phase, st.PodIP, st.PodIPs)
	}
	if st.StartTime == nil || !st.StartTime.Time.Equal(t0) {
		t.Errorf("startTime %v", st.StartTime)
	}
	for _, ct := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		if c := cond(st, ct); c.Status != corev1.ConditionTrue {
			t.Errorf("%s = %+v, want True", ct, c)
		}
	}
	// The scheduler's condition keeps its own time.
	if c := cond(st, corev1.PodScheduled); c.LastTransitionTime.Year() != 2026 || c.LastTransitionTime.Month() != 1 {
		t.Errorf("PodScheduled transition time rewritten: %v", c.LastTransitionTime)
	}
	web := st.ContainerStatuses[0]
	if !web.Ready || web.Started == nil || !*web.Started || web.State.Running == nil || !web.State.Running.StartedAt.Time.Equal(t0) ||
		web.RestartCount != 0 || web.Image != "nginx:1.27" ||
		web.ContainerID != "meridian-lab://3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b9c-web" ||
		!strings.HasPrefix(web.ImageID, "nginx@sha256:") || len(web.ImageID) != len("nginx@sha256:")+64 {
		t.Errorf("web status %+v", web)
	}

	// Computing again later from the written status changes nothing: no
	// API write for a pod at rest, and no new transition times.
	pod.Status = st
	again := computePodStatus(pod, podObservation{NodeIP: nodeIP, PodIPs: ips, SandboxReady: true, Running: true,
		StartedAt: t0.Add(time.Hour), Now: t0.Add(time.Hour)})
	if !equality.Semantic.DeepEqual(st, again) {
		t.Errorf("status not stable:\n%+v\n%+v", st, again)
	}
}

func TestComputePodStatusTransitions(t *testing.T) {
	pod := testPod()
	pending := computePodStatus(pod, podObservation{NodeIP: nodeIP, SandboxError: "boom", Now: t0})
	pod.Status = pending
	t1 := t0.Add(5 * time.Second)
	running := computePodStatus(pod, podObservation{NodeIP: nodeIP, PodIPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")},
		SandboxReady: true, Running: true, StartedAt: t1, Now: t1})
	if c := cond(running, corev1.PodReady); c.Status != corev1.ConditionTrue || !c.LastTransitionTime.Time.Equal(t1) || c.Reason != "" || c.Message != "" {
		t.Errorf("Ready after transition: %+v", c)
	}
	if c := cond(running, corev1.PodReadyToStartContainers); c.Reason != "" || c.Message != "" {
		t.Errorf("sandbox failure kept after success: %+v", c)
	}
	if !running.StartTime.Time.Equal(t0) {
		t.Errorf("startTime moved: %v", running.StartTime)
	}

	// Sandbox up but servers not yet listening: not ready, still pending.
	pod = testPod()
	st := computePodStatus(pod, podObservation{NodeIP: nodeIP, PodIPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, SandboxReady: true, Now: t0})
	if st.Phase != corev1.PodPending || cond(st, corev1.PodReady).Status != corev1.ConditionFalse || st.PodIP != "10.244.1.5" {
		t.Errorf("sandbox without servers: phase %s ready %+v ip %q", st.Phase, cond(st, corev1.PodReady), st.PodIP)
	}
}

// A running pod whose readiness probe fails is Running but not Ready, and
// becomes Ready when the probe passes.
func TestComputePodStatusReadinessProbe(t *testing.T) {
	pod := testPod()
	obs := podObservation{NodeIP: nodeIP, PodIPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, SandboxReady: true, Running: true,
		ReadinessFailing: true, StartedAt: t0, Now: t0}
	st := computePodStatus(pod, obs)
	if st.Phase != corev1.PodRunning || cond(st, corev1.PodReady).Status != corev1.ConditionFalse ||
		cond(st, corev1.ContainersReady).Status != corev1.ConditionFalse {
		t.Errorf("failing probe: phase %s ready %+v", st.Phase, cond(st, corev1.PodReady))
	}
	for _, cs := range st.ContainerStatuses {
		if cs.Ready || cs.State.Running == nil {
			t.Errorf("container with failing probe: %+v", cs)
		}
	}
	pod.Status = st
	obs.ReadinessFailing = false
	obs.Now = t0.Add(time.Minute)
	st = computePodStatus(pod, obs)
	if c := cond(st, corev1.PodReady); c.Status != corev1.ConditionTrue || !c.LastTransitionTime.Time.Equal(obs.Now) {
		t.Errorf("passing probe: ready %+v", c)
	}
}

func TestComputePodStatusReadinessGateAndInitContainers(t *testing.T) {
	pod := testPod()
	always := corev1.ContainerRestartPolicyAlways
	pod.Spec.InitContainers = []corev1.Container{{Name: "setup", Image: "busybox"}, {Name: "proxy", Image: "envoy", RestartPolicy: &always}}
	pod.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: "example.com/lb-ready"}}
	obs := podObservation{NodeIP: nodeIP, PodIPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, SandboxReady: true, Running: true, StartedAt: t0, Now: t0}

	st := computePodStatus(pod, obs)
	if c := cond(st, corev1.PodReady); c.Status != corev1.ConditionFalse || c.Reason != reasonReadinessGatesNotReady {
		t.Errorf("Ready with unmet gate: %+v", c)
	}
	if c := cond(st, corev1.ContainersReady); c.Status != corev1.ConditionTrue {
		t.Errorf("ContainersReady: %+v", c)
	}
	setup, proxy := st.InitContainerStatuses[0], st.InitContainerStatuses[1]
	if setup.State.Terminated == nil || setup.State.Terminated.ExitCode != 0 || setup.State.Terminated.Reason != reasonCompleted || !setup.Ready {
		t.Errorf("init container: %+v", setup)
	}
	if proxy.State.Running == nil || !proxy.Ready {
		t.Errorf("sidecar: %+v", proxy)
	}

	pod.Status = st
	pod.Status.Conditions = append(pod.Status.Conditions, corev1.PodCondition{Type: "example.com/lb-ready", Status: corev1.ConditionTrue})
	st = computePodStatus(pod, obs)
	if c := cond(st, corev1.PodReady); c.Status != corev1.ConditionTrue {
		t.Errorf("Ready with met gate: %+v", c)
	}
}

func TestComputePodStatusHostNetwork(t *testing.T) {
	pod := testPod()
	pod.Spec.HostNetwork = true
	st := computePodStatus(pod, podObservation{NodeIP: nodeIP, PodIPs: []netip.Addr{nodeIP}, SandboxReady: true, Running: true, StartedAt: t0, Now: t0})
	if st.PodIP != "198.18.0.11" || st.Phase != corev1.PodRunning || cond(st, corev1.PodReady).Status != corev1.ConditionTrue {
		t.Errorf("hostNetwork pod: ip %q phase %s", st.PodIP, st.Phase)
	}
}

func TestImageID(t *testing.T) {
	if got := imageID("registry.local:5000/team/app:v2"); !strings.HasPrefix(got, "registry.local:5000/team/app@sha256:") {
		t.Errorf("imageID kept the tag or lost the registry port: %q", got)
	}
	pinned := "nginx@sha256:" + strings.Repeat("a", 64)
	if got := imageID(pinned); got != pinned {
		t.Errorf("pinned image rewritten: %q", got)
	}
	if imageID("nginx") != imageID("nginx") || imageID("nginx") == imageID("httpd") {
		t.Error("imageID not a stable function of the image")
	}
}
