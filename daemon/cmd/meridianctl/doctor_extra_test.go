package main

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
	"github.com/meridian-net/meridian/daemon/routes"
)

func pod(ns, name, node string, labels map[string]string, ready bool, ports ...corev1.ContainerPort) corev1.Pod {
	p := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}}
	return p
}

func svc(ns, name string, sel map[string]string, ports ...corev1.ServicePort) corev1.Service {
	return corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{Selector: sel, Ports: ports}}
}

func TestClusterChecks(t *testing.T) {
	web := map[string]string{"app": "web"}
	st := &clusterState{
		Pods: []corev1.Pod{
			pod("kube-system", "coredns-1", "node-b", map[string]string{"k8s-app": "kube-dns"}, false),
			pod("kube-system", "kube-proxy-x1", "node-a", map[string]string{"k8s-app": "kube-proxy"}, true),
			pod("kube-system", "kube-proxy-x2", "node-b", map[string]string{"k8s-app": "kube-proxy"}, true),
			pod("default", "web-1", "node-a", web, true, corev1.ContainerPort{Name: "http", ContainerPort: 8080}),
			pod("default", "plain-1", "node-a", map[string]string{"app": "plain"}, true),
		},
		Services: []corev1.Service{
			svc("default", "web", web, corev1.ServicePort{Port: 80, TargetPort: intstr.FromString("http")}),
			// Declared ports exist and 9090 is not one of them.
			svc("default", "web-wrong", web, corev1.ServicePort{Port: 80, TargetPort: intstr.FromInt32(9090)}),
			svc("default", "web-named", web, corev1.ServicePort{Port: 80, TargetPort: intstr.FromString("metrics")}),
			// Pods declaring nothing: a number cannot be judged.
			svc("default", "plain", map[string]string{"app": "plain"}, corev1.ServicePort{Port: 80, TargetPort: intstr.FromInt32(8080)}),
			svc("default", "typo", map[string]string{"app": "wbe"}, corev1.ServicePort{Port: 80}),
			svc("default", "external", nil, corev1.ServicePort{Port: 80}),
		},
	}
	got := map[string]string{}
	for _, f := range clusterChecks(st, "node-a") {
		got[f.Check+" "+f.Subject] = f.Severity
		if f.Fix == "" {
			t.Errorf("finding %+v says nothing to do", f)
		}
	}
	want := map[string]string{
		"dns kube-system/coredns":              "error", // not ready
		"kube-proxy kube-system/kube-proxy-x1": "error", // on this node; x2 is not
		"services default/web-wrong":           "warning",
		"services default/web-named":           "warning",
		"services default/typo":                "warning", // selector matches nothing
	}
	for k, sev := range want {
		if got[k] != sev {
			t.Errorf("finding %q: %q, want %q (all %v)", k, got[k], sev, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("findings %v, want exactly %v", got, want)
	}

	// No CoreDNS at all is its own finding.
	fs := clusterChecks(&clusterState{}, "node-a")
	if len(fs) != 1 || fs[0].Check != "dns" || fs[0].Severity != sevError {
		t.Errorf("empty cluster: %+v, want one DNS error", fs)
	}
}

// A local endpoint whose port refuses is reported; one that accepts, one
// on another node and a UDP one are not probed into findings.
func TestProbeLocalEndpoints(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// A port that was just free: nothing listens there.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	openPort := ln.Addr().(*net.TCPAddr).Port
	ep := func(port int, local bool) *meridianv1.Endpoint {
		return &meridianv1.Endpoint{Address: "127.0.0.1", Port: uint32(port), Local: local, Ready: true}
	}
	svcs := []*meridianv1.Service{{
		Namespace: "default", Name: "web",
		Ports: []*meridianv1.ServicePort{
			{Port: 80, Protocol: "TCP", Targets: []*meridianv1.Target{{Endpoints: []*meridianv1.Endpoint{ep(openPort, true), ep(closedPort, true), ep(closedPort+0, false)}}}},
			{Port: 53, Protocol: "UDP", Targets: []*meridianv1.Target{{Endpoints: []*meridianv1.Endpoint{ep(closedPort, true)}}}},
		},
	}}
	fs := probeLocalEndpoints(svcs, time.Second)
	if len(fs) != 1 || fs[0].Subject != "default/web port 80" || fs[0].Severity != sevError {
		t.Fatalf("findings %+v, want one refusal for default/web port 80", fs)
	}
	if want := "127.0.0.1:" + strconv.Itoa(closedPort); !strings.Contains(fs[0].Message, want) {
		t.Errorf("message %q does not name %s", fs[0].Message, want)
	}
}

// In a throw-away netns: a pod veth above the default route's link MTU is
// an error; one equal to it is not.
func TestCheckMTU(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		_ = testutils.UnmountNS(n)
	})
	h, err := netlink.NewHandleAt(netns.NsHandle(int(n.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	veth := func(name, peer string, mtu int) netlink.Link {
		t.Helper()
		l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: peer}
		if err := h.LinkAdd(l); err != nil {
			t.Fatal(err)
		}
		got, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	up := veth("uplink0", "uplink1", 1400)
	if err := h.AddrAdd(up, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(192, 0, 2, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Gw: net.IPv4(192, 0, 2, 254)}); err != nil {
		t.Fatal(err)
	}
	// Pod traffic to other nodes leaves on the link of Meridian's routes,
	// not the default route's.
	fabric := veth("fabric0", "fabric1", 1400)
	if err := h.AddrAdd(fabric, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(198, 18, 0, 11), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetMTU(up, 9000); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: fabric.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4(10, 244, 2, 0), Mask: net.CIDRMask(24, 32)},
		Gw: net.IPv4(198, 18, 0, 12), Protocol: netlink.RouteProtocol(routes.Protocol)}); err != nil {
		t.Fatal(err)
	}
	veth("merok0000001", "pod-ok", 1400)
	if fs := checkMTU(h); len(fs) != 0 {
		t.Fatalf("pod MTU equal to the uplink's: findings %+v", fs)
	}
	veth("merbig000001", "pod-big", 1500)
	fs := checkMTU(h)
	if len(fs) != 1 || fs[0].Check != "mtu" || fs[0].Severity != sevError ||
		!strings.Contains(fs[0].Message, "merbig000001") || !strings.Contains(fs[0].Message, "1400") || !strings.Contains(fs[0].Fix, "1400") {
		t.Fatalf("findings %+v, want one MTU error naming merbig000001 and 1400", fs)
	}

	// A route through a tunnel (a smaller-MTU link, as tunl0 is the
	// uplink's minus 20) makes that tunnel's MTU the bound: the 1400 pod
	// now exceeds it too.
	tun := veth("tun0", "tun1", 1380)
	if err := h.RouteAdd(&netlink.Route{LinkIndex: tun.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4(10, 244, 3, 0), Mask: net.CIDRMask(24, 32)},
		Gw: net.IPv4(198, 19, 0, 13), Flags: int(netlink.FLAG_ONLINK), Protocol: netlink.RouteProtocol(routes.Protocol)}); err != nil {
		t.Fatal(err)
	}
	fs = checkMTU(h)
	if len(fs) != 2 || !strings.Contains(fs[0].Message, "tun0's 1380") || !strings.Contains(fs[0].Message, "merok0000001") ||
		!strings.Contains(fs[1].Message, "merbig000001") || !strings.Contains(fs[0].Fix, "1380") {
		t.Fatalf("findings %+v, want both pod links above tun0's 1380", fs)
	}
}
