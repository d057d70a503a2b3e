// Package v1alpha1 holds Meridian's BGP configuration as Kubernetes
// resources: the cluster-wide BGPConfiguration (one object, named default)
// and BGPPeer (one per external peer). The OpenAPI schema generated from the
// markers here rejects what can be judged from one object alone; whatever
// needs the cluster's state (pod CIDRs, node labels, Secrets) is checked by
// meridiand and reported in status conditions.
//
// Run hack/gen-crds.sh after changing a type: it regenerates
// zz_generated.deepcopy.go and ../manifests/*.yaml.
//
// +kubebuilder:object:generate=true
// +groupName=meridian.io
package v1alpha1
