package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meridian-net/meridian/daemon/routes"
	"github.com/meridian-net/meridian/integration/lab"
	"github.com/meridian-net/meridian/integration/nodeagent"
)

const (
	tcpPort = 8080
	udpPort = 5353
)

// eventually polls cond until it returns nil or the deadline passes. The
// deadline only bounds a hung test; nothing asserts on how fast it was.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func client(t *testing.T, l *lab.Lab) kubernetes.Interface {
	t.Helper()
	c, err := l.Client()
	if err != nil {
		t.Fatalf("lab client: %v", err)
	}
	return c
}

// runPod creates a pod pinned to node whose stand-in containers listen on
// TCP 8080 and UDP 5353, and waits until it is Ready with an IP.
func runPod(t *testing.T, c kubernetes.Interface, name, node string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"e2e": "routing"}},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name:  "echo",
				Image: "meridian/echo",
				Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: tcpPort, Protocol: corev1.ProtocolTCP},
					{Name: "echo", ContainerPort: udpPort, Protocol: corev1.ProtocolUDP},
				},
			}},
		},
	}
	if _, err := c.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	t.Cleanup(func() { deletePod(t, c, name) })
	var got *corev1.Pod
	eventually(t, 90*time.Second, "pod "+name+" ready", func() error {
		p, err := c.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.PodIP == "" || !podReady(p) {
			return fmt.Errorf("phase %s, IP %q, conditions %v", p.Status.Phase, p.Status.PodIP, p.Status.Conditions)
		}
		got = p
		return nil
	})
	return got
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// deletePod deletes the pod and waits until the node agent has torn it
// down and the API object is gone.
func deletePod(t *testing.T, c kubernetes.Interface, name string) {
	t.Helper()
	ctx := context.Background()
	err := c.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return
	}
	if err != nil {
		t.Errorf("delete pod %s: %v", name, err)
		return
	}
	eventually(t, 60*time.Second, "pod "+name+" gone", func() error {
		_, err := c.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (err %v)", err)
	})
}

func podNetns(p *corev1.Pod) string {
	return filepath.Join("/var/run/netns", nodeagent.PodNetnsName(p.UID))
}

// inNetns runs f on a thread inside the named network namespace; sockets
// created there stay in it.
func inNetns(path string, f func() error) error {
	target, err := ns.GetNS(path)
	if err != nil {
		return err
	}
	defer target.Close()
	return target.Do(func(ns.NetNS) error { return f() })
}

// httpGet fetches / from addr inside the source pod's netns and returns the
// body.
func httpGet(from *corev1.Pod, addr string) (string, error) {
	var body string
	err := inNetns(podNetns(from), func() error {
		conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr)
		b, err := io.ReadAll(conn)
		body = string(b)
		return err
	})
	return body, err
}

// udpEcho sends one datagram from the source pod and returns the echo.
func udpEcho(from *corev1.Pod, addr, msg string) (string, error) {
	var got string
	err := inNetns(podNetns(from), func() error {
		conn, err := net.DialTimeout("udp", addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		for try := 0; try < 3; try++ {
			_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := conn.Write([]byte(msg)); err != nil {
				return err
			}
			buf := make([]byte, 2048)
			n, err := conn.Read(buf)
			if err == nil {
				got = string(buf[:n])
				return nil
			}
		}
		return fmt.Errorf("no UDP echo from %s", addr)
	})
	return got, err
}

// nodeRoutes lists the routes meridiand owns in a node's netns.
func nodeRoutes(t *testing.T, node lab.Node) []netlink.Route {
	t.Helper()
	h := nodeHandle(t, node)
	defer h.Close()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routes.Protocol, Table: 254}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatalf("list routes on %s: %v", node.Name, err)
	}
	return rs
}

func nodeHandle(t *testing.T, node lab.Node) *netlink.Handle {
	t.Helper()
	nsh, err := netns.GetFromName(node.Netns)
	if err != nil {
		t.Fatalf("open netns %s: %v", node.Netns, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", node.Netns, err)
	}
	return h
}

// podCIDR reads a node's pod CIDR from the API server.
func podCIDR(t *testing.T, c kubernetes.Interface, node string) netip.Prefix {
	t.Helper()
	var p netip.Prefix
	eventually(t, 30*time.Second, "pod CIDR of "+node, func() error {
		n, err := c.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if n.Spec.PodCIDR == "" {
			return fmt.Errorf("no pod CIDR yet")
		}
		p, err = netip.ParsePrefix(n.Spec.PodCIDR)
		return err
	})
	return p
}

// checkMeshRoutes asserts that node holds exactly one Meridian route per
// other node's pod CIDR, with that node's IP as next hop, plus a blackhole
// for its own CIDR.
func checkMeshRoutes(t *testing.T, node lab.Node, cidrs map[string]netip.Prefix, nodes []lab.Node) error {
	got := map[netip.Prefix]netlink.Route{}
	for _, r := range nodeRoutes(t, node) {
		if r.Dst == nil {
			return fmt.Errorf("%s: Meridian route without destination: %v", node.Name, r)
		}
		p, _ := netip.ParsePrefix(r.Dst.String())
		got[p] = r
	}
	for _, other := range nodes {
		cidr := cidrs[other.Name]
		r, ok := got[cidr]
		if !ok {
			return fmt.Errorf("%s: no Meridian route for %s (%s's pod CIDR); have %v", node.Name, cidr, other.Name, got)
		}
		delete(got, cidr)
		if other.Name == node.Name {
			if r.Type != 6 { // RTN_BLACKHOLE
				return fmt.Errorf("%s: own pod CIDR %s route type %d, want blackhole", node.Name, cidr, r.Type)
			}
			continue
		}
		if r.Gw == nil || r.Gw.String() != other.IP.String() {
			return fmt.Errorf("%s: route %s via %v, want via %s", node.Name, cidr, r.Gw, other.IP)
		}
		if int(r.Protocol) != routes.Protocol {
			return fmt.Errorf("%s: route %s protocol %d, want %d", node.Name, cidr, r.Protocol, routes.Protocol)
		}
	}
	if len(got) != 0 {
		return fmt.Errorf("%s: unexpected Meridian routes %v", node.Name, got)
	}
	return nil
}

func readLine(r *bufio.Reader) (string, error) {
	s, err := r.ReadString('\n')
	return strings.TrimSuffix(s, "\n"), err
}
