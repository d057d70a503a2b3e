package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meridian-net/meridian/daemon/apiserver"
	"github.com/meridian-net/meridian/daemon/apiserver/apitest"
)

// The same commands over the mutual-TLS TCP listener print what they
// print over the socket.
func TestServerOverMutualTLS(t *testing.T) {
	dirs, err := apitest.WriteTLS(t.TempDir(), net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- apiserver.New(testSources(), nil).ServeTCP(ctx, ln, dirs.Server) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeTCP: %v", err)
		}
	})
	f := func(n string) string { return filepath.Join(dirs.Client, n) }
	tls := []string{"--server", ln.Addr().String(), "--tls-cert", f("tls.crt"), "--tls-key", f("tls.key"), "--ca", f("ca.crt")}

	run1 := func(args ...string) (string, string, int) {
		var o, e bytes.Buffer
		code := run(context.Background(), args, &o, &e)
		return o.String(), e.String(), code
	}
	// Connection flags before or after the command.
	out, errOut, code := run1(append(tls, "peers")...)
	if code != 0 {
		t.Fatalf("peers over TLS: exit %d: %s", code, errOut)
	}
	checkGolden(t, "peers.table", out)
	out, errOut, code = run1(append([]string{"routes", "-o", "json"}, tls...)...)
	if code != 0 {
		t.Fatalf("routes over TLS: exit %d: %s", code, errOut)
	}
	checkGolden(t, "routes.json", out)

	// Without a client certificate there is nothing to connect with; with
	// the server's own certificate as a client's the handshake fails.
	if _, errOut, code = run1("--server", ln.Addr().String(), "peers"); code != 2 || !strings.Contains(errOut, "--tls-cert") {
		t.Errorf("--server without TLS flags: exit %d, %q; want 2 asking for --tls-cert", code, errOut)
	}
	s := func(n string) string { return filepath.Join(dirs.Server, n) }
	if _, errOut, code = run1("--server", ln.Addr().String(), "--tls-cert", s("tls.crt"), "--tls-key", s("tls.key"), "--ca", s("ca.crt"), "peers"); code != 1 {
		t.Errorf("server certificate used as client's: exit %d (%s), want 1", code, errOut)
	}
}

func TestConnectionFlagMistakes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--server", "a:1", "--node", "n", "--tls-cert", "c", "--tls-key", "k", "--ca", "ca", "peers"}, "give one"},
		{[]string{"--server", "nohost", "--tls-cert", "c", "--tls-key", "k", "--ca", "ca", "peers"}, "HOST:PORT"},
		{[]string{"--node", "n", "--tls-cert", "c", "--tls-key", "k", "--ca", "ca", "--api-port", "0", "peers"}, "--api-port"},
		{[]string{"--node", "n", "peers"}, "mutual TLS"},
	} {
		var o, e bytes.Buffer
		if code := run(context.Background(), tc.args, &o, &e); code != 2 || !strings.Contains(e.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 mentioning %q", tc.args, code, e.String(), tc.want)
		}
	}
}

func TestNodeAPIAddress(t *testing.T) {
	node := func(addrs ...corev1.NodeAddress) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}, Status: corev1.NodeStatus{Addresses: addrs}}
	}
	for name, tc := range map[string]struct {
		n    *corev1.Node
		want string
	}{
		"IPv4 InternalIP": {node(
			corev1.NodeAddress{Type: corev1.NodeHostName, Address: "node-1"},
			corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.5"},
			corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "198.18.0.11"},
		), "198.18.0.11:9092"},
		"IPv4 preferred over a first IPv6": {node(
			corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd00::11"},
			corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.0.0.11"},
		), "10.0.0.11:9092"},
		"IPv6 only": {node(corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd00::11"}), "[fd00::11]:9092"},
		"none":      {node(corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.5"}), ""},
	} {
		got, err := nodeAPIAddress(tc.n, 9092)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("%s: %q, %v; want %q", name, got, err, tc.want)
		}
	}
}
