package policy

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Reference decides a packet directly from the API objects, cluster-wide:
// the egress policies of the source pod and the ingress policies of the
// destination pod, wherever they run (s.Node is ignored). It shares no code
// with Compile on purpose: it is the specification the compiler is fuzzed
// against, written the slow and obvious way. The conjunction over all nodes
// of Compile(snapshot for node).Evaluate(p) must equal it.
//
// It follows the same conventions as Compile where the API leaves a choice:
// host-network and finished pods are not subject to policy and are matched
// by ipBlocks only; a policy that fails validation still isolates the pods
// it selects (every pod of its namespace when its own podSelector is
// invalid; both directions when it names an unknown policy type) but allows
// nothing; a pod may always reach itself.
func Reference(s Snapshot, p Packet) bool {
	src, dst := refPodByIP(s, p.Src), refPodByIP(s, p.Dst)
	if src != nil && src == dst {
		return true // a pod reaching itself never leaves its netns
	}
	if src != nil && !refDirectionAllows(s, src, networkingv1.PolicyTypeEgress, p) {
		return false
	}
	if dst != nil && !refDirectionAllows(s, dst, networkingv1.PolicyTypeIngress, p) {
		return false
	}
	return true
}

// refPodByIP is the pod subject to policy that owns a, if any.
func refPodByIP(s Snapshot, a netip.Addr) *corev1.Pod {
	a = a.Unmap()
	for _, pod := range s.Pods {
		if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		ips := []string{pod.Status.PodIP}
		for _, ip := range pod.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		for _, ip := range ips {
			if b, err := netip.ParseAddr(ip); err == nil && b.Unmap() == a {
				return pod
			}
		}
	}
	return nil
}

func refDirectionAllows(s Snapshot, pod *corev1.Pod, dir networkingv1.PolicyType, p Packet) bool {
	isolated := false
	for _, pol := range s.Policies {
		if pol.Namespace != pod.Namespace || !refHasType(pol, dir) {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&pol.Spec.PodSelector)
		if err == nil && !sel.Matches(labels.Set(pod.Labels)) {
			continue
		}
		isolated = true
		if !refValid(pol) {
			continue
		}
		if dir == networkingv1.PolicyTypeIngress {
			for _, r := range pol.Spec.Ingress {
				if refPeersMatch(s, pol.Namespace, r.From, p.Src) && refPortsMatch(s, r.Ports, pod, p) {
					return true
				}
			}
		} else {
			for _, r := range pol.Spec.Egress {
				if refPeersMatch(s, pol.Namespace, r.To, p.Dst) && refPortsMatch(s, r.Ports, nil, p) {
					return true
				}
			}
		}
	}
	return !isolated
}

func refHasType(pol *networkingv1.NetworkPolicy, dir networkingv1.PolicyType) bool {
	if len(pol.Spec.PolicyTypes) == 0 {
		return dir == networkingv1.PolicyTypeIngress || len(pol.Spec.Egress) > 0
	}
	for _, t := range pol.Spec.PolicyTypes {
		if t == dir || (t != networkingv1.PolicyTypeIngress && t != networkingv1.PolicyTypeEgress) {
			return true
		}
	}
	return false
}

// refValid is whether a policy passes the checks the compiler relies on,
// for the directions it enforces.
func refValid(pol *networkingv1.NetworkPolicy) bool {
	if _, err := metav1.LabelSelectorAsSelector(&pol.Spec.PodSelector); err != nil {
		return false
	}
	for _, t := range pol.Spec.PolicyTypes {
		if t != networkingv1.PolicyTypeIngress && t != networkingv1.PolicyTypeEgress {
			return false
		}
	}
	var peers []networkingv1.NetworkPolicyPeer
	var ports []networkingv1.NetworkPolicyPort
	if refHasType(pol, networkingv1.PolicyTypeIngress) {
		for _, r := range pol.Spec.Ingress {
			peers = append(peers, r.From...)
			ports = append(ports, r.Ports...)
		}
	}
	if refHasType(pol, networkingv1.PolicyTypeEgress) {
		for _, r := range pol.Spec.Egress {
			peers = append(peers, r.To...)
			ports = append(ports, r.Ports...)
		}
	}
	for _, peer := range peers {
		if peer.IPBlock != nil {
			if peer.PodSelector != nil || peer.NamespaceSelector != nil {
				return false
			}
			cidr, err := netip.ParsePrefix(peer.IPBlock.CIDR)
			if err != nil {
				return false
			}
			for _, e := range peer.IPBlock.Except {
				ex, err := netip.ParsePrefix(e)
				if err != nil || ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() <= cidr.Bits() || !cidr.Masked().Contains(ex.Addr()) {
					return false
				}
			}
			continue
		}
		if peer.PodSelector == nil && peer.NamespaceSelector == nil {
			return false
		}
		for _, ls := range []*metav1.LabelSelector{peer.PodSelector, peer.NamespaceSelector} {
			if _, err := metav1.LabelSelectorAsSelector(ls); err != nil {
				return false
			}
		}
	}
	for _, pt := range ports {
		if pt.Protocol != nil && *pt.Protocol != corev1.ProtocolTCP && *pt.Protocol != corev1.ProtocolUDP && *pt.Protocol != corev1.ProtocolSCTP {
			return false
		}
		switch {
		case pt.Port == nil:
			if pt.EndPort != nil {
				return false
			}
		case pt.Port.Type == intstr.String:
			if pt.Port.StrVal == "" || pt.EndPort != nil {
				return false
			}
		default:
			if pt.Port.IntVal < 1 || pt.Port.IntVal > 65535 {
				return false
			}
			if pt.EndPort != nil && (*pt.EndPort < pt.Port.IntVal || *pt.EndPort > 65535) {
				return false
			}
		}
	}
	return true
}

func refPeersMatch(s Snapshot, policyNS string, peers []networkingv1.NetworkPolicyPeer, a netip.Addr) bool {
	if len(peers) == 0 {
		return true
	}
	a = a.Unmap()
	for _, peer := range peers {
		if peer.IPBlock != nil {
			cidr, _ := netip.ParsePrefix(peer.IPBlock.CIDR)
			if !cidr.Masked().Contains(a) {
				continue
			}
			excluded := false
			for _, e := range peer.IPBlock.Except {
				ex, _ := netip.ParsePrefix(e)
				excluded = excluded || ex.Masked().Contains(a)
			}
			if !excluded {
				return true
			}
			continue
		}
		pod := refPodByIP(s, a)
		if pod == nil {
			continue
		}
		if peer.NamespaceSelector == nil {
			if pod.Namespace != policyNS {
				continue
			}
		} else {
			nsSel, _ := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
			var nsLabels map[string]string
			for _, ns := range s.Namespaces {
				if ns.Name == pod.Namespace {
					nsLabels = ns.Labels
				}
			}
			if !nsSel.Matches(labels.Set(nsLabels)) {
				continue
			}
		}
		if peer.PodSelector != nil {
			podSel, _ := metav1.LabelSelectorAsSelector(peer.PodSelector)
			if !podSel.Matches(labels.Set(pod.Labels)) {
				continue
			}
		}
		return true
	}
	return false
}

// refPortsMatch checks the destination port; a named port is looked up on
// target (ingress: the selected pod) or else on the destination pod.
func refPortsMatch(s Snapshot, ports []networkingv1.NetworkPolicyPort, target *corev1.Pod, p Packet) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pt := range ports {
		proto := corev1.ProtocolTCP
		if pt.Protocol != nil {
			proto = *pt.Protocol
		}
		if proto != p.Protocol {
			continue
		}
		switch {
		case pt.Port == nil:
			return true
		case pt.Port.Type == intstr.Int:
			end := pt.Port.IntVal
			if pt.EndPort != nil {
				end = *pt.EndPort
			}
			if int32(p.DstPort) >= pt.Port.IntVal && int32(p.DstPort) <= end {
				return true
			}
		default:
			pod := target
			if pod == nil {
				pod = refPodByIP(s, p.Dst)
			}
			if pod == nil {
				continue
			}
			for _, ctr := range pod.Spec.Containers {
				for _, cp := range ctr.Ports {
					cproto := cp.Protocol
					if cproto == "" {
						cproto = corev1.ProtocolTCP
					}
					if cp.Name == pt.Port.StrVal && cproto == proto && cp.ContainerPort == int32(p.DstPort) && p.DstPort != 0 {
						return true
					}
				}
			}
		}
	}
	return false
}
