package events

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestWarningLandsOnTheNode(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	r := NewNodeRecorder(ctx, client, "node-1")
	r.Warning("InvalidService", "unsupportedProtocol default/bad")

	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := client.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) == 1 {
			e := list.Items[0]
			if e.Type != corev1.EventTypeWarning || e.Reason != "InvalidService" || e.Message != "unsupportedProtocol default/bad" ||
				e.InvolvedObject.Kind != "Node" || e.InvolvedObject.Name != "node-1" || e.Source.Component != Component {
				t.Fatalf("event %+v", e)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events recorded, want 1", len(list.Items))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
