package nodeagent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

const (
	// heartbeatInterval is kubelet's nodeStatusUpdateFrequency and lease
	// renew interval; the node-lifecycle controller's grace period (40 s)
	// allows three missed beats.
	heartbeatInterval = 10 * time.Second
	// leaseDurationSeconds is kubelet's default nodeLeaseDurationSeconds.
	leaseDurationSeconds = 40
	nodeLeaseNamespace   = "kube-node-lease"

	containerRuntimeVersion = "meridian-lab://0.1.0"
)

// Kubelet's reasons and messages for the node conditions it owns.
const (
	reasonKubeletReady        = "KubeletReady"
	reasonSufficientMemory    = "KubeletHasSufficientMemory"
	reasonNoDiskPressure      = "KubeletHasNoDiskPressure"
	reasonSufficientPID       = "KubeletHasSufficientPID"
	messageKubeletReady       = "kubelet is posting ready status"
	messageSufficientMemory   = "kubelet has sufficient memory available"
	messageNoDiskPressure     = "kubelet has no disk pressure"
	messageSufficientPID      = "kubelet has sufficient PID available"
	labelHostname             = "kubernetes.io/hostname"
	labelOS                   = "kubernetes.io/os"
	labelArch                 = "kubernetes.io/arch"
	nodeCapacityCPU           = "4"
	nodeCapacityMemory        = "8Gi"
	nodeCapacityPods          = "110"
	nodeOperatingSystem       = "linux"
	nodeOSImage               = "Meridian lab node"
	nodeInfoKernelVersionFile = "/proc/sys/kernel/osrelease"
)

// nodeLabels are the well-known labels kubelet puts on its Node.
func nodeLabels(name string) map[string]string {
	return map[string]string{
		labelHostname: name,
		labelOS:       nodeOperatingSystem,
		labelArch:     runtime.GOARCH,
	}
}

// nodeFacts are the inputs of desiredNodeStatus that do not change while
// the agent runs.
type nodeFacts struct {
	Name           string
	IP             netip.Addr
	KubeletVersion string
	KernelVersion  string
}

// desiredNodeStatus is cur with the parts kubelet owns filled in:
// addresses, capacity, node info and the Ready and pressure conditions,
// heartbeat stamped now. Conditions it does not own (NetworkUnavailable,
// which meridiand sets) are left as they are.
func desiredNodeStatus(cur corev1.NodeStatus, f nodeFacts, now time.Time) corev1.NodeStatus {
	st := *cur.DeepCopy()
	st.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: f.IP.String()},
		{Type: corev1.NodeHostName, Address: f.Name},
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(nodeCapacityCPU),
		corev1.ResourceMemory: resource.MustParse(nodeCapacityMemory),
		corev1.ResourcePods:   resource.MustParse(nodeCapacityPods),
	}
	st.Capacity = res
	st.Allocatable = res.DeepCopy()
	st.NodeInfo.KubeletVersion = f.KubeletVersion
	st.NodeInfo.OperatingSystem = nodeOperatingSystem
	st.NodeInfo.Architecture = runtime.GOARCH
	st.NodeInfo.OSImage = nodeOSImage
	st.NodeInfo.KernelVersion = f.KernelVersion
	st.NodeInfo.ContainerRuntimeVersion = containerRuntimeVersion

	t := metav1.NewTime(now)
	for _, c := range []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: reasonKubeletReady, Message: messageKubeletReady},
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: reasonSufficientMemory, Message: messageSufficientMemory},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: reasonNoDiskPressure, Message: messageNoDiskPressure},
		{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: reasonSufficientPID, Message: messageSufficientPID},
	} {
		c.LastHeartbeatTime = t
		c.LastTransitionTime = t
		found := false
		for i := range st.Conditions {
			if st.Conditions[i].Type != c.Type {
				continue
			}
			if st.Conditions[i].Status == c.Status {
				c.LastTransitionTime = st.Conditions[i].LastTransitionTime
			}
			st.Conditions[i] = c
			found = true
		}
		if !found {
			st.Conditions = append(st.Conditions, c)
		}
	}
	return st
}

// nodeHeart registers the Node and keeps it alive: status heartbeats and
// Lease renewals every heartbeatInterval.
type nodeHeart struct {
	client kubernetes.Interface
	facts  nodeFacts
	log    *slog.Logger
	now    func() time.Time
}

// register creates the Node, or adds kubelet's labels to an existing one
// (the spec, with the controller manager's podCIDR, is left alone), then
// posts the first status and lease.
func (h *nodeHeart) register(ctx context.Context) error {
	nodes := h.client.CoreV1().Nodes()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := nodes.Get(ctx, h.facts.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			n = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: h.facts.Name, Labels: nodeLabels(h.facts.Name)}}
			_, err = nodes.Create(ctx, n, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("nodes"), h.facts.Name, err)
			}
			return err
		}
		if err != nil {
			return err
		}
		changed := false
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		for k, v := range nodeLabels(h.facts.Name) {
			if n.Labels[k] != v {
				n.Labels[k] = v
				changed = true
			}
		}
		if !changed {
			return nil
		}
		_, err = nodes.Update(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("register node %s: %w", h.facts.Name, err)
	}
	return h.beat(ctx)
}

// beat posts one status heartbeat and renews the lease.
func (h *nodeHeart) beat(ctx context.Context) error {
	if err := h.updateStatus(ctx); err != nil {
		return err
	}
	return h.renewLease(ctx)
}

func (h *nodeHeart) updateStatus(ctx context.Context) error {
	nodes := h.client.CoreV1().Nodes()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := nodes.Get(ctx, h.facts.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status = desiredNodeStatus(n.Status, h.facts, h.now())
		_, err = nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("update status of node %s: %w", h.facts.Name, err)
	}
	return nil
}

func (h *nodeHeart) renewLease(ctx context.Context) error {
	leases := h.client.CoordinationV1().Leases(nodeLeaseNamespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		now := metav1.NewMicroTime(h.now())
		l, err := leases.Get(ctx, h.facts.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: h.facts.Name, Namespace: nodeLeaseNamespace}}
			if err := h.setLeaseOwner(ctx, l); err != nil {
				return err
			}
			l.Spec = leaseSpec(h.facts.Name, now)
			_, err = leases.Create(ctx, l, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(coordinationv1.Resource("leases"), h.facts.Name, err)
			}
			return err
		}
		if err != nil {
			return err
		}
		if len(l.OwnerReferences) == 0 {
			if err := h.setLeaseOwner(ctx, l); err != nil {
				return err
			}
		}
		acquire := l.Spec.AcquireTime
		l.Spec = leaseSpec(h.facts.Name, now)
		if acquire != nil {
			l.Spec.AcquireTime = acquire
		}
		_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("renew lease of node %s: %w", h.facts.Name, err)
	}
	return nil
}

// setLeaseOwner makes the Node own its Lease, as kubelet does, so that
// deleting the Node garbage-collects the Lease.
func (h *nodeHeart) setLeaseOwner(ctx context.Context, l *coordinationv1.Lease) error {
	n, err := h.client.CoreV1().Nodes().Get(ctx, h.facts.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	l.OwnerReferences = []metav1.OwnerReference{{
		APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID,
	}}
	return nil
}

func leaseSpec(holder string, now metav1.MicroTime) coordinationv1.LeaseSpec {
	return coordinationv1.LeaseSpec{
		HolderIdentity:       new(holder),
		LeaseDurationSeconds: new(int32(leaseDurationSeconds)),
		AcquireTime:          &now,
		RenewTime:            &now,
	}
}

// run beats every heartbeatInterval until ctx ends. A failed beat is logged
// and the next one tried on schedule: the lifecycle controller tolerates
// a few missed beats, and the API server may be restarting.
func (h *nodeHeart) run(ctx context.Context) {
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := h.beat(ctx); err != nil && ctx.Err() == nil {
			h.log.Warn("node heartbeat failed", "err", err)
		}
	}
}
