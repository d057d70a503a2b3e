package crds

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meridian-net/meridian/api/crd/crdtest"
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
		// The lab installs the CRDs at up; then a dry-run update with these
		// manifests goes through the same validation.
		crdClient := ext.ApiextensionsV1().CustomResourceDefinitions()
		_, err := crdClient.Create(ctx, crd, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			var cur *apiextensionsv1.CustomResourceDefinition
			if cur, err = crdClient.Get(ctx, crd.Name, metav1.GetOptions{}); err == nil {
				upd := cur.DeepCopy()
				upd.Spec = crd.Spec
				_, err = crdClient.Update(ctx, upd, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
			}
		}
		if err != nil {
			t.Fatalf("create CRD %s: %v", crd.Name, err)
		}
	}
	for _, crd := range crds {
		waitEstablished(ctx, t, ext, crd.Name)
	}

	t.Run("valid", func(t *testing.T) { testValid(ctx, t, dyn) })
	t.Run("status", func(t *testing.T) { testStatus(ctx, t, dyn) })
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
		var conds []apiextensionsv1.CustomResourceDefinitionCondition
		if last != nil {
			conds = last.Status.Conditions
		}
		t.Fatalf("CRD %s not established: %v (conditions %+v)", name, err, conds)
	}
}

// submit creates u, or replaces it when it is the BGPConfiguration named
// default and that exists already (Create would answer AlreadyExists before
// looking at the schema). It retries while the resource is not yet served:
// Established is set before every API server handler has the new type.
func submit(ctx context.Context, dyn dynamic.Interface, u *unstructured.Unstructured, dryRun bool) (*unstructured.Unstructured, error) {
	res := peers
	if u.GetKind() == "BGPConfiguration" {
		res = configs
	}
	var opts []string
	if dryRun {
		opts = []string{metav1.DryRunAll}
	}
	var out *unstructured.Unstructured
	var err error
	_ = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		out, err = dyn.Resource(res).Create(ctx, u, metav1.CreateOptions{DryRun: opts})
		if apierrors.IsAlreadyExists(err) && u.GetKind() == "BGPConfiguration" {
			var cur *unstructured.Unstructured
			if cur, err = dyn.Resource(res).Get(ctx, u.GetName(), metav1.GetOptions{}); err != nil {
				return true, nil
			}
			u.SetResourceVersion(cur.GetResourceVersion())
			out, err = dyn.Resource(res).Update(ctx, u, metav1.UpdateOptions{DryRun: opts})
		}
		return !apierrors.IsNotFound(err), nil
	})
	return out, err
}

func testValid(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	for _, tc := range crdtest.ValidCases() {
		t.Run(tc.Name, func(t *testing.T) {
			out, err := submit(ctx, dyn, tc.Object, false)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			for path, want := range tc.Defaults {
				got, ok, err := unstructured.NestedFieldNoCopy(out.Object, strings.Split(path, ".")...)
				if err != nil || !ok || got != want {
					t.Errorf("%s = %v (%T, present %v), want %v", path, got, got, ok, want)
				}
			}
		})
	}
}

// testStatus writes conditions through the status subresource, the way
// meridiand reports an object it could not use.
func testStatus(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	c, err := dyn.Resource(configs).Get(ctx, v1alpha1.BGPConfigurationName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.Object["status"] = map[string]any{
		"observedGeneration": c.GetGeneration(),
		"conditions": []any{map[string]any{
			"type": v1alpha1.ConditionAccepted, "status": "False", "reason": "SecretNotFound",
			"message": "secret kube-system/bgp has no key tor2", "lastTransitionTime": "2026-01-02T03:04:05Z",
		}},
	}
	out, err := dyn.Resource(configs).UpdateStatus(ctx, c, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("update status: %v", err)
	}
	if out.GetGeneration() != c.GetGeneration() {
		t.Errorf("a status write changed the generation %d -> %d", c.GetGeneration(), out.GetGeneration())
	}
	conds, _, _ := unstructured.NestedSlice(out.Object, "status", "conditions")
	if len(conds) != 1 {
		t.Errorf("status conditions after update: %v", conds)
	}
}

func testInvalid(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	for _, tc := range crdtest.InvalidCases() {
		t.Run(tc.Name, func(t *testing.T) {
			// Dry run, so nothing accepted by mistake stays behind.
			_, err := submit(ctx, dyn, tc.Object, true)
			if err == nil {
				t.Fatalf("accepted: %v", tc.Object.Object)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("refused but not as Invalid: %v", err)
			}
			for _, w := range tc.Want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message lacks %q: %v", w, err)
				}
			}
			// A rule that failed to evaluate (say duration() on a string the
			// pattern already refused) would bury the real reason.
			for _, bad := range crdtest.EvaluationErrors {
				if strings.Contains(err.Error(), bad) {
					t.Errorf("message has a rule evaluation error (%q): %v", bad, err)
				}
			}
			t.Logf("refused: %v", err)
		})
	}
}
