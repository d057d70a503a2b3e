package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// clusterState is what the cluster-wide checks read from the Kubernetes
// API: the daemon only knows what it programmed, not what was asked for
// (a selector matching nothing programs the same as no pods at all).
type clusterState struct {
	Pods     []corev1.Pod
	Services []corev1.Service
}

// readCluster lists pods and Services through the kubeconfig (--kubeconfig,
// else $KUBECONFIG, ~/.kube/config or in-cluster).
func readCluster(ctx context.Context, kubeconfig string) (*clusterState, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	cfg.UserAgent = "meridianctl"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create Kubernetes client: %w", err)
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	svcs, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	return &clusterState{Pods: pods.Items, Services: svcs.Items}, nil
}

func podRunningReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// clusterChecks judges what the API server holds. node is the node the
// daemon runs on, for kube-proxy.
func clusterChecks(st *clusterState, node string) []finding {
	var fs []finding
	add := func(sev, check, subject, msg, fix string) {
		fs = append(fs, finding{Severity: sev, Check: check, Subject: subject, Message: msg, Fix: fix})
	}

	// CoreDNS pods, by the label kubeadm, the chart and the lab give them.
	dnsSel := labels.SelectorFromSet(labels.Set{"k8s-app": "kube-dns"})
	var dnsPods, dnsReady []string
	for i := range st.Pods {
		p := &st.Pods[i]
		if p.Namespace != dnsNamespace || !dnsSel.Matches(labels.Set(p.Labels)) {
			continue
		}
		dnsPods = append(dnsPods, p.Name)
		if podRunningReady(p) {
			dnsReady = append(dnsReady, p.Name)
		}
	}
	switch {
	case len(dnsPods) == 0:
		add(sevError, "dns", dnsNamespace+"/coredns", "no CoreDNS pod (label k8s-app=kube-dns in kube-system): names do not resolve in any pod",
			"install CoreDNS or scale it up: kubectl -n kube-system get deployment coredns")
	case len(dnsReady) == 0:
		add(sevError, "dns", dnsNamespace+"/coredns", fmt.Sprintf("none of the CoreDNS pods (%s) is running and ready", strings.Join(dnsPods, ", ")),
			"kubectl -n kube-system describe pods -l k8s-app=kube-dns; kubectl -n kube-system logs -l k8s-app=kube-dns")
	}

	// kube-proxy beside Meridian: both rewrite Service traffic, in
	// different tables, and the first to match wins packet by packet.
	for i := range st.Pods {
		p := &st.Pods[i]
		if p.Namespace != "kube-system" || (p.Labels["k8s-app"] != "kube-proxy" && !strings.HasPrefix(p.Name, "kube-proxy-")) {
			continue
		}
		if p.Spec.NodeName != node || p.Status.Phase != corev1.PodRunning {
			continue
		}
		add(sevError, "kube-proxy", "kube-system/"+p.Name, "kube-proxy runs on "+node+" and programs Services too: its rules and Meridian's both NAT Service traffic",
			"remove kube-proxy (kubectl -n kube-system delete daemonset kube-proxy) and clean its rules on the node (kube-proxy --cleanup), or do not enable Meridian's Service NAT")
	}

	// Services whose selector matches nothing, and target ports no
	// selected pod declares.
	for i := range st.Services {
		s := &st.Services[i]
		if len(s.Spec.Selector) == 0 || s.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		id := s.Namespace + "/" + s.Name
		sel := labels.SelectorFromSet(s.Spec.Selector)
		var matched []*corev1.Pod
		for j := range st.Pods {
			p := &st.Pods[j]
			if p.Namespace == s.Namespace && sel.Matches(labels.Set(p.Labels)) && p.DeletionTimestamp == nil {
				matched = append(matched, p)
			}
		}
		if len(matched) == 0 {
			add(sevWarning, "services", id, "selector "+sel.String()+" matches no pod: the Service has no endpoints and connections to it are refused",
				fmt.Sprintf("compare the selector with the pods' labels: kubectl get pods -n %s --show-labels", s.Namespace))
			continue
		}
		for _, sp := range s.Spec.Ports {
			if declared(matched, sp) {
				continue
			}
			tp := sp.TargetPort.String()
			if tp == "0" || tp == "" {
				tp = fmt.Sprint(sp.Port)
			}
			add(sevWarning, "services", id, fmt.Sprintf("port %d/%s targets %s, which none of the %d selected pods declares: if nothing listens there, connections are refused", sp.Port, orTCP(sp.Protocol), tp, len(matched)),
				"check the Service's targetPort against the containers' ports (kubectl get service -o yaml, kubectl get pods -o yaml); `meridianctl doctor` on the endpoint's node probes the port")
		}
	}
	return fs
}

// declared reports whether any pod has a container port the Service port
// targets (by name for a named targetPort, else by number and protocol).
// A named port no pod has gives no endpoints. A number can listen without
// being declared, so it only counts as missing when the pods declare other
// ports of that protocol (and a miss is a warning).
func declared(pods []*corev1.Pod, sp corev1.ServicePort) bool {
	proto := corev1.Protocol(orTCP(sp.Protocol))
	if sp.TargetPort.StrVal == "" && !slices.ContainsFunc(pods, func(p *corev1.Pod) bool {
		return slices.ContainsFunc(p.Spec.Containers, func(c corev1.Container) bool {
			return slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return corev1.Protocol(orTCP(cp.Protocol)) == proto })
		})
	}) {
		return true
	}
	for _, p := range pods {
		for _, c := range p.Spec.Containers {
			if slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool {
				if corev1.Protocol(orTCP(cp.Protocol)) != proto {
					return false
				}
				if sp.TargetPort.StrVal != "" {
					return cp.Name == sp.TargetPort.StrVal
				}
				want := sp.TargetPort.IntVal
				if want == 0 {
					want = sp.Port
				}
				return cp.ContainerPort == want
			}) {
				return true
			}
		}
	}
	return false
}

func orTCP(p corev1.Protocol) string {
	if p == "" {
		return string(corev1.ProtocolTCP)
	}
	return string(p)
}
