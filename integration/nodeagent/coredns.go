package nodeagent

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// The agent runs no images, with one exception: a container whose image is
// CoreDNS runs the real CoreDNS binary (built by hack/build-tools.sh) in the
// pod's netns, so that the cluster has working DNS. The rule is the image's
// repository name, the last path element without tag or digest:
// "coredns" (registry.k8s.io/coredns/coredns:v1.12.0, coredns/coredns).
const coreDNSImageName = "coredns"

// imageRepoName is the last path element of an image reference, without
// tag or digest: "registry.k8s.io/coredns/coredns:v1.12.0" -> "coredns".
func imageRepoName(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	name := path.Base(image)
	if i := strings.LastIndex(name, ":"); i >= 0 {
		name = name[:i]
	}
	return name
}

// coreDNSContainer returns the pod's CoreDNS container, if it has one.
func coreDNSContainer(pod *corev1.Pod) (corev1.Container, bool) {
	for _, c := range pod.Spec.Containers {
		if imageRepoName(c.Image) == coreDNSImageName {
			return c, true
		}
	}
	return corev1.Container{}, false
}

// corefileRef is where a CoreDNS container's Corefile comes from: a key of
// a ConfigMap mounted into the container.
type corefileRef struct {
	ConfigMap string
	Key       string
}

// defaultCorefilePath is CoreDNS's -conf default: "Corefile" in its working
// directory, which in the official image is /.
const defaultCorefilePath = "/Corefile"

// coreDNSConfPath is the -conf argument of the container (command and args
// together, as the runtime would run them), or CoreDNS's default.
func coreDNSConfPath(c corev1.Container) string {
	argv := append(slices.Clone(c.Command), c.Args...)
	for i, a := range argv {
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name != "conf" || !strings.HasPrefix(a, "-") {
			continue
		}
		if hasVal {
			return val
		}
		if i+1 < len(argv) {
			return argv[i+1]
		}
	}
	return defaultCorefilePath
}

// findCorefile resolves the container's -conf path through its volume
// mounts to a ConfigMap volume and the key that file shows, following the
// volume's items when it lists them (a ConfigMap volume shows key K as file
// K unless items map it to another path).
func findCorefile(pod *corev1.Pod, c corev1.Container) (corefileRef, error) {
	conf := path.Clean(coreDNSConfPath(c))
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(conf, path.Clean(m.MountPath)+"/")
		if !ok {
			continue
		}
		if m.SubPath != "" {
			rel = path.Join(m.SubPath, rel)
		}
		for _, v := range pod.Spec.Volumes {
			if v.Name != m.Name {
				continue
			}
			if v.ConfigMap == nil {
				return corefileRef{}, fmt.Errorf("corefile %s is on volume %s, which is not a ConfigMap", conf, v.Name)
			}
			if len(v.ConfigMap.Items) == 0 {
				return corefileRef{ConfigMap: v.ConfigMap.Name, Key: rel}, nil
			}
			for _, it := range v.ConfigMap.Items {
				if path.Clean(it.Path) == rel {
					return corefileRef{ConfigMap: v.ConfigMap.Name, Key: it.Key}, nil
				}
			}
			return corefileRef{}, fmt.Errorf("configmap volume %s has no item at %s", v.Name, rel)
		}
		return corefileRef{}, fmt.Errorf("volume mount %s names no volume of the pod", m.Name)
	}
	return corefileRef{}, fmt.Errorf("corefile %s is on no mounted volume", conf)
}

// labCorefile points every kubernetes block of the Corefile at kubeconfig,
// since a process the agent runs has no in-cluster service account files
// at /var/run/secrets (no mount namespace of its own). A block that already
// names a kubeconfig or an endpoint is left alone, and so is a Corefile
// without the kubernetes plugin.
func labCorefile(corefile, kubeconfig string) string {
	lines := strings.Split(corefile, "\n")
	var out []string
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "kubernetes" {
			out = append(out, line)
			continue
		}
		indent := line[:len(line)-len(strings.TrimLeft(line, " \t"))]
		inject := indent + "    kubeconfig " + kubeconfig
		if f[len(f)-1] != "{" {
			out = append(out, strings.TrimRight(line, " \t")+" {", inject, indent+"}")
			continue
		}
		out = append(out, line)
		// Copy the block, noting whether it sets its own API server.
		depth, own := 1, false
		var block []string
		j := i + 1
		for ; j < len(lines) && depth > 0; j++ {
			bf := strings.Fields(lines[j])
			if len(bf) > 0 && (bf[0] == "kubeconfig" || bf[0] == "endpoint") && depth == 1 {
				own = true
			}
			depth += strings.Count(lines[j], "{") - strings.Count(lines[j], "}")
			block = append(block, lines[j])
		}
		if !own {
			out = append(out, inject)
		}
		out = append(out, block...)
		i = j - 1
	}
	return strings.Join(out, "\n")
}

// coreDNSKubeconfig is the kubeconfig CoreDNS's kubernetes plugin reads:
// the pod's service account token (in tokenFile, which client-go re-reads,
// so the agent can renew it under a running CoreDNS) against server.
func coreDNSKubeconfig(server string, caPEM []byte, tokenFile string) ([]byte, error) {
	const name = "lab"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{TokenFile: tokenFile}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = name
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("render coredns kubeconfig: %w", err)
	}
	return b, nil
}

// httpProbe is an HTTP GET readiness probe resolved against its container.
type httpProbe struct {
	Path string
	Port int32
	// Period and InitialDelay in seconds, as the probe says (kubelet
	// defaults when unset).
	Period       int32
	InitialDelay int32
}

// readinessProbe resolves the container's HTTP readiness probe; ok is false
// when it has none (the container is then ready once it runs). Probes of
// other kinds are refused: the agent only runs CoreDNS, whose probe is HTTP.
func readinessProbe(c corev1.Container) (p httpProbe, ok bool, err error) {
	rp := c.ReadinessProbe
	if rp == nil {
		return httpProbe{}, false, nil
	}
	if rp.HTTPGet == nil {
		return httpProbe{}, false, errors.New("only httpGet readiness probes are supported")
	}
	if s := rp.HTTPGet.Scheme; s != "" && s != corev1.URISchemeHTTP {
		return httpProbe{}, false, fmt.Errorf("readiness probe scheme %s is not supported", s)
	}
	p = httpProbe{Path: rp.HTTPGet.Path, Period: rp.PeriodSeconds, InitialDelay: rp.InitialDelaySeconds}
	if p.Path == "" {
		p.Path = "/"
	}
	if p.Period <= 0 {
		p.Period = 10
	}
	switch port := rp.HTTPGet.Port; port.Type {
	case intstr.Int:
		p.Port = port.IntVal
	case intstr.String:
		for _, cp := range c.Ports {
			if cp.Name == port.StrVal {
				p.Port = cp.ContainerPort
			}
		}
		if p.Port == 0 {
			return httpProbe{}, false, fmt.Errorf("readiness probe port %q names no container port", port.StrVal)
		}
	}
	if p.Port <= 0 || p.Port > 65535 {
		return httpProbe{}, false, fmt.Errorf("readiness probe port %d is out of range", p.Port)
	}
	return p, true, nil
}
