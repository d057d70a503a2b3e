package lab

import (
	"context"
	"fmt"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"

	"github.com/meridian-net/meridian/api/crd/manifests"
)

// applyCRDs installs Meridian's CustomResourceDefinitions (BGPConfiguration,
// BGPPeer), as the Helm chart's crds/ does on a real cluster, and waits
// until the API server serves them, so meridiand finds its resources from
// its first start instead of falling back to the plain node mesh.
func (l *Lab) applyCRDs(ctx context.Context) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.Kubeconfig())
	if err != nil {
		return fmt.Errorf("install CRDs: %w", err)
	}
	ext, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("install CRDs: %w", err)
	}
	crds, err := manifests.CRDs()
	if err != nil {
		return fmt.Errorf("install CRDs: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, rbacTimeout)
	defer cancel()
	for _, crd := range crds {
		_, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("install CRD %s: %w", crd.Name, err)
		}
	}
	for _, crd := range crds {
		for {
			got, err := ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
			if err == nil && established(got.Status.Conditions) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CRD %s not established: %w", crd.Name, ctx.Err())
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

func established(conds []apiextensionsv1.CustomResourceDefinitionCondition) bool {
	for _, c := range conds {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}
