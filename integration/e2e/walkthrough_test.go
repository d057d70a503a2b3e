package e2e

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meridian-net/meridian/integration/walkthrough"
)

// TestWalkthrough runs what `make lab` prints: the seed's deployment,
// pod-to-pod reachability, `kubectl expose` and `wget http://web` from
// another pod by name through CoreDNS and Meridian's Service NAT.
func TestWalkthrough(t *testing.T) {
	l := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := walkthrough.Run(ctx, l, walkthrough.Options{BinDir: l.BinDir(), Replicas: 3, Out: &out})
	t.Log(out.String())
	if err != nil {
		t.Fatalf("walkthrough: %v", err)
	}
	for _, want := range []string{"$ kubectl expose deployment web --port=80", "replicas that answered http://web", "Hello from web-"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("walkthrough output lacks %q", want)
		}
	}
	c := client(t, l)
	t.Cleanup(func() {
		bg := context.Background()
		_ = c.AppsV1().Deployments("default").Delete(bg, "web", metav1.DeleteOptions{})
		_ = c.CoreV1().Services("default").Delete(bg, "web", metav1.DeleteOptions{})
	})
	deletePod(t, c, "client")
}
