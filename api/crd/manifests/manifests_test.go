package manifests

import (
	"slices"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
)

func crdByName(t *testing.T, name string) *apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	crds, err := CRDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range crds {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no CRD %s among %d", name, len(crds))
	return nil
}

// schemaAt walks properties (and "[]" for array items) from the root schema.
func schemaAt(t *testing.T, crd *apiextensionsv1.CustomResourceDefinition, path string) apiextensionsv1.JSONSchemaProps {
	t.Helper()
	if len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Schema == nil {
		t.Fatalf("%s: want one version with a schema", crd.Name)
	}
	s := *crd.Spec.Versions[0].Schema.OpenAPIV3Schema
	if path == "" {
		return s
	}
	for _, p := range strings.Split(path, ".") {
		if p == "[]" {
			if s.Items == nil || s.Items.Schema == nil {
				t.Fatalf("%s: %s: no items schema", crd.Name, path)
			}
			s = *s.Items.Schema
			continue
		}
		next, ok := s.Properties[p]
		if !ok {
			t.Fatalf("%s: %s: no property %q", crd.Name, path, p)
		}
		s = next
	}
	return s
}

func hasRule(s apiextensionsv1.JSONSchemaProps, fragment string) bool {
	return slices.ContainsFunc(s.XValidations, func(r apiextensionsv1.ValidationRule) bool {
		return strings.Contains(r.Rule, fragment) && r.Message != ""
	})
}

func TestCRDsParse(t *testing.T) {
	crds, err := CRDs()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range crds {
		names = append(names, c.Name)
		if c.Spec.Group != "meridian.io" {
			t.Errorf("%s: group %q", c.Name, c.Spec.Group)
		}
		if c.Spec.Scope != apiextensionsv1.ClusterScoped {
			t.Errorf("%s: scope %q, want Cluster", c.Name, c.Spec.Scope)
		}
		if len(c.Spec.Versions) != 1 {
			t.Fatalf("%s: %d versions", c.Name, len(c.Spec.Versions))
		}
		v := c.Spec.Versions[0]
		if v.Name != "v1alpha1" || !v.Served || !v.Storage {
			t.Errorf("%s: version %s served=%v storage=%v", c.Name, v.Name, v.Served, v.Storage)
		}
		if v.Subresources == nil || v.Subresources.Status == nil {
			t.Errorf("%s: no status subresource", c.Name)
		}
		var cols []string
		for _, col := range v.AdditionalPrinterColumns {
			cols = append(cols, col.Name)
		}
		if !slices.Contains(cols, "ASN") || !slices.Contains(cols, "Accepted") {
			t.Errorf("%s: printer columns %v lack ASN or Accepted", c.Name, cols)
		}
	}
	want := []string{"bgpconfigurations.meridian.io", "bgppeers.meridian.io"}
	if !slices.Equal(names, want) {
		t.Errorf("CRDs %v, want %v", names, want)
	}
}

func TestDefaults(t *testing.T) {
	for _, tc := range []struct {
		crd, path, want string
	}{
		{"bgpconfigurations.meridian.io", "spec", "{}"},
		{"bgpconfigurations.meridian.io", "spec.asNumber", "64512"},
		{"bgpconfigurations.meridian.io", "spec.nodeToNodeMesh", "true"},
		{"bgpconfigurations.meridian.io", "spec.encapsulation", `"CrossSubnet"`},
		{"bgppeers.meridian.io", "spec.holdTime", `"90s"`},
		{"bgppeers.meridian.io", "spec.gracefulRestart", "{}"},
		{"bgppeers.meridian.io", "spec.gracefulRestart.enabled", "true"},
		{"bgppeers.meridian.io", "spec.maxPrefixes.action", `"Restart"`},
	} {
		s := schemaAt(t, crdByName(t, tc.crd), tc.path)
		if s.Default == nil || string(s.Default.Raw) != tc.want {
			got := "<none>"
			if s.Default != nil {
				got = string(s.Default.Raw)
			}
			t.Errorf("%s %s: default %s, want %s", tc.crd, tc.path, got, tc.want)
		}
	}
}

func TestEnums(t *testing.T) {
	for _, tc := range []struct {
		crd, path string
		want      []string
	}{
		{"bgpconfigurations.meridian.io", "spec.encapsulation", []string{"Never", "CrossSubnet", "Always"}},
		{"bgppeers.meridian.io", "spec.maxPrefixes.action", []string{"Warn", "Restart", "Drop"}},
	} {
		s := schemaAt(t, crdByName(t, tc.crd), tc.path)
		var got []string
		for _, e := range s.Enum {
			got = append(got, strings.Trim(string(e.Raw), `"`))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s %s: enum %v, want %v", tc.crd, tc.path, got, tc.want)
		}
	}
}

func TestValidationRules(t *testing.T) {
	for _, tc := range []struct {
		crd, path, rule string
	}{
		{"bgpconfigurations.meridian.io", "", "self.metadata.name == 'default'"},
		{"bgpconfigurations.meridian.io", "spec.routeReflectorClusterID", "ip(self).family() == 4"},
		{"bgpconfigurations.meridian.io", "spec.communities.[]", "int(p) <= 65535"},
		{"bgpconfigurations.meridian.io", "spec.acceptedPrefixes.[]", "isCIDR(self)"},
		{"bgpconfigurations.meridian.io", "spec.serviceLoadBalancerIPs.[].cidr", "isCIDR(self)"},
		{"bgppeers.meridian.io", "spec.peerIP", "ip(self).family() == 4"},
		{"bgppeers.meridian.io", "spec.sourceAddress", "ip(self).family() == 4"},
		{"bgppeers.meridian.io", "spec", "!(has(self.node) && has(self.nodeSelector))"},
		{"bgppeers.meridian.io", "spec", "duration(self.keepaliveTime) < duration(self.holdTime)"},
		{"bgppeers.meridian.io", "spec", "duration(self.holdTime) >= duration('3s')"},
		{"bgppeers.meridian.io", "spec.gracefulRestart", "duration('4095s')"},
	} {
		s := schemaAt(t, crdByName(t, tc.crd), tc.path)
		if !hasRule(s, tc.rule) {
			t.Errorf("%s %q: no rule with a message containing %q; rules: %v", tc.crd, tc.path, tc.rule, s.XValidations)
		}
	}
}

func TestRequiredAndBounds(t *testing.T) {
	peer := crdByName(t, "bgppeers.meridian.io")
	spec := schemaAt(t, peer, "spec")
	for _, f := range []string{"peerIP", "asNumber"} {
		if !slices.Contains(spec.Required, f) {
			t.Errorf("BGPPeer spec.%s is not required (required: %v)", f, spec.Required)
		}
	}
	asn := schemaAt(t, peer, "spec.asNumber")
	if asn.Minimum == nil || *asn.Minimum != 1 || asn.Maximum == nil || *asn.Maximum != 4294967294 {
		t.Errorf("BGPPeer spec.asNumber bounds %v..%v, want 1..4294967294", asn.Minimum, asn.Maximum)
	}
	ttl := schemaAt(t, peer, "spec.ebgpMultihop")
	if ttl.Minimum == nil || *ttl.Minimum != 1 || ttl.Maximum == nil || *ttl.Maximum != 255 {
		t.Errorf("BGPPeer spec.ebgpMultihop bounds %v..%v, want 1..255", ttl.Minimum, ttl.Maximum)
	}
	pw := schemaAt(t, peer, "spec.password")
	for _, f := range []string{"name", "key", "namespace"} {
		if !slices.Contains(pw.Required, f) {
			t.Errorf("BGPPeer spec.password.%s is not required", f)
		}
	}
	comm := schemaAt(t, crdByName(t, "bgpconfigurations.meridian.io"), "spec.communities.[]")
	if comm.Pattern == "" {
		t.Error("BGPConfiguration spec.communities items have no pattern")
	}
}
