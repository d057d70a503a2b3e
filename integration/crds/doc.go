// Package crds checks Meridian's CustomResourceDefinitions against a real
// kube-apiserver brought up by the lab: the schema, defaults and CEL rules
// generated from api/crd/v1alpha1 must accept good objects, fill in
// defaults and refuse bad ones with a message a user can act on.
package crds
