package cluster

import (
	"encoding/json"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ConditionReason is the NetworkUnavailable reason Meridian sets, in the
// style of Calico's "CalicoIsUp" and Cilium's "CiliumIsUp".
const ConditionReason = "MeridianIsUp"

// NetworkAvailable reports whether the node already carries
// NetworkUnavailable=False set by Meridian, so the daemon patches the status
// only when something changes.
func NetworkAvailable(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			return c.Status == corev1.ConditionFalse && c.Reason == ConditionReason
		}
	}
	return false
}

// NetworkAvailablePatch is a strategic merge patch for nodes/status that
// sets NetworkUnavailable=False; conditions merge on their type, so the
// kubelet's own conditions are left alone.
func NetworkAvailablePatch(now time.Time) []byte {
	t := metav1.NewTime(now)
	patch := map[string]any{
		"status": map[string]any{
			"conditions": []corev1.NodeCondition{{
				Type:               corev1.NodeNetworkUnavailable,
				Status:             corev1.ConditionFalse,
				Reason:             ConditionReason,
				Message:            "Meridian installed this node's routes",
				LastTransitionTime: t,
				LastHeartbeatTime:  t,
			}},
		},
	}
	b, err := json.Marshal(patch)
	if err != nil {
		// Marshalling fixed types cannot fail; a panic here is a bug.
		panic(err)
	}
	return b
}
