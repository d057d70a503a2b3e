package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// A UDP client that keeps one socket, as a resolver does, must reach the
// replacement of a deleted backend at once. The conntrack entry of its flow
// still DNATs to the dead pod, and because the client keeps sending, the
// kernel refreshes that entry forever: only deleting it, as kube-proxy does
// and meridiand does when an endpoint leaves a UDP Service, lets the next
// datagram be load-balanced again. Without that this test never recovers.
func TestServiceUDPFlowRecoversAfterEndpointRemoval(t *testing.T) {
	l := needLab(t)
	c := client(t, l)
	nodes := l.Nodes()
	ctx := context.Background()
	ns := svcNS + "-udp"
	createNamespace(t, c, ns)

	const containerPort = 5353
	one := int32(1)
	labels := map[string]string{"app": "resolver"}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "resolver"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					// Not the coredns image: the node agent would run the real
					// CoreDNS there; its stand-in echoes UDP on the declared port.
					Name: "dns", Image: "udp-echo",
					Ports: []corev1.ContainerPort{{Name: "dns", Protocol: corev1.ProtocolUDP, ContainerPort: containerPort}},
				}}},
			},
		},
	}
	if _, err := c.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	first := readyPods(t, c, ns, "resolver", 1)[0]
	svc, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "resolver"},
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromString("dns")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	cl := clientPod(t, c, ns, "client", nodes[0].Name)
	vip := &net.UDPAddr{IP: net.ParseIP(svc.Spec.ClusterIP), Port: 53}

	// One socket with a fixed source port for the whole test: the same
	// 5-tuple, so the same conntrack entry.
	var conn *net.UDPConn
	if err := inNetns(podNetns(cl), func() error {
		var err error
		conn, err = net.DialUDP("udp4", &net.UDPAddr{Port: 40053}, vip)
		return err
	}); err != nil {
		t.Fatalf("open UDP socket in the client pod: %v", err)
	}
	defer conn.Close()
	seq := 0
	ask := func() error {
		seq++
		msg := "query " + strconv.Itoa(seq)
		_ = conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := conn.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, 256)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return err
			}
			// A late answer to an earlier query is not this one's.
			if string(buf[:n]) == msg {
				return nil
			}
		}
	}
	eventually(t, 60*time.Second, "UDP answer through "+vip.String(), ask)

	if err := c.CoreV1().Pods(ns).Delete(ctx, first.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatalf("delete backend %s: %v", first.Name, err)
	}
	// Wait until the Service's only ready endpoint is the replacement, then
	// keep asking on the same socket, as a resolver retries.
	var replacement string
	eventually(t, 90*time.Second, "the replacement backend in the EndpointSlice", func() error {
		sls, err := c.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=resolver"})
		if err != nil {
			return err
		}
		var ready []string
		for _, sl := range sls.Items {
			for _, ep := range sl.Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready && len(ep.Addresses) > 0 {
					ready = append(ready, ep.Addresses[0])
				}
			}
		}
		if len(ready) != 1 || ready[0] == first.Status.PodIP {
			return fmt.Errorf("ready endpoints %v (deleted backend %s)", ready, first.Status.PodIP)
		}
		replacement = ready[0]
		return nil
	})
	t.Logf("backend %s deleted; replacement %s", first.Status.PodIP, replacement)
	// The conntrack UDP timeouts are 30 s (unreplied) and 120 s (stream),
	// both refreshed by every datagram the client sends: a flow still
	// pinned to the dead pod would not recover within this window, or ever.
	eventually(t, 20*time.Second, "UDP answer from the replacement on the same socket", ask)
}
