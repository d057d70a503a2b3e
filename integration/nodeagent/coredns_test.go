package nodeagent

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/clientcmd"
)

func TestImageRepoName(t *testing.T) {
	for image, want := range map[string]string{
		"registry.k8s.io/coredns/coredns:v1.12.0": "coredns",
		"coredns/coredns":                         "coredns",
		"coredns":                                 "coredns",
		"localhost:5000/coredns@sha256:abcd":      "coredns",
		"localhost:5000/coredns:1.2@sha256:abcd":  "coredns",
		"nginx":                                   "nginx",
		"example.com/coredns-helper:1":            "coredns-helper",
		"coredns/coredns-sidecar":                 "coredns-sidecar",
	} {
		if got := imageRepoName(image); got != want {
			t.Errorf("imageRepoName(%q) = %q, want %q", image, got, want)
		}
	}
}

// coreDNSPod is the lab's CoreDNS pod as the Deployment makes it.
func coreDNSPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns-x", Namespace: "kube-system"},
		Spec: corev1.PodSpec{
			DNSPolicy: corev1.DNSDefault,
			Containers: []corev1.Container{{
				Name: "coredns", Image: "registry.k8s.io/coredns/coredns:v1.15.0",
				Args: []string{"-conf", "/etc/coredns/Corefile"},
				Ports: []corev1.ContainerPort{
					{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
					{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
					{Name: "metrics", ContainerPort: 9153},
					{Name: "ready", ContainerPort: 8181},
				},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/ready", Port: intstr.FromString("ready"),
				}}, PeriodSeconds: 2},
				VolumeMounts: []corev1.VolumeMount{{Name: "config-volume", MountPath: "/etc/coredns/"}},
			}},
			Volumes: []corev1.Volume{{Name: "config-volume", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"},
				Items:                []corev1.KeyToPath{{Key: "corefile-key", Path: "Corefile"}},
			}}}},
		},
	}
}

func TestFindCorefile(t *testing.T) {
	pod := coreDNSPod()
	c, ok := coreDNSContainer(pod)
	if !ok {
		t.Fatal("coredns container not found")
	}
	ref, err := findCorefile(pod, c)
	if err != nil || ref != (corefileRef{ConfigMap: "coredns", Key: "corefile-key"}) {
		t.Errorf("findCorefile = %+v, %v", ref, err)
	}

	// Without items, the file name is the key; -conf=PATH is read too.
	pod.Spec.Volumes[0].ConfigMap.Items = nil
	pod.Spec.Containers[0].Args = []string{"-dns.port=53", "-conf=/etc/coredns/Other"}
	ref, err = findCorefile(pod, pod.Spec.Containers[0])
	if err != nil || ref != (corefileRef{ConfigMap: "coredns", Key: "Other"}) {
		t.Errorf("findCorefile without items = %+v, %v", ref, err)
	}

	// No -conf: CoreDNS's default /Corefile is on no volume.
	pod.Spec.Containers[0].Args = nil
	if _, err := findCorefile(pod, pod.Spec.Containers[0]); err == nil || !strings.Contains(err.Error(), "/Corefile is on no mounted volume") {
		t.Errorf("findCorefile without -conf: %v", err)
	}

	pod = coreDNSPod()
	pod.Spec.Volumes[0].ConfigMap = nil
	pod.Spec.Volumes[0].EmptyDir = &corev1.EmptyDirVolumeSource{}
	if _, err := findCorefile(pod, pod.Spec.Containers[0]); err == nil || !strings.Contains(err.Error(), "not a ConfigMap") {
		t.Errorf("findCorefile on an emptyDir: %v", err)
	}

	web := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx"}}}}
	if _, ok := coreDNSContainer(web); ok {
		t.Error("nginx taken for coredns")
	}
}

func TestLabCorefile(t *testing.T) {
	in := `.:53 {
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
}
example.org:53 {
    kubernetes example.org
}
`
	want := `.:53 {
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig /s/kc
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
}
example.org:53 {
    kubernetes example.org {
        kubeconfig /s/kc
    }
}
`
	if got := labCorefile(in, "/s/kc"); got != want {
		t.Errorf("labCorefile:\n%s\nwant:\n%s", got, want)
	}
	// A block with its own API server, and no kubernetes plugin at all,
	// stay as they are.
	for _, same := range []string{
		".:53 {\n    kubernetes cluster.local {\n        endpoint https://x:6443\n    }\n}\n",
		".:53 {\n    whoami\n}\n",
	} {
		if got := labCorefile(same, "/s/kc"); got != same {
			t.Errorf("labCorefile changed %q into %q", same, got)
		}
	}
}

func TestCoreDNSKubeconfig(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := coreDNSKubeconfig("https://127.0.0.1:6443", []byte("CA"), token)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(b)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.NewDefaultClientConfig(*cfg, nil).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != "https://127.0.0.1:6443" || string(rc.CAData) != "CA" || rc.BearerTokenFile != token || rc.BearerToken != "secret" {
		t.Errorf("kubeconfig gives host %q ca %q token file %q", rc.Host, rc.CAData, rc.BearerTokenFile)
	}
}

func TestReadinessProbe(t *testing.T) {
	c := coreDNSPod().Spec.Containers[0]
	p, ok, err := readinessProbe(c)
	if err != nil || !ok || p != (httpProbe{Path: "/ready", Port: 8181, Period: 2}) {
		t.Errorf("readinessProbe = %+v, %v, %v", p, ok, err)
	}
	c.ReadinessProbe.HTTPGet.Port = intstr.FromString("absent")
	if _, _, err := readinessProbe(c); err == nil {
		t.Error("a probe on an undeclared named port was accepted")
	}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
	if _, _, err := readinessProbe(c); err == nil {
		t.Error("an exec probe was accepted")
	}
	c.ReadinessProbe = nil
	if _, ok, err := readinessProbe(c); ok || err != nil {
		t.Errorf("no probe: ok %v err %v", ok, err)
	}
}

func TestStandInPortsSkipCoreDNS(t *testing.T) {
	pod := coreDNSPod()
	if got := standInPorts(pod); len(got) != 0 {
		t.Errorf("stand-in ports of a coredns pod: %v", got)
	}
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "side", Image: "busybox",
		Ports: []corev1.ContainerPort{{ContainerPort: 9000}}})
	if got := standInPorts(pod); len(got) != 1 || got[0] != (servicePort{Protocol: corev1.ProtocolTCP, Port: 9000}) {
		t.Errorf("stand-in ports beside coredns: %v", got)
	}
	if len(pod.Spec.Containers) != 2 {
		t.Error("standInPorts changed the pod")
	}
}

func TestResolvConf(t *testing.T) {
	dns := netip.MustParseAddr("10.96.0.10")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop"}}
	got, ok := resolvConf(pod, dns, "cluster.local")
	want := "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if !ok || got != want {
		t.Errorf("ClusterFirst: %q %v, want %q", got, ok, want)
	}

	pod.Spec.DNSConfig = &corev1.PodDNSConfig{
		Searches: []string{"corp.example"},
		Options:  []corev1.PodDNSConfigOption{{Name: "ndots", Value: new("2")}, {Name: "edns0"}},
	}
	got, _ = resolvConf(pod, dns, "cluster.local")
	want = "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:2 edns0\n"
	if got != want {
		t.Errorf("ClusterFirst with dnsConfig: %q, want %q", got, want)
	}

	pod.Spec.DNSPolicy = corev1.DNSNone
	pod.Spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"192.0.2.53"}}
	if got, ok := resolvConf(pod, dns, "cluster.local"); !ok || got != "nameserver 192.0.2.53\n" {
		t.Errorf("None: %q %v", got, ok)
	}

	for _, p := range []corev1.PodSpec{
		{DNSPolicy: corev1.DNSDefault},
		{HostNetwork: true},
	} {
		if got, ok := resolvConf(&corev1.Pod{Spec: p}, dns, "cluster.local"); ok {
			t.Errorf("%+v: resolv.conf %q, want the node's", p, got)
		}
	}
	if _, ok := resolvConf(&corev1.Pod{Spec: corev1.PodSpec{HostNetwork: true, DNSPolicy: corev1.DNSClusterFirstWithHostNet}}, dns, "cluster.local"); !ok {
		t.Error("ClusterFirstWithHostNet: no cluster resolv.conf")
	}
}
