package lab

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/meridian-net/meridian/charts"
	"github.com/meridian-net/meridian/hack/image/imagebuild"
)

// Meridian comes to the lab the way it comes to a cluster: `helm install`
// of charts/meridian into kube-system. Each node agent then runs the
// DaemonSet's pod from the image `make image` builds (see
// nodeagent's workload.go): the init containers install meridian-cni and
// its conflist on the node, and meridiand runs with the chart's args, env,
// volumes, capabilities and service account token.
//
// Lab nodes share one host, so the chart's hostPath directories are made
// per node: each node's processes see the node's own directory
// (nodes/<node>/root) at NodeRootMount (see NetnsExec's binds), and the
// lab's values put every Meridian path under it.
const (
	// ReleaseName and ReleaseNamespace are the lab's Helm release.
	ReleaseName      = "meridian"
	ReleaseNamespace = metav1.NamespaceSystem
	// DaemonSetName and ServiceAccountName are what the chart names after
	// the release.
	DaemonSetName      = "meridian"
	ServiceAccountName = "meridian"
	// APITLSSecret holds meridiand's TCP API serving certificate.
	APITLSSecret = "meridian-api-tls"
	// ContainerInitCommand is the hidden meridian-lab subcommand the
	// node agents start containers with.
	ContainerInitCommand = "container-init"
	// ImageArchive is the image tarball `make image` writes into the bin
	// directory.
	ImageArchive = "meridian-image.tar"

	rolloutTimeout = 4 * time.Minute
)

// nodePaths are where Meridian's host directories are, as every node sees
// them.
type nodePaths struct {
	StateDir   string
	APISocket  string
	CNIBinDir  string
	CNIConfDir string
}

func (s layout) nodeRootMount() string       { return s.path("node-root") }
func (s layout) nodeRoot(node string) string { return filepath.Join(s.nodeDir(node), "root") }

func (s layout) nodePaths() nodePaths {
	r := s.nodeRootMount()
	return nodePaths{
		StateDir:   filepath.Join(r, "var/lib/meridian"),
		APISocket:  filepath.Join(r, "var/run/meridian/meridian.sock"),
		CNIBinDir:  filepath.Join(r, "opt/cni/bin"),
		CNIConfDir: filepath.Join(r, "etc/cni/net.d"),
	}
}

// onHost is where the host finds path p of node's view of the disk.
func (s layout) onHost(node, p string) string {
	rel, err := filepath.Rel(s.nodeRootMount(), p)
	if err != nil || !filepath.IsLocal(rel) {
		return p
	}
	return filepath.Join(s.nodeRoot(node), rel)
}

func (s layout) helmDir() string       { return s.path("helm") }
func (s layout) chartDir() string      { return filepath.Join(s.helmDir(), charts.MeridianDir) }
func (s layout) valuesFile() string    { return filepath.Join(s.helmDir(), "lab-values.yaml") }
func (s layout) imageCacheDir() string { return s.path("images") }

// labValues are the lab's values for the chart; everything else is the
// chart's default, image included.
func labValues(paths nodePaths, st labState) map[string]any {
	v := map[string]any{
		"stateDir": paths.StateDir,
		"api": map[string]any{
			"socket": paths.APISocket,
			"tcp":    map[string]any{"enabled": true, "port": APIPort, "tlsSecret": APITLSSecret},
		},
		"cni": map[string]any{
			"binDir":   paths.CNIBinDir,
			"confDir":  paths.CNIConfDir,
			"confName": CNIConfFile,
		},
		// No kube-proxy in the lab: meridiand reaches the API server at its
		// real address, as the chart asks for when Meridian replaces it.
		"k8sServiceHost": APIServerIP.String(),
		"k8sServicePort": APIServerPort,
		// Lab nodes are fresh network namespaces with forwarding off; the
		// chart's privileged init container turns it on.
		"ipForwarding": map[string]any{"setInInitContainer": true},
		// The tests own the cluster's BGPConfiguration (the racks lab
		// writes its own), so the chart leaves it alone.
		"bgp": map[string]any{"configuration": map[string]any{"create": false}},
	}
	if st.Topology == TopologyRacks && st.ToR == ToRNone {
		// Routers that know no pod CIDR: racks reach each other through
		// tunnels, and VXLAN is the one every kernel has (this host has no
		// ipip module).
		v["encapsulationType"] = "VXLAN"
	}
	if st.ToRPassword != "" {
		v["rbac"] = map[string]any{"extraSecrets": []any{
			map[string]any{"namespace": metav1.NamespaceSystem, "name": ToRPasswordSecret},
		}}
	}
	return v
}

// writeChart writes the embedded chart and the lab's values into the
// state directory, where helm reads them.
func (l *Lab) writeChart() error {
	if err := os.RemoveAll(l.layout.chartDir()); err != nil {
		return fmt.Errorf("write chart: %w", err)
	}
	err := fs.WalkDir(charts.Meridian, charts.MeridianDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := filepath.Join(l.layout.helmDir(), filepath.FromSlash(p))
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := charts.Meridian.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		return fmt.Errorf("write chart: %w", err)
	}
	b, err := yaml.Marshal(labValues(l.layout.nodePaths(), l.st))
	if err != nil {
		return fmt.Errorf("encode lab values: %w", err)
	}
	if err := os.WriteFile(l.layout.valuesFile(), b, 0o644); err != nil {
		return fmt.Errorf("write lab values: %w", err)
	}
	return nil
}

// imageBinaries are the files of BinDir the image is made of.
var imageBinaries = imagebuild.DefaultBinaries

// ensureImage returns the image archive the nodes run: BinDir's, written
// by `make image`, unless a binary in BinDir is newer than it; then the
// lab builds one from BinDir into its state directory, the same way.
func (l *Lab) ensureImage() (string, error) {
	archive := filepath.Join(l.st.BinDir, ImageArchive)
	if st, err := os.Stat(archive); err == nil {
		fresh := true
		for _, b := range imageBinaries {
			if bs, err := os.Stat(binPath(l.st.BinDir, b)); err != nil || bs.ModTime().After(st.ModTime()) {
				fresh = false
			}
		}
		if fresh {
			return archive, nil
		}
	}
	ref, err := imagebuild.DefaultRef(filepath.Join(l.layout.chartDir(), "Chart.yaml"))
	if err != nil {
		return "", fmt.Errorf("image reference: %w", err)
	}
	img, err := imagebuild.Build(imagebuild.Options{BinDir: l.st.BinDir, Binaries: imageBinaries, Arch: runtime.GOARCH, Entrypoint: []string{imagebuild.BinDir + "/meridiand"}})
	if err != nil {
		return "", fmt.Errorf("build image from %s: %w", l.st.BinDir, err)
	}
	out := l.layout.path(ImageArchive)
	if err := imagebuild.WriteTarball(out, ref, img); err != nil {
		return "", fmt.Errorf("write image: %w", err)
	}
	l.log.Info("image built", "ref", ref, "archive", out)
	return out, nil
}

// createAPITLSSecret stores the lab's meridiand serving certificate as the
// kubernetes.io/tls Secret the chart's api.tcp.tlsSecret names.
func (l *Lab) createAPITLSSecret(ctx context.Context) error {
	data := map[string][]byte{}
	for _, name := range []string{"tls.crt", "tls.key", "ca.crt"} {
		b, err := os.ReadFile(filepath.Join(l.layout.apiTLSDir(), name))
		if err != nil {
			return fmt.Errorf("read API TLS file: %w", err)
		}
		data[name] = b
	}
	cs, err := l.Client()
	if err != nil {
		return err
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ReleaseNamespace, Name: APITLSSecret},
		Type:       corev1.SecretTypeTLS,
		Data:       data,
	}
	_, err = cs.CoreV1().Secrets(ReleaseNamespace).Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = cs.CoreV1().Secrets(ReleaseNamespace).Update(ctx, sec, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("store API TLS secret: %w", err)
	}
	return nil
}

// helm runs bin/helm against the lab's API server with its own
// configuration and cache directories.
func (l *Lab) helm(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, binPath(l.st.BinDir, "helm"), append(args, "--kubeconfig", l.Kubeconfig())...)
	home := l.layout.helmDir()
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// InstallMeridian installs Meridian again after UninstallMeridian.
func (l *Lab) InstallMeridian(ctx context.Context) error { return l.installMeridian(ctx) }

// installMeridian is `helm install` of the chart with the lab's values,
// then a wait for the DaemonSet's pods to be Ready on every node.
func (l *Lab) installMeridian(ctx context.Context) error {
	if err := l.createAPITLSSecret(ctx); err != nil {
		return err
	}
	t0 := time.Now()
	if _, err := l.helm(ctx, "install", ReleaseName, l.layout.chartDir(),
		"--namespace", ReleaseNamespace, "--values", l.layout.valuesFile()); err != nil {
		return err
	}
	if err := l.WaitMeridianReady(ctx); err != nil {
		return err
	}
	l.log.Info("meridian installed with helm", "release", ReleaseName, "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// HelmUpgrade runs `helm upgrade` of the lab's release with the lab's
// values and more settings (--set KEY=VALUE each), then waits for the
// rollout to finish on every node.
func (l *Lab) HelmUpgrade(ctx context.Context, set ...string) error {
	args := []string{"upgrade", ReleaseName, l.layout.chartDir(), "--namespace", ReleaseNamespace, "--values", l.layout.valuesFile()}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	if _, err := l.helm(ctx, args...); err != nil {
		return err
	}
	return l.WaitMeridianReady(ctx)
}

// Helm runs helm with args against the lab (for tests and the shell).
func (l *Lab) Helm(ctx context.Context, args ...string) ([]byte, error) { return l.helm(ctx, args...) }

// WaitMeridianReady waits until the DaemonSet's current template runs and
// is Ready on every node, as `kubectl rollout status` does.
func (l *Lab) WaitMeridianReady(ctx context.Context) error {
	cs, err := l.Client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, rolloutTimeout)
	defer cancel()
	var last string
	for {
		ds, err := cs.AppsV1().DaemonSets(ReleaseNamespace).Get(ctx, DaemonSetName, metav1.GetOptions{})
		if err == nil {
			if daemonSetRolledOut(ds, len(l.Nodes())) {
				return nil
			}
			last = fmt.Sprintf("desired %d, updated %d, ready %d, available %d (generation %d, observed %d)",
				ds.Status.DesiredNumberScheduled, ds.Status.UpdatedNumberScheduled, ds.Status.NumberReady,
				ds.Status.NumberAvailable, ds.Generation, ds.Status.ObservedGeneration)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("daemonset %s/%s not rolled out: %s\n%s", ReleaseNamespace, DaemonSetName, last, l.meridianPodReport(context.WithoutCancel(ctx)))
		case <-time.After(time.Second):
		}
	}
}

func daemonSetRolledOut(ds *appsv1.DaemonSet, nodes int) bool {
	s := ds.Status
	return s.ObservedGeneration >= ds.Generation &&
		int(s.DesiredNumberScheduled) == nodes &&
		s.UpdatedNumberScheduled == s.DesiredNumberScheduled &&
		s.NumberReady == s.DesiredNumberScheduled &&
		s.NumberUnavailable == 0
}

// MeridianPods are the DaemonSet's pods, by node.
func (l *Lab) MeridianPods(ctx context.Context) ([]corev1.Pod, error) {
	cs, err := l.Client()
	if err != nil {
		return nil, err
	}
	list, err := cs.CoreV1().Pods(ReleaseNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(labels.Set{"app.kubernetes.io/name": "meridian", "app.kubernetes.io/instance": ReleaseName}).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list meridian pods: %w", err)
	}
	pods := list.Items
	slices.SortFunc(pods, func(a, b corev1.Pod) int { return compareNodeNames(a.Spec.NodeName, b.Spec.NodeName) })
	return pods, nil
}

// meridianPodReport says why the pods are not Ready: each pod's container
// states and the end of meridiand's log on its node.
func (l *Lab) meridianPodReport(ctx context.Context) string {
	pods, err := l.MeridianPods(ctx)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&b, "pod %s on %s: %s\n", p.Name, p.Spec.NodeName, p.Status.Phase)
		for _, c := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
			fmt.Fprintf(&b, "  %s: ready=%v restarts=%d %s\n", c.Name, c.Ready, c.RestartCount, containerStateString(c.State))
		}
		fmt.Fprintf(&b, "  last lines of %s:\n%s\n", l.LogPath(daemonProc(p.Spec.NodeName)), tailFile(l.LogPath(daemonProc(p.Spec.NodeName)), 1500))
	}
	if len(pods) == 0 {
		b.WriteString("no meridian pods (see the controller manager's log)\n")
	}
	return b.String()
}

func containerStateString(s corev1.ContainerState) string {
	switch {
	case s.Running != nil:
		return "running since " + s.Running.StartedAt.Format(time.RFC3339)
	case s.Terminated != nil:
		return fmt.Sprintf("terminated (%s, exit %d)", s.Terminated.Reason, s.Terminated.ExitCode)
	case s.Waiting != nil:
		return "waiting (" + s.Waiting.Reason + ": " + s.Waiting.Message + ")"
	}
	return "unknown"
}

// UninstallMeridian is `helm uninstall` of the lab's release; it waits
// until the DaemonSet's pods are gone.
func (l *Lab) UninstallMeridian(ctx context.Context) error {
	_, err := l.helm(ctx, "uninstall", ReleaseName, "--namespace", ReleaseNamespace, "--wait", "--timeout", "2m")
	return err
}
