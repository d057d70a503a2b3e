package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
	"github.com/meridian-net/meridian/daemon/apiserver"
)

// defaultAPIPort is the port of meridiand's TCP listener the chart sets
// (api.tcp.port); --node dials it unless --api-port says otherwise.
const defaultAPIPort = 9092

// target is which daemon a command talks to: the local socket, a TCP
// address, or a node found through the Kubernetes API; the last two over
// mutual TLS.
type target struct {
	socket string
	server string
	node   string

	kubeconfig string
	apiPort    int

	tlsCert, tlsKey, ca, serverName string
}

// register adds the connection flags to fs with t's current values as
// defaults, so flags given before the command carry over to the command's
// own flag set.
func (t *target) register(fs *flag.FlagSet) {
	fs.StringVar(&t.socket, "socket", t.socket, "meridiand API socket")
	fs.StringVar(&t.server, "server", t.server, "meridiand TCP API address HOST:PORT (mutual TLS)")
	fs.StringVar(&t.node, "node", t.node, "reach this node's meridiand: its InternalIP from the Kubernetes API, on --api-port (mutual TLS)")
	fs.StringVar(&t.kubeconfig, "kubeconfig", t.kubeconfig, "kubeconfig for --node (default $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	fs.IntVar(&t.apiPort, "api-port", t.apiPort, "TCP port of meridiand's API for --node (its --api-listen)")
	fs.StringVar(&t.tlsCert, "tls-cert", t.tlsCert, "client certificate (PEM) for --server and --node")
	fs.StringVar(&t.tlsKey, "tls-key", t.tlsKey, "client certificate's key (PEM)")
	fs.StringVar(&t.ca, "ca", t.ca, "CA certificate (PEM) that signed meridiand's serving certificate")
	fs.StringVar(&t.serverName, "tls-server-name", t.serverName, "name to verify in meridiand's certificate (default: the host dialled)")
}

func (t target) remote() bool { return t.server != "" || t.node != "" }

// check finds contradictory or incomplete connection flags before anything
// is dialled.
func (t target) check() error {
	if t.server != "" && t.node != "" {
		return errors.New("--server and --node both name a daemon; give one")
	}
	if !t.remote() {
		return nil
	}
	if t.tlsCert == "" || t.tlsKey == "" || t.ca == "" {
		return errors.New("--server and --node use mutual TLS: give --tls-cert, --tls-key and --ca")
	}
	if t.server != "" {
		if _, _, err := net.SplitHostPort(t.server); err != nil {
			return fmt.Errorf("--server %q is not HOST:PORT", t.server)
		}
	}
	if t.apiPort < 1 || t.apiPort > 65535 {
		return fmt.Errorf("--api-port %d out of range 1-65535", t.apiPort)
	}
	return nil
}

// connect opens a client for t: the socket, or mutual TLS to the address
// --server names or --node resolves.
func connect(ctx context.Context, t target) (meridianv1.MeridianClient, io.Closer, error) {
	if !t.remote() {
		return dial(t.socket)
	}
	addr := t.server
	if t.node != "" {
		var err error
		if addr, err = resolveNode(ctx, t.kubeconfig, t.node, t.apiPort); err != nil {
			return nil, nil, err
		}
	}
	cfg, err := apiserver.ClientTLS(t.tlsCert, t.tlsKey, t.ca, t.serverName)
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	return meridianv1.NewMeridianClient(conn), conn, nil
}

// resolveNode reads the Node through the Kubernetes API and returns the
// address of its daemon's TCP listener.
//
// meridiand runs in the host network, so there is no pod IP to
// port-forward to: kubectl port-forward into a hostNetwork pod reaches the
// node's own addresses anyway. Dialling the node's InternalIP directly,
// as calicoctl and cilium's CLI do when they cannot exec, needs nothing
// from the kubelet and keeps the daemon's own mutual TLS end to end.
func resolveNode(ctx context.Context, kubeconfig, node string, port int) (string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return "", fmt.Errorf("load kubeconfig for --node: %w", err)
	}
	cfg.UserAgent = "meridianctl"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", fmt.Errorf("create Kubernetes client: %w", err)
	}
	n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("get node %s: %w", node, err)
	}
	return nodeAPIAddress(n, port)
}

// nodeAPIAddress is the node's first IPv4 InternalIP (the address nodes
// peer on), else its first InternalIP, with port.
func nodeAPIAddress(n *corev1.Node, port int) (string, error) {
	var first netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		if ip.Is4() {
			return net.JoinHostPort(ip.String(), strconv.Itoa(port)), nil
		}
		if !first.IsValid() {
			first = ip
		}
	}
	if first.IsValid() {
		return net.JoinHostPort(first.String(), strconv.Itoa(port)), nil
	}
	return "", fmt.Errorf("node %s has no InternalIP address in its status to reach meridiand on", n.Name)
}
