package charts

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"

	"github.com/meridian-net/meridian/api/crd/manifests"
	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	"github.com/meridian-net/meridian/cni-plugin/config"
)

const (
	chartDir  = "meridian"
	allValues = "meridian/ci/all-values.yaml"
	release   = "meridian"
	namespace = "kube-system"
	// kubeVersion pins what `helm template` assumes, so the chart's
	// kubeVersion constraint is judged the same by every helm build.
	kubeVersion = "1.34.0"
)

// pendingFlags are meridiand flags the chart passes before meridiand has
// them; TestArgsAreMeridiandFlags accepts them without meridiand defining
// them yet. None now: the gRPC TCP listener flags landed.
var pendingFlags []string

// binDir is where `make` puts helm and meridiand.
func binDir() string {
	if d := os.Getenv("MERIDIAN_BIN_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", "bin")
}

// tool finds a binary of bin/, skipping the test when it is missing unless
// MERIDIAN_REQUIRE_LAB=1 (what `make chart-test` and CI set).
func tool(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(binDir(), name)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("MERIDIAN_REQUIRE_LAB") == "1" {
			t.Fatalf("MERIDIAN_REQUIRE_LAB=1 but %s is missing (make tools builds it): %v", p, err)
		}
		t.Skipf("%s missing (make tools builds it); set MERIDIAN_REQUIRE_LAB=1 to fail instead", p)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

func helm(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(tool(t, "helm"), args...)
	// A private helm home: no user repositories, plugins or caches leak in.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("helm %s: %w\n%s%s", strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

func template(t *testing.T, extra ...string) ([]byte, error) {
	t.Helper()
	args := append([]string{"template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion, "--include-crds"}, extra...)
	return helm(t, args...)
}

// objects is a rendered release, decoded strictly into typed objects: an
// unknown or misspelt field is an error, as the API server's field
// validation would report it.
type objects struct {
	daemonSets      []appsv1.DaemonSet
	clusterRoles    []rbacv1.ClusterRole
	clusterBindings []rbacv1.ClusterRoleBinding
	roles           []rbacv1.Role
	roleBindings    []rbacv1.RoleBinding
	serviceAccounts []corev1.ServiceAccount
	configMaps      []corev1.ConfigMap
	services        []corev1.Service
	crds            []apiextensionsv1.CustomResourceDefinition
	bgpConfigs      []v1alpha1.BGPConfiguration
	bgpPeers        []v1alpha1.BGPPeer
	serviceMonitors []map[string]any
	// custom are the meridian.io objects as the API server receives them,
	// for validation against the CRDs.
	custom []*unstructured.Unstructured
	kinds  []string
}

func decodeInto[T any](t *testing.T, doc []byte, list *[]T) {
	t.Helper()
	var v T
	if err := yaml.UnmarshalStrict(doc, &v); err != nil {
		t.Fatalf("decode %T: %v\n%s", v, err, doc)
	}
	*list = append(*list, v)
}

func parse(t *testing.T, out []byte) objects {
	t.Helper()
	var objs objects
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(out)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Fatalf("decode: %v\n%s", err, doc)
		}
		if head.Kind == "" {
			continue // a document of comments only
		}
		objs.kinds = append(objs.kinds, head.Kind)
		switch head.APIVersion + " " + head.Kind {
		case "apps/v1 DaemonSet":
			decodeInto(t, doc, &objs.daemonSets)
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			decodeInto(t, doc, &objs.clusterRoles)
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			decodeInto(t, doc, &objs.clusterBindings)
		case "rbac.authorization.k8s.io/v1 Role":
			decodeInto(t, doc, &objs.roles)
		case "rbac.authorization.k8s.io/v1 RoleBinding":
			decodeInto(t, doc, &objs.roleBindings)
		case "v1 ServiceAccount":
			decodeInto(t, doc, &objs.serviceAccounts)
		case "v1 ConfigMap":
			decodeInto(t, doc, &objs.configMaps)
		case "v1 Service":
			decodeInto(t, doc, &objs.services)
		case "apiextensions.k8s.io/v1 CustomResourceDefinition":
			decodeInto(t, doc, &objs.crds)
		case "meridian.io/v1alpha1 BGPConfiguration":
			decodeInto(t, doc, &objs.bgpConfigs)
		case "meridian.io/v1alpha1 BGPPeer":
			decodeInto(t, doc, &objs.bgpPeers)
		case "monitoring.coreos.com/v1 ServiceMonitor":
			decodeInto(t, doc, &objs.serviceMonitors)
		default:
			t.Fatalf("unexpected object %s %s", head.APIVersion, head.Kind)
		}
		if strings.HasPrefix(head.APIVersion, "meridian.io/") {
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal(doc, &u.Object); err != nil {
				t.Fatal(err)
			}
			objs.custom = append(objs.custom, u)
		}
	}
	return objs
}

func render(t *testing.T, extra ...string) objects {
	t.Helper()
	out, err := template(t, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return parse(t, out)
}

func one[T any](t *testing.T, what string, list []T) T {
	t.Helper()
	if len(list) != 1 {
		t.Fatalf("%d %s, want 1", len(list), what)
	}
	return list[0]
}

func container(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

func TestLint(t *testing.T) {
	for name, args := range map[string][]string{
		"defaults":   nil,
		"all values": {"--values", allValues},
	} {
		t.Run(name, func(t *testing.T) {
			out, err := helm(t, append([]string{"lint", chartDir, "--strict", "--namespace", namespace, "--kube-version", kubeVersion}, args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(out, []byte("0 chart(s) failed")) {
				t.Errorf("helm lint:\n%s", out)
			}
		})
	}
}

func TestDefaultDaemonSet(t *testing.T) {
	objs := render(t)
	ds := one(t, "DaemonSets", objs.daemonSets)
	spec := ds.Spec.Template.Spec

	if ds.Namespace != namespace {
		t.Errorf("DaemonSet in namespace %q", ds.Namespace)
	}
	if !spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("hostNetwork %v hostPID %v hostIPC %v, want true false false", spec.HostNetwork, spec.HostPID, spec.HostIPC)
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q", spec.DNSPolicy)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	// Every taint: exactly one toleration with operator Exists and no key.
	if want := []corev1.Toleration{{Operator: corev1.TolerationOpExists}}; !slices.Equal(spec.Tolerations, want) {
		t.Errorf("tolerations %+v, want %+v", spec.Tolerations, want)
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil || us.RollingUpdate.MaxUnavailable == nil ||
		*us.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) {
		t.Errorf("updateStrategy %+v, want RollingUpdate with maxUnavailable 1", us)
	}
	if got := ds.Spec.Selector.MatchLabels; got["app.kubernetes.io/name"] != "meridian" || got["app.kubernetes.io/instance"] != release {
		t.Errorf("selector %v", got)
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("pod label %s=%q, selector wants %q", k, ds.Spec.Template.Labels[k], v)
		}
	}
	for _, l := range []string{"helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"} {
		if ds.Labels[l] == "" {
			t.Errorf("DaemonSet lacks label %s", l)
		}
	}
	if sa := one(t, "ServiceAccounts", objs.serviceAccounts); spec.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName %q, ServiceAccount %q", spec.ServiceAccountName, sa.Name)
	}

	d := container(t, spec.Containers, "meridiand")
	if d.Image != "ghcr.io/meridian-net/meridian:"+appVersion(t) {
		t.Errorf("image %q", d.Image)
	}
	sc := d.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("meridiand has no securityContext.capabilities")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("meridiand is privileged")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("meridiand allows privilege escalation")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("meridiand's root filesystem is writable")
	}
	if want := []corev1.Capability{"ALL"}; !slices.Equal(sc.Capabilities.Drop, want) {
		t.Errorf("drop %v, want %v", sc.Capabilities.Drop, want)
	}
	if want := []corev1.Capability{"NET_ADMIN", "NET_BIND_SERVICE"}; !slices.Equal(sc.Capabilities.Add, want) {
		t.Errorf("add %v, want %v", sc.Capabilities.Add, want)
	}

	metricsPort := int32(0)
	for _, p := range d.Ports {
		if p.Name == "metrics" {
			metricsPort = p.ContainerPort
		}
	}
	if metricsPort != 9091 {
		t.Errorf("metrics port %d, want 9091", metricsPort)
	}
	for name, probe := range map[string]*corev1.Probe{"/healthz": d.LivenessProbe, "/readyz": d.ReadinessProbe} {
		if probe == nil || probe.HTTPGet == nil {
			t.Errorf("no HTTP probe on %s", name)
			continue
		}
		if probe.HTTPGet.Path != name || probe.HTTPGet.Port != intstr.FromString("metrics") {
			t.Errorf("probe %s: path %q port %v", name, probe.HTTPGet.Path, probe.HTTPGet.Port)
		}
	}

	args := argMap(t, d.Args)
	for flag, want := range map[string]string{
		"asn": "64512", "bgp-port": "179", "graceful-restart-time": "120s", "withdraw-on-stop": "false",
		"state-dir": "/var/lib/meridian", "api-socket": "/var/run/meridian/meridian.sock", "log-level": "info",
		"metrics-addr": ":9091",
	} {
		if got, ok := args[flag]; !ok || got != want {
			t.Errorf("--%s=%q (present %v), want %q", flag, got, ok, want)
		}
	}
	for _, flag := range []string{"cluster-cidr", "nat-outgoing", "nodeport-addresses", "api-listen", "api-tls-secret"} {
		if v, ok := args[flag]; ok {
			t.Errorf("default install passes --%s=%s", flag, v)
		}
	}

	nodeName := false
	for _, e := range d.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		t.Errorf("no NODE_NAME from spec.nodeName in %+v", d.Env)
	}

	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range d.VolumeMounts {
		mounts[m.MountPath] = m
	}
	for path, want := range map[string]struct {
		hostPath    string
		readOnly    bool
		propagation corev1.MountPropagationMode
	}{
		"/var/lib/meridian": {hostPath: "/var/lib/meridian"},
		"/var/run/meridian": {hostPath: "/var/run/meridian"},
	} {
		m, ok := mounts[path]
		if !ok {
			t.Errorf("meridiand does not mount %s", path)
			continue
		}
		v := vols[m.Name]
		if v.HostPath == nil || v.HostPath.Path != want.hostPath {
			t.Errorf("%s: volume %+v, want hostPath %s", path, v.VolumeSource, want.hostPath)
		}
		if m.ReadOnly != want.readOnly {
			t.Errorf("%s: readOnly %v", path, m.ReadOnly)
		}
		got := corev1.MountPropagationMode("")
		if m.MountPropagation != nil {
			got = *m.MountPropagation
		}
		if got != want.propagation && !(want.propagation == "" && got == corev1.MountPropagationNone) {
			t.Errorf("%s: propagation %q, want %q", path, got, want.propagation)
		}
	}

	// The CNI install: an unprivileged init container writing into the
	// host's CNI dirs from the chart's ConfigMap.
	if len(spec.InitContainers) != 1 {
		t.Fatalf("%d init containers, want install-cni only", len(spec.InitContainers))
	}
	ic := container(t, spec.InitContainers, "install-cni")
	if isc := ic.SecurityContext; isc == nil || isc.Privileged != nil && *isc.Privileged || isc.Capabilities == nil ||
		len(isc.Capabilities.Add) != 0 || !slices.Equal(isc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("install-cni securityContext %+v: want no capabilities, not privileged", isc)
	}
	icArgs := argMap(t, ic.Command[1:])
	icMounts := map[string]corev1.VolumeMount{}
	for _, m := range ic.VolumeMounts {
		icMounts[m.MountPath] = m
	}
	for flag, hostPath := range map[string]string{"cni-bin-dir": "/opt/cni/bin", "cni-conf-dir": "/etc/cni/net.d"} {
		m, ok := icMounts[icArgs[flag]]
		if !ok {
			t.Errorf("--%s=%s is not a mount of install-cni", flag, icArgs[flag])
			continue
		}
		if v := vols[m.Name]; v.HostPath == nil || v.HostPath.Path != hostPath {
			t.Errorf("--%s: volume %+v, want hostPath %s", flag, v.VolumeSource, hostPath)
		}
	}
	if icArgs["conflist"] != "/etc/meridian/cni/10-meridian.conflist" {
		t.Errorf("--conflist=%s", icArgs["conflist"])
	}
	if v := vols[icMounts["/etc/meridian/cni"].Name]; v.ConfigMap == nil || v.ConfigMap.Name != release+"-cni" {
		t.Errorf("conflist volume %+v, want ConfigMap %s-cni", v.VolumeSource, release)
	}

	// No mtu by default: meridiand's derived one applies.
	checkConflist(t, one(t, "ConfigMaps", objs.configMaps), "10-meridian.conflist", "/var/lib/meridian", 0)
	if len(objs.serviceMonitors) != 0 {
		t.Error("ServiceMonitor rendered by default")
	}
	svc := one(t, "Services", objs.services)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 9091 {
		t.Errorf("metrics Service %+v, want headless on 9091", svc.Spec)
	}
	cfg := one(t, "BGPConfigurations", objs.bgpConfigs)
	if cfg.Name != v1alpha1.BGPConfigurationName || cfg.Spec.ASNumber != 64512 || cfg.Spec.NodeToNodeMesh == nil || !*cfg.Spec.NodeToNodeMesh ||
		cfg.Spec.Encapsulation != v1alpha1.EncapsulationCrossSubnet {
		t.Errorf("BGPConfiguration %+v", cfg)
	}
	if len(objs.bgpPeers) != 0 {
		t.Errorf("%d BGPPeers by default", len(objs.bgpPeers))
	}
}

// checkConflist reads the conflist from the chart's ConfigMap and parses its
// plugin with meridian-cni's own parser, the way libcni hands it over.
func checkConflist(t *testing.T, cm corev1.ConfigMap, file, stateDir string, mtu int) {
	t.Helper()
	data, ok := cm.Data[file]
	if !ok {
		t.Fatalf("ConfigMap %s has no %s: %v", cm.Name, file, cm.Data)
	}
	var list struct {
		CNIVersion string            `json:"cniVersion"`
		Name       string            `json:"name"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(data), &list); err != nil {
		t.Fatalf("conflist is not JSON: %v\n%s", err, data)
	}
	if len(list.Plugins) != 1 {
		t.Fatalf("%d plugins, want 1", len(list.Plugins))
	}
	var p map[string]any
	if err := json.Unmarshal(list.Plugins[0], &p); err != nil {
		t.Fatal(err)
	}
	p["cniVersion"], p["name"] = list.CNIVersion, list.Name
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := config.Parse(b)
	if err != nil {
		t.Fatalf("meridian-cni refuses the chart's conflist: %v\n%s", err, data)
	}
	if conf.StateDir != stateDir {
		t.Errorf("conflist stateDir %q, want %q", conf.StateDir, stateDir)
	}
	// mtu 0: the conflist must not pin one.
	if v, set := p["mtu"]; mtu == 0 && set {
		t.Errorf("conflist pins mtu %v, want none", v)
	} else if mtu != 0 && conf.MTU != mtu {
		t.Errorf("conflist mtu %d, want %d", conf.MTU, mtu)
	}
}

func argMap(t *testing.T, args []string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			t.Errorf("argument %q is not --flag=value", a)
			continue
		}
		if _, dup := m[k]; dup {
			t.Errorf("--%s given twice", k)
		}
		m[k] = v
	}
	return m
}

func appVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	return c.AppVersion
}

// wantClusterRules are exactly the API calls meridiand makes, or will make
// once the Service, policy and BGP CRD work lands.
var wantClusterRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
	{APIGroups: []string{""}, Resources: []string{"pods", "namespaces", "services"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{"meridian.io"}, Resources: []string{"bgpconfigurations", "bgppeers"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"meridian.io"}, Resources: []string{"bgpconfigurations/status", "bgppeers/status"}, Verbs: []string{"update", "patch"}},
	{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
}

func rulesEqual(a, b []rbacv1.PolicyRule) bool {
	return slices.EqualFunc(a, b, func(x, y rbacv1.PolicyRule) bool {
		return slices.Equal(x.APIGroups, y.APIGroups) && slices.Equal(x.Resources, y.Resources) && slices.Equal(x.Verbs, y.Verbs) &&
			slices.Equal(x.ResourceNames, y.ResourceNames) && slices.Equal(x.NonResourceURLs, y.NonResourceURLs)
	})
}

func TestRBAC(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		objs := render(t)
		cr := one(t, "ClusterRoles", objs.clusterRoles)
		if !rulesEqual(cr.Rules, wantClusterRules) {
			got, _ := yaml.Marshal(cr.Rules)
			t.Errorf("ClusterRole rules:\n%s", got)
		}
		crb := one(t, "ClusterRoleBindings", objs.clusterBindings)
		sa := one(t, "ServiceAccounts", objs.serviceAccounts)
		if crb.RoleRef.Name != cr.Name || crb.RoleRef.Kind != "ClusterRole" || len(crb.Subjects) != 1 ||
			crb.Subjects[0] != (rbacv1.Subject{Kind: "ServiceAccount", Name: sa.Name, Namespace: namespace}) {
			t.Errorf("ClusterRoleBinding %+v does not bind %s to %s/%s", crb, cr.Name, namespace, sa.Name)
		}
		if len(objs.roles) != 0 || len(objs.roleBindings) != 0 {
			t.Errorf("%d Roles and %d RoleBindings with no BGP passwords", len(objs.roles), len(objs.roleBindings))
		}
	})
	t.Run("secrets of peers", func(t *testing.T) {
		objs := render(t, "--values", allValues)
		if cr := one(t, "ClusterRoles", objs.clusterRoles); !rulesEqual(cr.Rules, wantClusterRules) {
			t.Errorf("ClusterRole rules change with values: %+v", cr.Rules)
		}
		sa := one(t, "ServiceAccounts", objs.serviceAccounts)
		if sa.Name != "meridian-agent" {
			t.Errorf("ServiceAccount %q, want serviceAccount.name", sa.Name)
		}
		got := map[string][]rbacv1.PolicyRule{}
		for _, r := range objs.roles {
			got[r.Namespace] = r.Rules
		}
		secret := func(names ...string) []rbacv1.PolicyRule {
			return []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: names, Verbs: []string{"get"}}}
		}
		want := map[string][]rbacv1.PolicyRule{
			"kube-system": secret("tor-md5"), // two peers and an extra entry share it
			"network":     secret("other-peer-md5", "tor-md5-b"),
		}
		if len(got) != len(want) {
			t.Errorf("Roles in %v, want in %v", keys(got), keys(want))
		}
		for ns, rules := range want {
			if !rulesEqual(got[ns], rules) {
				t.Errorf("Role in %s: %+v, want %+v", ns, got[ns], rules)
			}
		}
		bound := map[string]bool{}
		for _, rb := range objs.roleBindings {
			if rb.RoleRef.Kind != "Role" || len(rb.Subjects) != 1 || rb.Subjects[0] != (rbacv1.Subject{Kind: "ServiceAccount", Name: sa.Name, Namespace: namespace}) {
				t.Errorf("RoleBinding %s/%s: %+v", rb.Namespace, rb.Name, rb)
			}
			for _, r := range objs.roles {
				if r.Namespace == rb.Namespace && r.Name == rb.RoleRef.Name {
					bound[r.Namespace] = true
				}
			}
		}
		if len(bound) != len(want) {
			t.Errorf("Roles bound in %v, want %v", keys(bound), keys(want))
		}
	})
}

func keys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func TestAllValues(t *testing.T) {
	objs := render(t, "--values", allValues)
	ds := one(t, "DaemonSets", objs.daemonSets)
	spec := ds.Spec.Template.Spec
	d := container(t, spec.Containers, "meridiand")

	if d.Image != "registry.example.com/meridian:0.1.0-test" || d.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("image %s pull %s", d.Image, d.ImagePullPolicy)
	}
	args := argMap(t, d.Args)
	for flag, want := range map[string]string{
		"asn": "4200000001", "bgp-port": "1179", "graceful-restart-time": "300s", "withdraw-on-stop": "true",
		"state-dir": "/var/lib/meridian-test", "api-socket": "/run/meridian-test/api.sock", "log-level": "debug",
		"metrics-addr": ":9191", "cluster-cidr": "10.244.0.0/16", "nat-outgoing": "true",
		"nodeport-addresses": "192.0.2.0/24,198.51.100.0/24", "api-listen": ":9443", "api-tls-secret": "/etc/meridian/api-tls",
		"example-flag": "1",
	} {
		if got, ok := args[flag]; !ok || got != want {
			t.Errorf("--%s=%q (present %v), want %q", flag, got, ok, want)
		}
	}
	if got := ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable; *got != intstr.FromString("10%") {
		t.Errorf("maxUnavailable %v", got)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range d.Env {
		env[e.Name] = e
	}
	for name, want := range map[string]string{"KUBERNETES_SERVICE_HOST": "192.0.2.100", "KUBERNETES_SERVICE_PORT": "6443", "GODEBUG": "netdns=go", "MERIDIAN_SOCKET": "/run/meridian-test/api.sock"} {
		if env[name].Value != want {
			t.Errorf("env %s=%q, want %q", name, env[name].Value, want)
		}
	}
	if e := env["HOST_IP"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil {
		t.Errorf("extraEnv valueFrom lost: %+v", e)
	}

	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]string{}
	for _, m := range d.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	if v := vols[mounts["/etc/meridian/api-tls"]]; v.Secret == nil || v.Secret.SecretName != "meridian-api-tls" {
		t.Errorf("API TLS volume %+v, want Secret meridian-api-tls", v.VolumeSource)
	}
	if v := vols[mounts["/run/meridian-test"]]; v.HostPath == nil || v.HostPath.Path != "/run/meridian-test" {
		t.Errorf("API socket dir volume %+v", v.VolumeSource)
	}
	if v := vols[mounts["/var/lib/meridian-test"]]; v.HostPath == nil || v.HostPath.Path != "/var/lib/meridian-test" {
		t.Errorf("state dir volume %+v", v.VolumeSource)
	}

	// The only privileged container is the opt-in ip_forward one.
	fwd := container(t, spec.InitContainers, "enable-ip-forward")
	if fwd.SecurityContext == nil || fwd.SecurityContext.Privileged == nil || !*fwd.SecurityContext.Privileged {
		t.Errorf("enable-ip-forward is not privileged: %+v", fwd.SecurityContext)
	}
	for _, c := range append(slices.Clone(spec.Containers), container(t, spec.InitContainers, "install-cni")) {
		if c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged {
			t.Errorf("%s is privileged", c.Name)
		}
	}
	ic := container(t, spec.InitContainers, "install-cni")
	icArgs := argMap(t, ic.Command[1:])
	icMounts := map[string]string{}
	for _, m := range ic.VolumeMounts {
		icMounts[m.MountPath] = m.Name
	}
	for flag, hostPath := range map[string]string{"cni-bin-dir": "/usr/libexec/cni", "cni-conf-dir": "/etc/cni/conf.d"} {
		if v := vols[icMounts[icArgs[flag]]]; v.HostPath == nil || v.HostPath.Path != hostPath {
			t.Errorf("--%s: volume %+v, want hostPath %s", flag, v.VolumeSource, hostPath)
		}
	}
	checkConflist(t, one(t, "ConfigMaps", objs.configMaps), "05-meridian.conflist", "/var/lib/meridian-test", 1480)

	sm := one(t, "ServiceMonitors", objs.serviceMonitors)
	smJSON, _ := json.Marshal(sm)
	for _, want := range []string{`"release":"prometheus"`, `"port":"metrics"`, `"path":"/metrics"`, `"interval":"15s"`} {
		if !strings.Contains(string(smJSON), want) {
			t.Errorf("ServiceMonitor lacks %s: %s", want, smJSON)
		}
	}
	svc := one(t, "Services", objs.services)
	if svc.Spec.Ports[0].Port != 9191 {
		t.Errorf("metrics Service port %d", svc.Spec.Ports[0].Port)
	}

	cfg := one(t, "BGPConfigurations", objs.bgpConfigs)
	if cfg.Spec.ASNumber != 4200000001 || *cfg.Spec.NodeToNodeMesh || cfg.Spec.Encapsulation != v1alpha1.EncapsulationCrossSubnet ||
		cfg.Spec.LocalPreference == nil || *cfg.Spec.LocalPreference != 200 || len(cfg.Spec.ServiceLoadBalancerIPs) != 1 {
		t.Errorf("BGPConfiguration spec %+v", cfg.Spec)
	}
	if len(objs.bgpPeers) != 3 {
		t.Fatalf("%d BGPPeers, want 3", len(objs.bgpPeers))
	}
	p := objs.bgpPeers[0]
	if p.Name != "tor-rack-a" || p.Spec.PeerIP != "192.0.2.1" || p.Spec.ASNumber != 65001 || p.Spec.Password == nil ||
		p.Spec.Password.Name != "tor-md5" || p.Spec.NodeSelector == nil {
		t.Errorf("BGPPeer %+v", p)
	}
}

// TestCustomResourcesAdmitted runs the rendered BGPConfiguration and
// BGPPeers through the API server's validation of the chart's CRDs
// (OpenAPI schema, then CEL), as `helm install` would have them checked.
func TestCustomResourcesAdmitted(t *testing.T) {
	objs := render(t, "--values", allValues)
	if len(objs.crds) != 2 {
		t.Fatalf("%d CRDs rendered with --include-crds, want 2", len(objs.crds))
	}
	validators := map[string]func(*unstructured.Unstructured) error{}
	for _, crd := range objs.crds {
		var internal apiextensions.CustomResourceValidation
		if err := apiextensionsv1.Convert_v1_CustomResourceValidation_To_apiextensions_CustomResourceValidation(crd.Spec.Versions[0].Schema, &internal, nil); err != nil {
			t.Fatalf("%s: convert: %v", crd.Name, err)
		}
		s, err := structuralschema.NewStructural(internal.OpenAPIV3Schema)
		if err != nil {
			t.Fatalf("%s: structural: %v", crd.Name, err)
		}
		sv, _, err := apiservervalidation.NewSchemaValidator(internal.OpenAPIV3Schema)
		if err != nil {
			t.Fatalf("%s: schema validator: %v", crd.Name, err)
		}
		celv := cel.NewValidator(s, true, celconfig.PerCallLimit)
		validators[crd.Spec.Names.Kind] = func(u *unstructured.Unstructured) error {
			structuraldefaulting.Default(u.Object, s)
			errs := apiservervalidation.ValidateCustomResource(nil, u.Object, sv)
			celErrs, _ := celv.Validate(context.Background(), nil, s, u.Object, nil, celconfig.RuntimeCELCostBudget)
			return append(errs, celErrs...).ToAggregate()
		}
	}
	if len(objs.custom) != 4 {
		t.Fatalf("%d meridian.io objects, want 4", len(objs.custom))
	}
	for _, u := range objs.custom {
		v, ok := validators[u.GetKind()]
		if !ok {
			t.Fatalf("no CRD for %s", u.GetKind())
		}
		if err := v(u); err != nil {
			t.Errorf("%s %s refused: %v", u.GetKind(), u.GetName(), err)
		}
	}
}

// TestSchemaRefusesBadValues: values.schema.json stops a wrong value at
// install time, before anything reaches a node.
func TestSchemaRefusesBadValues(t *testing.T) {
	for name, set := range map[string][]string{
		"asn 0":                  {"--set", "bgp.asn=0"},
		"asn too large":          {"--set", "bgp.asn=4294967296"},
		"mtu 100":                {"--set", "cni.mtu=100"},
		"mtu 9001":               {"--set", "cni.mtu=9001"},
		"port as string":         {"--set-string", "bgp.port=179"},
		"metrics port 0":         {"--set", "metrics.port=0"},
		"mesh as string":         {"--set-string", "bgp.nodeToNodeMesh=yes"},
		"unknown encapsulation":  {"--set", "encapsulation=VXLAN"},
		"unknown log level":      {"--set", "logLevel=trace"},
		"unknown pull policy":    {"--set", "image.pullPolicy=Sometimes"},
		"relative cni bin dir":   {"--set", "cni.binDir=opt/cni/bin"},
		"cluster cidr not cidr":  {"--set", "clusterCIDR=10.244.0.0"},
		"unknown top-level key":  {"--set", "asn=64512"},
		"peer without asNumber":  {"--set", "bgp.peers[0].name=x", "--set", "bgp.peers[0].peerIP=192.0.2.1"},
		"peer with bad IP":       {"--set", "bgp.peers[0].name=x", "--set", "bgp.peers[0].peerIP=192.0.2.300", "--set", "bgp.peers[0].asNumber=65000"},
		"peer node and selector": {"--values", writeValues(t, "bgp:\n  peers:\n    - {name: x, peerIP: 192.0.2.1, asNumber: 65000, node: a, nodeSelector: {matchLabels: {a: b}}}\n")},
		"cni version 0.3.1":      {"--set", "cni.cniVersion=0.3.1"},
		"veth prefix too long":   {"--set", "cni.hostVethPrefix=meridian"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := template(t, set...)
			if err == nil {
				t.Fatalf("helm template %v succeeded", set)
			}
			if !strings.Contains(err.Error(), "values don't meet the specifications of the schema") {
				t.Errorf("not a schema error: %v", err)
			}
		})
	}
	// Consistency the schema cannot express fails in the templates.
	for name, set := range map[string][]string{
		"TCP API without TLS":                    {"--set", "api.tcp.enabled=true"},
		"ServiceMonitor without metrics Service": {"--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.service.enabled=false"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := template(t, set...); err == nil {
				t.Fatalf("helm template %v succeeded", set)
			}
		})
	}
	// The edges of the ranges are accepted.
	for _, set := range [][]string{
		{"--set", "bgp.asn=1", "--set", "cni.mtu=576"},
		{"--set", "bgp.asn=4294967294", "--set", "cni.mtu=9000"},
	} {
		if _, err := template(t, set...); err != nil {
			t.Errorf("%v refused: %v", set, err)
		}
	}
}

func writeValues(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCRDsMatchGenerated: the chart ships a copy of api/crd/manifests (Helm
// reads crds/ only from inside the chart). `make chart-crds` refreshes it.
func TestCRDsMatchGenerated(t *testing.T) {
	want, err := filepath.Glob("../api/crd/manifests/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := filepath.Glob(filepath.Join(chartDir, "crds", "*"))
	if err != nil {
		t.Fatal(err)
	}
	base := func(ps []string) []string {
		out := make([]string, len(ps))
		for i, p := range ps {
			out[i] = filepath.Base(p)
		}
		return out
	}
	if !slices.Equal(base(got), base(want)) || len(want) == 0 {
		t.Fatalf("charts/meridian/crds holds %v, api/crd/manifests %v: run make chart-crds", base(got), base(want))
	}
	for _, p := range want {
		a, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(chartDir, "crds", filepath.Base(p)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("charts/meridian/crds/%s differs from api/crd/manifests: run make chart-crds", filepath.Base(p))
		}
	}
	// And they are the CRDs meridiand's own tests validate.
	crds, err := manifests.CRDs()
	if err != nil {
		t.Fatal(err)
	}
	if len(crds) != len(want) {
		t.Errorf("manifests.CRDs() has %d, the directory %d", len(crds), len(want))
	}
}

var flagLine = regexp.MustCompile(`(?m)^\s+-([a-z0-9-]+)`)

// TestArgsAreMeridiandFlags: every flag the chart passes, with every option
// on, is one bin/meridiand defines or one of pendingFlags. A pending flag
// meridiand has gained is logged, so the list can shrink.
func TestArgsAreMeridiandFlags(t *testing.T) {
	bin := tool(t, "meridiand")
	out, _ := exec.Command(bin, "-h").CombinedOutput() // -h exits 2 with the usage
	defined := map[string]bool{}
	for _, m := range flagLine.FindAllStringSubmatch(string(out), -1) {
		defined[m[1]] = true
	}
	if !defined["asn"] || !defined["state-dir"] {
		t.Fatalf("cannot read meridiand's flags from -h:\n%s", out)
	}
	for _, f := range pendingFlags {
		if defined[f] {
			t.Logf("meridiand now has --%s: drop it from pendingFlags and the PENDING notes", f)
		}
	}
	objs := render(t, "--values", allValues, "--set", "extraArgs=null")
	d := container(t, one(t, "DaemonSets", objs.daemonSets).Spec.Template.Spec.Containers, "meridiand")
	for flag := range argMap(t, d.Args) {
		if !defined[flag] && !slices.Contains(pendingFlags, flag) {
			t.Errorf("the chart passes --%s, which meridiand does not define and is not pending", flag)
		}
	}

	// metrics.enabled=false is the way to run a meridiand without the
	// pending flags: then every flag must be one it has.
	objs = render(t, "--set", "metrics.enabled=false")
	spec := one(t, "DaemonSets", objs.daemonSets).Spec.Template.Spec
	d = container(t, spec.Containers, "meridiand")
	for flag := range argMap(t, d.Args) {
		if !defined[flag] {
			t.Errorf("with metrics.enabled=false the chart passes --%s, which meridiand does not define", flag)
		}
	}
	if d.LivenessProbe != nil || d.ReadinessProbe != nil || len(objs.services) != 0 {
		t.Error("probes or metrics Service without the metrics listener")
	}
}
