package nodeagent

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestDesiredNodeStatus(t *testing.T) {
	facts := nodeFacts{Name: "node-1", IP: netip.MustParseAddr("198.18.0.11"), KubeletVersion: "v1.37.2", KernelVersion: "6.18.0"}
	old := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	cur := corev1.NodeStatus{Conditions: []corev1.NodeCondition{
		// meridiand's condition must survive every heartbeat untouched.
		{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: "MeridianRoutesInstalled", LastTransitionTime: old, LastHeartbeatTime: old},
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: reasonKubeletReady, LastTransitionTime: old, LastHeartbeatTime: old},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionUnknown, LastTransitionTime: old},
	}}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	st := desiredNodeStatus(cur, facts, now)

	byType := map[corev1.NodeConditionType]corev1.NodeCondition{}
	for _, c := range st.Conditions {
		if _, dup := byType[c.Type]; dup {
			t.Errorf("condition %s twice", c.Type)
		}
		byType[c.Type] = c
	}
	if len(byType) != 5 {
		t.Errorf("%d conditions, want 5: %+v", len(byType), st.Conditions)
	}
	if got := byType[corev1.NodeNetworkUnavailable]; got != cur.Conditions[0] {
		t.Errorf("NetworkUnavailable changed: %+v", got)
	}
	ready := byType[corev1.NodeReady]
	if ready.Status != corev1.ConditionTrue || !ready.LastHeartbeatTime.Time.Equal(now) || !ready.LastTransitionTime.Equal(&old) {
		t.Errorf("Ready: %+v", ready)
	}
	disk := byType[corev1.NodeDiskPressure]
	if disk.Status != corev1.ConditionFalse || !disk.LastTransitionTime.Time.Equal(now) || disk.Reason != reasonNoDiskPressure {
		t.Errorf("DiskPressure: %+v", disk)
	}
	for _, ct := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodePIDPressure} {
		if c := byType[ct]; c.Status != corev1.ConditionFalse || !c.LastHeartbeatTime.Time.Equal(now) {
			t.Errorf("%s: %+v", ct, c)
		}
	}
	if len(st.Addresses) != 2 || st.Addresses[0] != (corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "198.18.0.11"}) ||
		st.Addresses[1] != (corev1.NodeAddress{Type: corev1.NodeHostName, Address: "node-1"}) {
		t.Errorf("addresses %+v", st.Addresses)
	}
	for name, want := range map[corev1.ResourceName]string{corev1.ResourceCPU: "4", corev1.ResourceMemory: "8Gi", corev1.ResourcePods: "110"} {
		for _, rl := range []corev1.ResourceList{st.Capacity, st.Allocatable} {
			if q := rl[name]; q.Cmp(resource.MustParse(want)) != 0 {
				t.Errorf("%s = %s, want %s", name, q.String(), want)
			}
		}
	}
	if st.NodeInfo.KubeletVersion != "v1.37.2" || st.NodeInfo.OperatingSystem != "linux" || st.NodeInfo.KernelVersion != "6.18.0" {
		t.Errorf("nodeInfo %+v", st.NodeInfo)
	}
	if len(cur.Conditions) != 3 || cur.Conditions[2].Status != corev1.ConditionUnknown {
		t.Error("desiredNodeStatus modified its input")
	}
}
