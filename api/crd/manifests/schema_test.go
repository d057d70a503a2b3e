package manifests

import (
	"context"
	"strings"
	"testing"

	"github.com/meridian-net/meridian/api/crd/crdtest"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	crdvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
)

// These tests run the API server's own CRD and custom resource validation
// code in process, so the CEL rules, defaults and bounds are checked by every
// `make unit-test`, without root or a lab; integration/crds runs the same
// cases against a real kube-apiserver.

// TestCRDsAreValid is what the API server checks on CRD creation: a
// structural schema, CEL rules that compile and fit the cost budget.
func TestCRDsAreValid(t *testing.T) {
	crds, err := CRDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, crd := range crds {
		v1 := crd.DeepCopy()
		apiextensionsv1.SetObjectDefaults_CustomResourceDefinition(v1)
		var internal apiextensions.CustomResourceDefinition
		if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(v1, &internal, nil); err != nil {
			t.Fatalf("%s: convert: %v", crd.Name, err)
		}
		if errs := crdvalidation.ValidateCustomResourceDefinition(context.Background(), &internal); len(errs) > 0 {
			t.Errorf("%s: the API server would refuse it: %v", crd.Name, errs.ToAggregate())
		}
	}
}

// validator judges custom resources the way the API server's create path
// does: defaults, OpenAPI schema, then CEL rules.
type validator struct {
	structural *structuralschema.Structural
	schema     apiservervalidation.SchemaValidator
	cel        *cel.Validator
}

func validators(t *testing.T) map[string]validator {
	t.Helper()
	crds, err := CRDs()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]validator{}
	for _, crd := range crds {
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
		out[crd.Spec.Names.Kind] = validator{structural: s, schema: sv, cel: cel.NewValidator(s, true, celconfig.PerCallLimit)}
	}
	return out
}

func (v validator) admit(u *unstructured.Unstructured) field.ErrorList {
	structuraldefaulting.Default(u.Object, v.structural)
	errs := apiservervalidation.ValidateCustomResource(nil, u.Object, v.schema)
	celErrs, _ := v.cel.Validate(context.Background(), nil, v.structural, u.Object, nil, celconfig.RuntimeCELCostBudget)
	return append(errs, celErrs...)
}

func TestValidObjects(t *testing.T) {
	vs := validators(t)
	for _, tc := range crdtest.ValidCases() {
		t.Run(tc.Name, func(t *testing.T) {
			if errs := vs[tc.Object.GetKind()].admit(tc.Object); len(errs) > 0 {
				t.Fatalf("refused: %v", errs.ToAggregate())
			}
			for path, want := range tc.Defaults {
				got, ok, err := unstructured.NestedFieldNoCopy(tc.Object.Object, strings.Split(path, ".")...)
				if err != nil || !ok || got != want {
					t.Errorf("%s = %v (%T, present %v), want %v", path, got, got, ok, want)
				}
			}
		})
	}
}

func TestInvalidObjects(t *testing.T) {
	vs := validators(t)
	for _, tc := range crdtest.InvalidCases() {
		t.Run(tc.Name, func(t *testing.T) {
			errs := vs[tc.Object.GetKind()].admit(tc.Object)
			if len(errs) == 0 {
				t.Fatalf("accepted: %v", tc.Object.Object)
			}
			msg := errs.ToAggregate().Error()
			for _, w := range tc.Want {
				if !strings.Contains(msg, w) {
					t.Errorf("message lacks %q: %s", w, msg)
				}
			}
			for _, bad := range crdtest.EvaluationErrors {
				if strings.Contains(msg, bad) {
					t.Errorf("message has a rule evaluation error (%q): %s", bad, msg)
				}
			}
		})
	}
}
