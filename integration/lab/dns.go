package lab

import (
	"context"
	"errors"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/meridian-net/meridian/integration/nodeagent"
)

// Cluster DNS: CoreDNS as a Deployment in kube-system behind the kube-dns
// Service, as kubeadm installs it. The node agents run the real CoreDNS
// binary (bin/coredns) for these pods and point every pod's resolv.conf at
// DNSServiceIP.
const (
	DNSNamespace  = metav1.NamespaceSystem
	DNSDeployment = "coredns"
	DNSService    = "kube-dns"
	// DNSLabel is the pods' k8s-app label, as `kubectl -n kube-system get
	// pods -l k8s-app=kube-dns` expects.
	DNSLabel = "kube-dns"
	// CoreDNSImage names the image the node agents recognise as CoreDNS
	// (nodeagent runs bin/coredns for it; nothing is pulled).
	CoreDNSImage = "registry.k8s.io/coredns/coredns:v1.15.0"
	// dnsReplicas is kubeadm's count.
	dnsReplicas = 2
	// coreDNSReadyPort is the ready plugin's listener in the Corefile.
	coreDNSReadyPort = 8181
)

var (
	// DNSServiceIP is the kube-dns Service's ClusterIP: the node agents'
	// cluster DNS address.
	DNSServiceIP = nodeagent.DefaultClusterDNS
	// ClusterDomain is the cluster's DNS domain.
	ClusterDomain = nodeagent.DefaultClusterDomain
)

// corefile is kubeadm's, without forward: the lab has no upstream resolver
// to send names outside the cluster to, and never sends lab traffic out of
// the host, so such names fail (SERVFAIL) instead.
func corefile() string {
	return `.:53 {
    errors
    health :8080
    ready :8181
    kubernetes ` + ClusterDomain + ` in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    prometheus :9153
    loop
    cache 30
    loadbalance
}
`
}

func dnsLabels() map[string]string {
	return map[string]string{"k8s-app": DNSLabel, "app.kubernetes.io/managed-by": "meridian-lab"}
}

// dnsRules are CoreDNS's kubernetes plugin's reads.
func dnsRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
	}
}

// dnsObjects are the cluster DNS's API objects.
func dnsObjects() (*corev1.ServiceAccount, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding, *corev1.ConfigMap, *appsv1.Deployment, *corev1.Service) {
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: DNSNamespace, Labels: dnsLabels()}
	}
	sa := &corev1.ServiceAccount{ObjectMeta: meta(DNSDeployment)}
	roleMeta := metav1.ObjectMeta{Name: "system:coredns", Labels: dnsLabels()}
	role := &rbacv1.ClusterRole{ObjectMeta: roleMeta, Rules: dnsRules()}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: roleMeta,
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa.Name, Namespace: DNSNamespace}},
	}
	cm := &corev1.ConfigMap{ObjectMeta: meta(DNSDeployment), Data: map[string]string{"Corefile": corefile()}}
	selector := map[string]string{"k8s-app": DNSLabel}
	dep := &appsv1.Deployment{
		ObjectMeta: meta(DNSDeployment),
		Spec: appsv1.DeploymentSpec{
			Replicas: new(int32(dnsReplicas)),
			Selector: &metav1.LabelSelector{MatchLabels: selector},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: dnsLabels()},
				Spec: corev1.PodSpec{
					ServiceAccountName: sa.Name,
					// CoreDNS resolves through itself otherwise.
					DNSPolicy:         corev1.DNSDefault,
					PriorityClassName: "system-cluster-critical",
					Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
						PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
							Weight: 100,
							PodAffinityTerm: corev1.PodAffinityTerm{
								LabelSelector: &metav1.LabelSelector{MatchLabels: selector},
								TopologyKey:   corev1.LabelHostname,
							},
						}},
					}},
					Containers: []corev1.Container{{
						Name:  "coredns",
						Image: CoreDNSImage,
						Args:  []string{"-conf", "/etc/coredns/Corefile"},
						Ports: []corev1.ContainerPort{
							{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
							{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
							{Name: "metrics", ContainerPort: 9153, Protocol: corev1.ProtocolTCP},
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
								Path: "/ready", Port: intstr.FromInt32(coreDNSReadyPort), Scheme: corev1.URISchemeHTTP,
							}},
							// Shorter than kubeadm's 10 s, so a lab is
							// ready to resolve soon after its pods run.
							PeriodSeconds: 2,
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "config-volume", MountPath: "/etc/coredns", ReadOnly: true}},
					}},
					Volumes: []corev1.Volume{{
						Name: "config-volume",
						VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: cm.Name},
							Items:                []corev1.KeyToPath{{Key: "Corefile", Path: "Corefile"}},
						}},
					}},
				},
			},
		},
	}
	svcMeta := meta(DNSService)
	svcMeta.Labels["kubernetes.io/name"] = "CoreDNS"
	svc := &corev1.Service{
		ObjectMeta: svcMeta,
		Spec: corev1.ServiceSpec{
			Selector:  selector,
			ClusterIP: DNSServiceIP.String(),
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(53), Protocol: corev1.ProtocolUDP},
				{Name: "dns-tcp", Port: 53, TargetPort: intstr.FromInt32(53), Protocol: corev1.ProtocolTCP},
				{Name: "metrics", Port: 9153, TargetPort: intstr.FromInt32(9153), Protocol: corev1.ProtocolTCP},
			},
		},
	}
	return sa, role, binding, cm, dep, svc
}

// applyDNS creates the cluster DNS's objects that do not exist yet (Up
// starts from an empty cluster; a repeat changes nothing).
func applyDNS(ctx context.Context, cs kubernetes.Interface) error {
	sa, role, binding, cm, dep, svc := dnsObjects()
	create := func(what string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s: %w", what, err)
		}
		return nil
	}
	opts := metav1.CreateOptions{}
	_, err1 := cs.CoreV1().ServiceAccounts(DNSNamespace).Create(ctx, sa, opts)
	_, err2 := cs.RbacV1().ClusterRoles().Create(ctx, role, opts)
	_, err3 := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, opts)
	_, err4 := cs.CoreV1().ConfigMaps(DNSNamespace).Create(ctx, cm, opts)
	_, err5 := cs.CoreV1().Services(DNSNamespace).Create(ctx, svc, opts)
	_, err6 := cs.AppsV1().Deployments(DNSNamespace).Create(ctx, dep, opts)
	return errors.Join(
		create("coredns service account", err1), create("coredns cluster role", err2),
		create("coredns cluster role binding", err3), create("coredns configmap", err4),
		create("kube-dns service", err5), create("coredns deployment", err6))
}

// WaitDNSReady waits until every CoreDNS replica is ready, that is
// answering on its pod IP with the cluster's names loaded.
func (l *Lab) WaitDNSReady(ctx context.Context) error {
	cs, err := l.Client()
	if err != nil {
		return err
	}
	for {
		d, err := cs.AppsV1().Deployments(DNSNamespace).Get(ctx, DNSDeployment, metav1.GetOptions{})
		if err == nil && d.Status.ObservedGeneration >= d.Generation && d.Status.ReadyReplicas == dnsReplicas &&
			d.Status.UpdatedReplicas == dnsReplicas {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("%d of %d coredns replicas ready", d.Status.ReadyReplicas, dnsReplicas)
			}
			return fmt.Errorf("cluster dns not ready (agent logs in %s): %w", l.launch.logDir, errors.Join(err, ctx.Err()))
		case <-time.After(500 * time.Millisecond):
		}
	}
}
