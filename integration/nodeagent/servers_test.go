package nodeagent

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestPodPorts(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{Spec: corev1.PodSpec{
		InitContainers: []corev1.Container{
			{Name: "init", Ports: []corev1.ContainerPort{{ContainerPort: 9999}}},
			{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{ContainerPort: 15001}}},
		},
		Containers: []corev1.Container{
			{Name: "web", Image: "nginx"},
			{Name: "app", Ports: []corev1.ContainerPort{
				{ContainerPort: 8080},
				{ContainerPort: 5353, Protocol: corev1.ProtocolUDP},
				{ContainerPort: 5353, Protocol: corev1.ProtocolTCP},
				{ContainerPort: 3868, Protocol: corev1.ProtocolSCTP},
			}},
			{Name: "dup", Ports: []corev1.ContainerPort{{ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}},
			{Name: "sctp-only", Ports: []corev1.ContainerPort{{ContainerPort: 9, Protocol: corev1.ProtocolSCTP}}},
		},
	}}
	want := []servicePort{
		{corev1.ProtocolTCP, 80},
		{corev1.ProtocolTCP, 5353},
		{corev1.ProtocolTCP, 8080},
		{corev1.ProtocolTCP, 15001},
		{corev1.ProtocolUDP, 5353},
	}
	if got := podPorts(pod); !slices.Equal(got, want) {
		t.Errorf("podPorts = %v, want %v", got, want)
	}
}

// TestServersOnLoopback runs the stand-ins in the test's own netns on
// ephemeral ports: HTTP, TCP echo, UDP echo, and a Stop that closes an idle
// connection and leaves no goroutine.
func TestServersOnLoopback(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	s, err := startServers("", []servicePort{
		{corev1.ProtocolTCP, 0}, {corev1.ProtocolUDP, 0},
	}, testID, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	addrs := s.addrs()
	tcpPort := addrs[0].(*net.TCPAddr).Port
	udpPort := addrs[1].(*net.UDPAddr).Port
	tcpAddr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: tcpPort}

	// HTTP
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).
		Get("http://" + tcpAddr.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != wantPage {
		t.Errorf("HTTP body %q, want %q", body, wantPage)
	}

	// TCP echo, and a short write followed by a half-close: the bytes that
	// could still have become "GET " come back when the peer stops sending.
	c, err := net.DialTCP("tcp4", nil, tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("GE")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); err != nil || string(b) != "GE" {
		t.Errorf("echo after half-close: %q %v", b, err)
	}
	c.Close()

	// UDP echo
	u, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: udpPort})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := u.Write([]byte("ping over udp")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, err := u.Read(buf)
	if err != nil || string(buf[:n]) != "ping over udp" {
		t.Errorf("udp echo: %q %v", buf[:n], err)
	}

	// An idle echo connection stays open until Stop closes it.
	idle, err := net.DialTCP("tcp4", nil, tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if _, err := idle.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(bufio.NewReader(idle), make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() { s.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not return with an idle connection open")
	}
	idle.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle connection after Stop: read err %v, want EOF", err)
	}
	s.Stop() // twice is fine
}

func TestStartServersPortInUse(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	l, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := int32(l.Addr().(*net.TCPAddr).Port)
	// The UDP socket on a free port is opened first and must be closed
	// again when the TCP one fails.
	_, err = startServers("", []servicePort{{corev1.ProtocolUDP, 0}, {corev1.ProtocolTCP, port}}, testID, testLogger(t))
	if err == nil {
		t.Fatal("startServers on a used port succeeded")
	}
}
