package crds

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meridian-net/meridian/api/crd/manifests"
	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	"github.com/meridian-net/meridian/integration/lab"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
)

// binDir returns the directory with the Kubernetes binaries and
// meridian-lab, skipping the test when they are missing unless
// MERIDIAN_REQUIRE_LAB=1 (the same lookup as integration/lab's tests).
func binDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("MERIDIAN_REQUIRE_LAB") == "1" {
			t.Fatal("MERIDIAN_REQUIRE_LAB=1 but not root")
		}
		t.Skip("needs root")
	}
	dir := os.Getenv("MERIDIAN_BIN_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "bin")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "meridian-lab"} {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		msg := "missing in " + dir + ": " + strings.Join(missing, ", ") + " (make build and hack/build-tools.sh build them)"
		if os.Getenv("MERIDIAN_REQUIRE_LAB") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return dir
}

var (
	peers   = v1alpha1.SchemeGroupVersion.WithResource("bgppeers")
	configs = v1alpha1.SchemeGroupVersion.WithResource("bgpconfigurations")
)

func obj(kind, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.SchemeGroupVersion.String(),
		"kind":       kind,
		"metadata":   map[string]any{"name": name},
	}}
	if spec != nil {
		u.Object["spec"] = spec
	}
	return u
}

func TestCRDsInAPIServer(t *testing.T) {
	bin := binDir(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	stateDir := t.TempDir()
	start := time.Now()
	l, err := lab.Up(ctx, lab.Options{Nodes: 1, BinDir: bin, StateDir: stateDir, NoDaemon: true})
	if err != nil {
		_ = lab.Down(context.Background(), stateDir)
		t.Fatalf("lab up: %v", err)
	}
	defer func() {
		if err := lab.Down(context.Background(), stateDir); err != nil {
			t.Errorf("lab down: %v", err)
		}
	}()
	t.Logf("lab up in %s", time.Since(start).Round(time.Millisecond))

	cfg, err := clientcmd.BuildConfigFromFlags("", l.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	ext, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	crds, err := manifests.CRDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, crd := range crds {
		// Create refuses a CEL rule that does not compile or exceeds the
		// cost budget, so this is also the check that the rules are sound.
		if _, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create CRD %s: %v", crd.Name, err)
		}
	}
	for _, crd := range crds {
		waitEstablished(ctx, t, ext, crd.Name)
	}

	t.Run("valid", func(t *testing.T) { testValid(ctx, t, dyn) })
	t.Run("invalid", func(t *testing.T) { testInvalid(ctx, t, dyn) })
}

func waitEstablished(ctx context.Context, t *testing.T, ext apiextensionsclient.Interface, name string) {
	t.Helper()
	var last *apiextensionsv1.CustomResourceDefinition
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		crd, err := ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		last = crd
		for _, c := range crd.Status.Conditions {
			if c.Type == apiextensionsv1.NonStructuralSchema && c.Status == apiextensionsv1.ConditionTrue {
				return false, errors.New("non-structural schema: " + c.Message)
			}
			if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("CRD %s not established: %v (conditions %+v)", name, err, last.Status.Conditions)
	}
}

// create creates u, retrying while the new resource is not yet served:
// Established is set before every API server handler has the new type.
func create(ctx context.Context, dyn dynamic.Interface, u *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	res := peers
	if u.GetKind() == "BGPConfiguration" {
		res = configs
	}
	var out *unstructured.Unstructured
	var err error
	_ = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		out, err = dyn.Resource(res).Create(ctx, u, metav1.CreateOptions{})
		return !apierrors.IsNotFound(err), nil
	})
	return out, err
}

func field(t *testing.T, u *unstructured.Unstructured, path ...string) any {
	t.Helper()
	v, ok, err := unstructured.NestedFieldNoCopy(u.Object, path...)
	if err != nil || !ok {
		t.Errorf("%s %s: no field %s (err %v) in %v", u.GetKind(), u.GetName(), strings.Join(path, "."), err, u.Object)
		return nil
	}
	return v
}

func testValid(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	// Defaults on a minimal peer.
	p, err := create(ctx, dyn, obj("BGPPeer", "tor1", map[string]any{
		"peerIP": "192.0.2.1", "asNumber": int64(65001),
		"maxPrefixes": map[string]any{"limit": int64(100)},
	}))
	if err != nil {
		t.Fatalf("minimal BGPPeer refused: %v", err)
	}
	for _, c := range []struct {
		path []string
		want any
	}{
		{[]string{"spec", "holdTime"}, "90s"},
		{[]string{"spec", "gracefulRestart", "enabled"}, true},
		{[]string{"spec", "maxPrefixes", "action"}, "Restart"},
	} {
		if got := field(t, p, c.path...); got != c.want {
			t.Errorf("BGPPeer default %s = %v, want %v", strings.Join(c.path, "."), got, c.want)
		}
	}

	// Every field set.
	if _, err := create(ctx, dyn, obj("BGPPeer", "tor2", map[string]any{
		"peerIP": "192.0.2.2", "asNumber": int64(4200000000),
		"nodeSelector":    map[string]any{"matchLabels": map[string]any{"rack": "r2"}},
		"sourceAddress":   "192.0.2.10",
		"ebgpMultihop":    int64(2),
		"password":        map[string]any{"name": "bgp", "key": "tor2", "namespace": "kube-system"},
		"holdTime":        "9s",
		"keepaliveTime":   "3s",
		"gracefulRestart": map[string]any{"enabled": false, "restartTime": "2m"},
		"passive":         true,
		"maxPrefixes":     map[string]any{"limit": int64(1000), "action": "Drop"},
	})); err != nil {
		t.Errorf("full BGPPeer refused: %v", err)
	}
	// A node instead of a selector; hold time 0 disables keepalives.
	if _, err := create(ctx, dyn, obj("BGPPeer", "tor3", map[string]any{
		"peerIP": "192.0.2.3", "asNumber": int64(65003), "node": "node-1",
		"holdTime": "0s", "keepaliveTime": "0s",
	})); err != nil {
		t.Errorf("BGPPeer with node and hold time 0 refused: %v", err)
	}

	// A BGPConfiguration with no spec at all gets every default.
	c, err := create(ctx, dyn, obj("BGPConfiguration", "default", nil))
	if err != nil {
		t.Fatalf("empty BGPConfiguration refused: %v", err)
	}
	for _, d := range []struct {
		path []string
		want any
	}{
		{[]string{"spec", "asNumber"}, int64(64512)},
		{[]string{"spec", "nodeToNodeMesh"}, true},
		{[]string{"spec", "encapsulation"}, "CrossSubnet"},
	} {
		if got := field(t, c, d.path...); got != d.want {
			t.Errorf("BGPConfiguration default %s = %v (%T), want %v", strings.Join(d.path, "."), got, got, d.want)
		}
	}
	// An explicit false must stay false, and every field is accepted.
	c.Object["spec"] = map[string]any{
		"asNumber": int64(4200000000), "nodeToNodeMesh": false,
		"routeReflectorClusterID": "10.0.0.1",
		"communities":             []any{"65000:100", "64512:1:4294967295"},
		"localPreference":         int64(200),
		"acceptedPrefixes":        []any{"10.244.0.0/16", "fd00::/48"},
		"encapsulation":           "Always",
		"serviceClusterIPs":       []any{map[string]any{"cidr": "10.96.0.0/12"}},
		"serviceExternalIPs":      []any{map[string]any{"cidr": "198.51.100.0/24"}},
		"serviceLoadBalancerIPs":  []any{map[string]any{"cidr": "203.0.113.0/24"}},
	}
	c, err = dyn.Resource(configs).Update(ctx, c, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("full BGPConfiguration refused: %v", err)
	}
	if got := field(t, c, "spec", "nodeToNodeMesh"); got != false {
		t.Errorf("nodeToNodeMesh = %v after setting false", got)
	}

	// Status is a subresource: meridiand writes conditions there.
	c.Object["status"] = map[string]any{
		"observedGeneration": c.GetGeneration(),
		"conditions": []any{map[string]any{
			"type": v1alpha1.ConditionAccepted, "status": "True", "reason": "Valid", "message": "",
			"lastTransitionTime": "2026-01-02T03:04:05Z",
		}},
	}
	if _, err := dyn.Resource(configs).UpdateStatus(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Errorf("update BGPConfiguration status: %v", err)
	}
}

func testInvalid(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	peer := func(name string, extra map[string]any) *unstructured.Unstructured {
		spec := map[string]any{"peerIP": "192.0.2.1", "asNumber": int64(65001)}
		for k, v := range extra {
			spec[k] = v
		}
		return obj("BGPPeer", name, spec)
	}
	for _, tc := range []struct {
		name string
		obj  *unstructured.Unstructured
		// want are substrings of the API server's message.
		want []string
	}{
		{"config not named default", obj("BGPConfiguration", "other", map[string]any{}),
			[]string{"must be named default"}},
		{"peerIP not an IP", peer("bad-ip", map[string]any{"peerIP": "tor1.example"}),
			[]string{"spec.peerIP", "must be an IPv4 address"}},
		{"peerIP IPv6", peer("bad-ip6", map[string]any{"peerIP": "2001:db8::1"}),
			[]string{"spec.peerIP", "must be an IPv4 address"}},
		{"peerIP missing", obj("BGPPeer", "no-ip", map[string]any{"asNumber": int64(65001)}),
			[]string{"spec.peerIP", "Required value"}},
		{"asNumber 0", peer("asn0", map[string]any{"asNumber": int64(0)}),
			[]string{"spec.asNumber", "should be greater than or equal to 1"}},
		{"asNumber too large", peer("asn-big", map[string]any{"asNumber": int64(4294967295)}),
			[]string{"spec.asNumber", "should be less than or equal to 4294967294"}},
		{"node and nodeSelector", peer("both", map[string]any{
			"node": "node-1", "nodeSelector": map[string]any{"matchLabels": map[string]any{"rack": "r1"}}}),
			[]string{"node and nodeSelector are mutually exclusive"}},
		{"keepalive equals hold", peer("ka-eq", map[string]any{"holdTime": "9s", "keepaliveTime": "9s"}),
			[]string{"keepaliveTime must be less than holdTime"}},
		{"keepalive above default hold", peer("ka-default", map[string]any{"keepaliveTime": "100s"}),
			[]string{"keepaliveTime must be less than holdTime"}},
		{"hold 2s", peer("hold2", map[string]any{"holdTime": "2s"}),
			[]string{"holdTime must be 0 (no keepalives) or at least 3s"}},
		{"hold not a duration", peer("hold-bad", map[string]any{"holdTime": "ninety"}),
			[]string{"spec.holdTime", "should match"}},
		{"ttl 0", peer("ttl0", map[string]any{"ebgpMultihop": int64(0)}),
			[]string{"spec.ebgpMultihop", "greater than or equal to 1"}},
		{"restart time too long", peer("gr-long", map[string]any{"gracefulRestart": map[string]any{"restartTime": "4096s"}}),
			[]string{"restartTime must be between 1s and 4095s"}},
		{"password without key", peer("pw", map[string]any{"password": map[string]any{"name": "bgp", "namespace": "kube-system"}}),
			[]string{"spec.password.key", "Required value"}},
		{"max prefixes action", peer("mp", map[string]any{"maxPrefixes": map[string]any{"limit": int64(5), "action": "Ignore"}}),
			[]string{"spec.maxPrefixes.action", "Unsupported value", `"Drop"`}},
		{"encapsulation Sometimes", obj("BGPConfiguration", "default", map[string]any{"encapsulation": "Sometimes"}),
			[]string{"spec.encapsulation", "Unsupported value", `"CrossSubnet"`}},
		{"community out of range", obj("BGPConfiguration", "default", map[string]any{"communities": []any{"70000:1"}}),
			[]string{"spec.communities[0]", "a standard community has two parts of at most 65535"}},
		{"community malformed", obj("BGPConfiguration", "default", map[string]any{"communities": []any{"no-export"}}),
			[]string{"spec.communities[0]", "should match"}},
		{"prefix with host bits", obj("BGPConfiguration", "default", map[string]any{"acceptedPrefixes": []any{"10.244.1.1/16"}}),
			[]string{"spec.acceptedPrefixes[0]", "no host bits set"}},
		{"cluster ID not IPv4", obj("BGPConfiguration", "default", map[string]any{"routeReflectorClusterID": "1"}),
			[]string{"spec.routeReflectorClusterID", "must be an IPv4 address"}},
		{"service CIDR not a CIDR", obj("BGPConfiguration", "default", map[string]any{"serviceClusterIPs": []any{map[string]any{"cidr": "10.96.0.0"}}}),
			[]string{"spec.serviceClusterIPs[0].cidr", "must be a CIDR"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := peers
			if tc.obj.GetKind() == "BGPConfiguration" {
				res = configs
			}
			// Dry run, so nothing refused by mistake would stay behind. The
			// default BGPConfiguration exists already: replace it, or Create
			// would answer AlreadyExists before looking at the schema.
			dryRun := []string{metav1.DryRunAll}
			var err error
			if tc.obj.GetKind() == "BGPConfiguration" && tc.obj.GetName() == "default" {
				cur, gerr := dyn.Resource(res).Get(ctx, "default", metav1.GetOptions{})
				if gerr != nil {
					t.Fatal(gerr)
				}
				tc.obj.SetResourceVersion(cur.GetResourceVersion())
				_, err = dyn.Resource(res).Update(ctx, tc.obj, metav1.UpdateOptions{DryRun: dryRun})
			} else {
				_, err = dyn.Resource(res).Create(ctx, tc.obj, metav1.CreateOptions{DryRun: dryRun})
			}
			if err == nil {
				t.Fatalf("accepted: %v", tc.obj.Object)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("refused but not as Invalid: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message lacks %q: %v", w, err)
				}
			}
			// A rule that failed to evaluate (say duration() on a string the
			// pattern already refused) would bury the real reason.
			for _, bad := range []string{"conversion error", "evaluating rule", "evaluation error"} {
				if strings.Contains(err.Error(), bad) {
					t.Errorf("message has a rule evaluation error (%q): %v", bad, err)
				}
			}
			t.Logf("refused: %v", err)
		})
	}
}
