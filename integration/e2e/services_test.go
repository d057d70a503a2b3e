package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/meridian-net/meridian/integration/lab"
)

// The seed's app walkthrough through Service NAT that meridiand programs:
// `kubectl create deployment web --image=nginx --replicas=3`, `kubectl
// expose deployment web --port=80`, then HTTP to the ClusterIP from another
// pod, spread over the replicas; the failure modes of its "connection
// refused" section; NodePort from the host link; and a connection through a
// ClusterIP that outlives a meridiand restart.

const svcNS = "e2e-svc"

func createNamespace(t *testing.T, c kubernetes.Interface, name string) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = c.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

// createDeployment is `kubectl create deployment NAME --image=nginx
// --replicas=N`: pods labelled app=NAME with one container and no declared
// port (the node agent's stand-in answers HTTP on 80, as nginx does).
func createDeployment(t *testing.T, c kubernetes.Interface, ns, name string, replicas int32) {
	t.Helper()
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "nginx", Image: "nginx"}}},
			},
		},
	}
	if _, err := c.AppsV1().Deployments(ns).Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment %s: %v", name, err)
	}
}

func scaleDeployment(t *testing.T, c kubernetes.Interface, ns, name string, replicas int32) {
	t.Helper()
	ctx := context.Background()
	// The deployment controller writes the object's status at the same
	// time; a conflict just means read again.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := c.AppsV1().Deployments(ns).GetScale(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.Spec.Replicas = replicas
		_, err = c.AppsV1().Deployments(ns).UpdateScale(ctx, name, s, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("scale %s to %d: %v", name, replicas, err)
	}
}

// readyPods waits for n ready pods labelled app=name and returns them.
func readyPods(t *testing.T, c kubernetes.Interface, ns, name string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	eventually(t, 120*time.Second, fmt.Sprintf("%d ready pods of %s", n, name), func() error {
		list, err := c.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return err
		}
		pods = pods[:0]
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil && podReady(&p) && p.Status.PodIP != "" {
				pods = append(pods, p)
			}
		}
		if len(pods) != n {
			return fmt.Errorf("%d of %d ready", len(pods), n)
		}
		return nil
	})
	return pods
}

// expose is `kubectl expose deployment NAME --port=PORT [--target-port]`.
func expose(t *testing.T, c kubernetes.Interface, ns, name, app string, port int32, target int, typ corev1.ServiceType) *corev1.Service {
	t.Helper()
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:     typ,
			Selector: map[string]string{"app": app},
			Ports:    []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt(target)}},
		},
	}
	got, err := c.CoreV1().Services(ns).Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s: %v", name, err)
	}
	return got
}

// clientPod runs a pod (default stand-in) on node to send requests from.
func clientPod(t *testing.T, c kubernetes.Interface, ns, name, node string) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"role": "client"}},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "busybox", Image: "busybox"}}},
	}
	if _, err := c.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	var got *corev1.Pod
	eventually(t, 90*time.Second, "client pod ready", func() error {
		q, err := c.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !podReady(q) || q.Status.PodIP == "" {
			return fmt.Errorf("not ready")
		}
		got = q
		return nil
	})
	return got
}

var helloFrom = regexp.MustCompile(`Hello from (\S+) `)

// replicaOf returns which pod answered an HTTP response.
func replicaOf(body string) string {
	m := helloFrom.FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return m[1]
}

// dialErr connects from the pod and returns the dial error and how long it
// took.
func dialErr(from *corev1.Pod, addr string) (error, time.Duration) {
	var derr error
	var took time.Duration
	err := inNetns(podNetns(from), func() error {
		start := time.Now()
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		took = time.Since(start)
		if err == nil {
			// A connection that is accepted and reset at once (a port
			// nobody listens on behind a DNAT) shows on the first read.
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = fmt.Fprintf(conn, "GET / HTTP/1.0\r\n\r\n")
			_, err = io.ReadAll(conn)
			took = time.Since(start)
			conn.Close()
		}
		derr = err
		return nil
	})
	if err != nil {
		return err, 0
	}
	return derr, took
}

func TestServiceWalkthrough(t *testing.T) {
	l := needLab(t)
	c := client(t, l)
	nodes := l.Nodes()
	createNamespace(t, c, svcNS)

	createDeployment(t, c, svcNS, "web", 3)
	replicas := readyPods(t, c, svcNS, "web", 3)
	web := expose(t, c, svcNS, "web", "web", 80, 80, corev1.ServiceTypeClusterIP)
	client := clientPod(t, c, svcNS, "client", nodes[len(nodes)-1].Name)
	vip := net.JoinHostPort(web.Spec.ClusterIP, "80")

	// Every replica answers through the ClusterIP; new connections spread.
	want := map[string]bool{}
	for _, p := range replicas {
		want[p.Name] = true
	}
	seen := map[string]int{}
	eventually(t, 60*time.Second, "all replicas answer via "+vip, func() error {
		body, err := httpGet(client, vip)
		if err != nil {
			return err
		}
		r := replicaOf(body)
		if !want[r] {
			return fmt.Errorf("answer from %q, not a replica: %q", r, body)
		}
		seen[r]++
		if len(seen) < len(want) {
			return fmt.Errorf("seen %v", seen)
		}
		return nil
	})
	t.Logf("replicas that answered via %s: %v", vip, seen)

	// The seed's "connection refused": a selector that matches nothing has
	// no endpoints and is refused at once, not left to time out.
	nobody := expose(t, c, svcNS, "nobody", "matches-nothing", 80, 80, corev1.ServiceTypeClusterIP)
	nobodyAddr := net.JoinHostPort(nobody.Spec.ClusterIP, "80")
	eventually(t, 30*time.Second, "no-endpoint Service refused", func() error {
		err, took := dialErr(client, nobodyAddr)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("dial %s: %v after %s, want connection refused", nobodyAddr, err, took)
		}
		return nil
	})
	// A targetPort nobody listens on: the endpoint's kernel resets.
	wrong := expose(t, c, svcNS, "wrong-port", "web", 80, 9999, corev1.ServiceTypeClusterIP)
	wrongAddr := net.JoinHostPort(wrong.Spec.ClusterIP, "80")
	eventually(t, 30*time.Second, "wrong targetPort refused", func() error {
		err, took := dialErr(client, wrongAddr)
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ECONNRESET) {
			return fmt.Errorf("dial %s: %v after %s, want refused or reset", wrongAddr, err, took)
		}
		return nil
	})

	// NodePort, from the host link (the test process is in the host's
	// namespace, which reaches the nodes over mlab0).
	np := expose(t, c, svcNS, "web-np", "web", 80, 80, corev1.ServiceTypeNodePort)
	nodePort := np.Spec.Ports[0].NodePort
	for _, n := range nodes {
		addr := net.JoinHostPort(n.IP.String(), fmt.Sprint(nodePort))
		eventually(t, 30*time.Second, "NodePort "+addr+" from the host", func() error {
			hc := &http.Client{Timeout: 3 * time.Second}
			resp, err := hc.Get("http://" + addr + "/")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if !want[replicaOf(string(b))] {
				return fmt.Errorf("answer %q", b)
			}
			return nil
		})
	}

	// Scaling to zero empties the endpoints: connections fail fast.
	scaleDeployment(t, c, svcNS, "web", 0)
	eventually(t, 60*time.Second, "scaled-to-zero Service refused", func() error {
		err, took := dialErr(client, vip)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("dial %s: %v after %s, want connection refused", vip, err, took)
		}
		return nil
	})
	scaleDeployment(t, c, svcNS, "web", 2)
	readyPods(t, c, svcNS, "web", 2)
	eventually(t, 60*time.Second, "scaled-up Service answers", func() error {
		_, err := httpGet(client, vip)
		return err
	})
}

// TestServiceConnectionSurvivesRestart keeps a TCP connection open through a
// ClusterIP while the client node's meridiand is killed and restarted: the
// restarted daemon adopts table inet meridian without rewriting it, so the
// connection's conntrack entry keeps its DNAT and bytes keep flowing.
func TestServiceConnectionSurvivesRestart(t *testing.T) {
	l := needLab(t)
	c := client(t, l)
	nodes := l.Nodes()
	ns := svcNS + "-restart"
	createNamespace(t, c, ns)
	createDeployment(t, c, ns, "echo", 1)
	readyPods(t, c, ns, "echo", 1)
	svc := expose(t, c, ns, "echo", "echo", 80, 80, corev1.ServiceTypeClusterIP)
	clientNode := nodes[0]
	cl := clientPod(t, c, ns, "client", clientNode.Name)
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")

	var conn net.Conn
	eventually(t, 60*time.Second, "connect to "+vip, func() error {
		return inNetns(podNetns(cl), func() error {
			var err error
			conn, err = net.DialTimeout("tcp", vip, 3*time.Second)
			return err
		})
	})
	defer conn.Close()
	// Not an HTTP request line: the stand-in echoes the bytes back.
	roundTrip := func(msg string) error {
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(conn, "%s\n", msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg)+1)
		if _, err := io.ReadFull(conn, buf); err != nil {
			return err
		}
		if got := strings.TrimSpace(string(buf)); got != msg {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
		return nil
	}
	if err := roundTrip("before restart"); err != nil {
		t.Fatal(err)
	}
	if err := l.StopDaemon(clientNode.Name, syscall.SIGKILL); err != nil {
		t.Fatalf("kill meridiand on %s: %v", clientNode.Name, err)
	}
	if err := roundTrip("daemon down"); err != nil {
		t.Fatalf("while meridiand was down: %v", err)
	}
	if err := l.StartDaemon(clientNode.Name); err != nil {
		t.Fatalf("start meridiand on %s: %v", clientNode.Name, err)
	}
	// Let the new daemon sync its caches and adopt the table.
	eventually(t, 60*time.Second, "meridiand ready again", func() error {
		return readyz(clientNode)
	})
	for i := range 5 {
		if err := roundTrip(fmt.Sprintf("after restart %d", i)); err != nil {
			t.Fatalf("connection through %s broke after the restart: %v", vip, err)
		}
	}
}

// readyz asks the node's meridiand for /readyz on its metrics port. The
// request is written by hand on a socket opened inside the node's netns:
// net/http would dial from another thread, outside it.
func readyz(node lab.Node) error {
	var status string
	err := inNetns("/var/run/netns/"+node.Netns, func() error {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:9091", 2*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(conn, "GET /readyz HTTP/1.0\r\n\r\n")
		b, err := io.ReadAll(conn)
		status = string(b)
		return err
	})
	if err != nil {
		return err
	}
	if !strings.HasPrefix(status, "HTTP/1.0 200") && !strings.HasPrefix(status, "HTTP/1.1 200") {
		return fmt.Errorf("readyz: %q", status)
	}
	return nil
}

// hostGet sends one HTTP GET from the host's namespace (over mlab0) and
// returns the status, the X-Client-Address the pod saw and the body.
func hostGet(addr, path string) (int, string, string, error) {
	hc := &http.Client{Timeout: 3 * time.Second}
	resp, err := hc.Get("http://" + addr + path)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Client-Address"), string(b), err
}

// TestExternalTrafficPolicyLocal: a LoadBalancer Service with
// externalTrafficPolicy Local answers on its NodePort only on the node that
// runs its endpoint, with the client's own address (no masquerade), and its
// health-check node port tells a load balancer which node that is; with
// policy Cluster every node answers and the client is masqueraded.
func TestExternalTrafficPolicyLocal(t *testing.T) {
	l := needLab(t)
	c := client(t, l)
	ctx := context.Background()
	ns := svcNS + "-etp"
	createNamespace(t, c, ns)
	createDeployment(t, c, ns, "local", 1)
	pod := readyPods(t, c, ns, "local", 1)[0]
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "local"},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeLoadBalancer,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Selector:              map[string]string{"app": "local"},
			Ports:                 []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt(80)}},
		},
	}
	svc, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	nodePort, hcPort := svc.Spec.Ports[0].NodePort, svc.Spec.HealthCheckNodePort
	if hcPort == 0 {
		t.Fatal("the API server allocated no healthCheckNodePort")
	}
	host := lab.HostIP.String()
	for _, n := range l.Nodes() {
		addr := net.JoinHostPort(n.IP.String(), fmt.Sprint(nodePort))
		hc := net.JoinHostPort(n.IP.String(), fmt.Sprint(hcPort))
		if n.Name == pod.Spec.NodeName {
			eventually(t, 30*time.Second, "Local NodePort on the endpoint's node "+n.Name, func() error {
				code, client, body, err := hostGet(addr, "/")
				if err != nil {
					return err
				}
				if code != http.StatusOK || replicaOf(body) != pod.Name {
					return fmt.Errorf("%d %q", code, body)
				}
				if ip, _, _ := net.SplitHostPort(client); ip != host {
					return fmt.Errorf("pod saw client %s, want the host's own %s (not masqueraded)", client, host)
				}
				return nil
			})
			eventually(t, 30*time.Second, "health check 200 on "+n.Name, func() error {
				code, _, body, err := hostGet(hc, "/healthz")
				if err != nil {
					return err
				}
				if code != http.StatusOK || !strings.Contains(body, `"localEndpoints":1`) {
					return fmt.Errorf("%d %s", code, body)
				}
				return nil
			})
			continue
		}
		// No local endpoint: the node drops (a load balancer would not
		// send here, its health check says so).
		eventually(t, 30*time.Second, "health check 503 on "+n.Name, func() error {
			code, _, body, err := hostGet(hc, "/healthz")
			if err != nil {
				return err
			}
			if code != http.StatusServiceUnavailable || !strings.Contains(body, `"localEndpoints":0`) {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		})
		if code, _, body, err := hostGet(addr, "/"); err == nil {
			t.Errorf("Local NodePort on %s (no local endpoint) answered %d %q", n.Name, code, body)
		}
	}

	// Policy Cluster: every node answers, and a node other than the
	// endpoint's masquerades the client to reach it.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := c.CoreV1().Services(ns).Get(ctx, "local", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		_, err = c.CoreV1().Services(ns).Update(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("switch to policy Cluster: %v", err)
	}
	for _, n := range l.Nodes() {
		if n.Name == pod.Spec.NodeName {
			continue
		}
		addr := net.JoinHostPort(n.IP.String(), fmt.Sprint(nodePort))
		eventually(t, 30*time.Second, "Cluster NodePort via "+n.Name, func() error {
			code, client, body, err := hostGet(addr, "/")
			if err != nil {
				return err
			}
			if code != http.StatusOK || replicaOf(body) != pod.Name {
				return fmt.Errorf("%d %q", code, body)
			}
			if ip, _, _ := net.SplitHostPort(client); ip != n.IP.String() {
				return fmt.Errorf("pod saw client %s, want %s's address (masqueraded)", client, n.Name)
			}
			return nil
		})
	}
}
