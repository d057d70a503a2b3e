package nodeagent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// etcNetnsDir holds the per-namespace files `ip netns exec NAME` bind-mounts
// over /etc: a pod's resolv.conf lives in etcNetnsDir/NAME/resolv.conf, so
// every command run in the pod (getent, wget, nslookup) resolves as a
// container of that pod would.
const etcNetnsDir = "/etc/netns"

// Defaults of the kubelet's --cluster-dns and --cluster-domain in the lab:
// the kube-dns Service's ClusterIP and the usual domain.
var (
	DefaultClusterDNS    = netip.MustParseAddr("10.96.0.10")
	DefaultClusterDomain = "cluster.local"
)

// ndots is the kubelet's: a name with fewer than five dots is tried with
// the search domains first, so `web` finds web.<ns>.svc.cluster.local.
const ndots = 5

// resolvConf renders the resolv.conf the kubelet would give pod, by its
// dnsPolicy: ClusterFirst (the default, and ClusterFirstWithHostNet) points
// at the cluster DNS with the <ns>.svc, svc and domain search path; None
// takes only the pod's dnsConfig; Default means the node's own resolver,
// for which ok is false (no file: `ip netns exec` then leaves the host's
// /etc/resolv.conf in place). A hostNetwork pod under plain ClusterFirst
// falls back to Default, as with the kubelet.
func resolvConf(pod *corev1.Pod, clusterDNS netip.Addr, domain string) (conf string, ok bool) {
	var servers, search []string
	var options []corev1.PodDNSConfigOption
	switch pod.Spec.DNSPolicy {
	case corev1.DNSDefault:
		return "", false
	case corev1.DNSNone:
	case corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet, "":
		if pod.Spec.HostNetwork && pod.Spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
			return "", false
		}
		servers = []string{clusterDNS.String()}
		search = []string{pod.Namespace + ".svc." + domain, "svc." + domain, domain}
		options = []corev1.PodDNSConfigOption{{Name: "ndots", Value: new(fmt.Sprint(ndots))}}
	default:
		return "", false
	}
	if c := pod.Spec.DNSConfig; c != nil {
		servers = appendNew(servers, c.Nameservers...)
		search = appendNew(search, c.Searches...)
		for _, o := range c.Options {
			// A pod's option replaces the cluster's option of that name.
			options = slices.DeleteFunc(options, func(x corev1.PodDNSConfigOption) bool { return x.Name == o.Name })
			options = append(options, o)
		}
	}
	var b strings.Builder
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	if len(options) > 0 {
		opts := make([]string, 0, len(options))
		for _, o := range options {
			if o.Value != nil {
				opts = append(opts, o.Name+":"+*o.Value)
			} else {
				opts = append(opts, o.Name)
			}
		}
		fmt.Fprintf(&b, "options %s\n", strings.Join(opts, " "))
	}
	return b.String(), true
}

func appendNew(list []string, items ...string) []string {
	for _, it := range items {
		if !slices.Contains(list, it) {
			list = append(list, it)
		}
	}
	return list
}

// writeResolvConf makes etcNetnsDir/NAME/resolv.conf hold conf, atomically;
// unchanged content is not rewritten.
func writeResolvConf(netnsName, conf string) error {
	dir := filepath.Join(etcNetnsDir, netnsName)
	path := filepath.Join(dir, "resolv.conf")
	if cur, err := os.ReadFile(path); err == nil && string(cur) == conf {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// removeEtcNetns removes etcNetnsDir/NAME; an absent one is not an error.
func removeEtcNetns(netnsName string) error {
	if netnsName == "" {
		return errors.New("remove /etc/netns entry: empty netns name")
	}
	if err := os.RemoveAll(filepath.Join(etcNetnsDir, netnsName)); err != nil {
		return fmt.Errorf("remove /etc/netns entry of %s: %w", netnsName, err)
	}
	return nil
}
