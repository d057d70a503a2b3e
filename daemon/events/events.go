// Package events reports what happens on a node (invalid configuration,
// sessions going up and down) as Kubernetes Events on its Node object, where
// `kubectl describe node` shows them.
package events

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// Component is the reporting component events carry.
const Component = "meridiand"

// NodeRecorder records events about one Node.
type NodeRecorder struct {
	rec  record.EventRecorder
	node *corev1.ObjectReference
}

// NewNodeRecorder starts an event broadcaster writing to the API server; it
// stops when ctx is done. The broadcaster aggregates repeats, so a problem
// that persists across syncs becomes one event with a count.
func NewNodeRecorder(ctx context.Context, client kubernetes.Interface, nodeName string) *NodeRecorder {
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	go func() {
		<-ctx.Done()
		b.Shutdown()
	}()
	return &NodeRecorder{
		rec: b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: Component, Host: nodeName}),
		// The kubelet refers to its Node with the name as UID; doing the
		// same groups our events with its own in `kubectl describe node`.
		node: &corev1.ObjectReference{Kind: "Node", Name: nodeName, UID: types.UID(nodeName)},
	}
}

// Warning records a Warning event on the node.
func (r *NodeRecorder) Warning(reason, message string) {
	r.rec.Event(r.node, corev1.EventTypeWarning, reason, message)
}

// Normal records a Normal event on the node.
func (r *NodeRecorder) Normal(reason, message string) {
	r.rec.Event(r.node, corev1.EventTypeNormal, reason, message)
}
