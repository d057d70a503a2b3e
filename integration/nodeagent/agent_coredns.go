package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// Service account tokens for CoreDNS: an hour, renewed after half of it,
// like the kubelet's projected tokens (client-go re-reads the token file).
const (
	coreDNSTokenTTL   = time.Hour
	coreDNSTokenRenew = coreDNSTokenTTL / 2
)

// apiEndpoint is how the agent's own client reaches the API server, which
// CoreDNS is pointed at through its relay.
type apiEndpoint struct {
	// HostPort is the API server's address, dialed from the node.
	HostPort string
	// Relay is the loopback address in a CoreDNS pod's netns that the relay
	// listens on: 127.0.0.1 (a SAN of the lab's API server certificate) and
	// the API server's port.
	Relay netip.AddrPort
	CAPEM []byte
}

func apiEndpointFrom(rc *rest.Config) (apiEndpoint, error) {
	u, err := url.Parse(rc.Host)
	if err != nil {
		return apiEndpoint{}, fmt.Errorf("parse api server url %q: %w", rc.Host, err)
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return apiEndpoint{}, fmt.Errorf("api server port %q: %w", port, err)
	}
	ca := rc.TLSClientConfig.CAData
	if len(ca) == 0 && rc.TLSClientConfig.CAFile != "" {
		if ca, err = os.ReadFile(rc.TLSClientConfig.CAFile); err != nil {
			return apiEndpoint{}, fmt.Errorf("read api server ca: %w", err)
		}
	}
	return apiEndpoint{
		HostPort: u.Host,
		Relay:    netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(p)),
		CAPEM:    ca,
	}, nil
}

func (a *agent) coreDNSDir(uid string) string {
	return filepath.Join(a.cfg.StateDir, "coredns", uid)
}

// ensureCoreDNS runs the real CoreDNS for a pod whose container is CoreDNS
// (see coreDNSContainer), with the Corefile from its ConfigMap, and keeps
// its files current: a changed Corefile restarts it, and the token is
// renewed in place. Pods without a CoreDNS container have none running.
func (a *agent) ensureCoreDNS(ctx context.Context, log *slog.Logger, key string, pod *corev1.Pod, rec *podRecord) error {
	c, ok := coreDNSContainer(pod)
	if !ok || rec.hostNetwork {
		rec.coredns.Stop()
		rec.coredns = nil
		if ok {
			return errors.New("coredns in a hostNetwork pod is not supported by the lab")
		}
		return nil
	}
	if a.cfg.CoreDNSBin == "" {
		return errors.New("pod runs coredns but the agent has no coredns binary (hack/build-tools.sh builds bin/coredns)")
	}
	probe, hasProbe, err := readinessProbe(c)
	if err != nil {
		return fmt.Errorf("coredns container %s: %w", c.Name, err)
	}
	ref, err := findCorefile(pod, c)
	if err != nil {
		return fmt.Errorf("coredns container %s: %w", c.Name, err)
	}
	cm, err := a.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, ref.ConfigMap, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read corefile: %w", err)
	}
	corefile, ok := cm.Data[ref.Key]
	if !ok {
		return fmt.Errorf("configmap %s/%s has no key %s", pod.Namespace, ref.ConfigMap, ref.Key)
	}

	dir := a.coreDNSDir(string(pod.UID))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create coredns dir: %w", err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := a.ensureToken(ctx, pod, tokenFile); err != nil {
		return err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	kc, err := coreDNSKubeconfig("https://"+a.api.Relay.String(), a.api.CAPEM, tokenFile)
	if err != nil {
		return err
	}
	if err := writeIfChanged(kubeconfig, kc, 0o600); err != nil {
		return err
	}
	spec := coreDNSSpec{
		Bin:       a.cfg.CoreDNSBin,
		NetnsPath: podNetnsPath(rec.state.Netns),
		Dir:       dir,
		PodIP:     rec.state.IPs[0],
		Corefile:  labCorefile(corefile, kubeconfig),
		Probe:     probe,
		HasProbe:  hasProbe,
		APIRelay:  a.api.Relay,
		APIServer: a.api.HostPort,
	}
	if rec.coredns != nil && rec.coredns.spec == spec {
		return nil
	}
	rec.coredns.Stop()
	rec.coredns = nil
	if err := writeIfChanged(spec.corefilePath(), []byte(spec.Corefile), 0o644); err != nil {
		return err
	}
	run, err := startCoreDNS(spec, log.With("container", c.Name), func() { a.queue.Add(key) })
	if err != nil {
		return fmt.Errorf("start coredns: %w", err)
	}
	rec.coredns = run
	a.recorder.Eventf(pod, corev1.EventTypeNormal, reasonStarted, "Started container %s (coredns %s)", c.Name, a.cfg.CoreDNSBin)
	return nil
}

// ensureToken writes a token of the pod's service account, bound to the
// pod, unless the file holds one younger than coreDNSTokenRenew.
func (a *agent) ensureToken(ctx context.Context, pod *corev1.Pod, file string) error {
	if st, err := os.Stat(file); err == nil && a.now().Sub(st.ModTime()) < coreDNSTokenRenew {
		return nil
	}
	token, err := requestPodToken(ctx, a.client, pod, nil, int64(coreDNSTokenTTL/time.Second))
	if err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(token), 0o600); err != nil {
		return fmt.Errorf("write token: %w", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("write token: %w", err)
	}
	return nil
}

// writeIfChanged writes data to path atomically unless it holds data
// already.
func writeIfChanged(path string, data []byte, mode os.FileMode) error {
	if cur, err := os.ReadFile(path); err == nil && string(cur) == string(data) {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
