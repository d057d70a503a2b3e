package lab

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/meridian-net/meridian/integration/nodeagent"
)

// AgentCommand is the hidden meridian-lab subcommand that runs a node agent.
const AgentCommand = "agent"

// CNIConfFile is the name of the node's CNI network configuration.
const CNIConfFile = "10-meridian.conflist"

// Daemon start and stop bounds.
const (
	daemonStopGrace = 10 * time.Second
	apiStopGrace    = 30 * time.Second
)

func agentProc(node string) string  { return "agent-" + node }
func daemonProc(node string) string { return "meridiand-" + node }

// nodeOfProc is the node a per-node process belongs to, "" for the
// control plane.
func nodeOfProc(proc string) string {
	for _, p := range []string{"agent-", "meridiand-"} {
		if n, ok := strings.CutPrefix(proc, p); ok {
			return n
		}
	}
	return ""
}

// compareNodeNames orders node-2 before node-10.
func compareNodeNames(a, b string) int {
	ai, aerr := strconv.Atoi(strings.TrimPrefix(a, "node-"))
	bi, berr := strconv.Atoi(strings.TrimPrefix(b, "node-"))
	if aerr == nil && berr == nil {
		return cmp.Compare(ai, bi)
	}
	return compareStrings(a, b)
}

func compareStrings(a, b string) int { return strings.Compare(a, b) }

func lookPath(name string) (string, error) { return exec.LookPath(name) }

// cniConflist renders a node's CNI configuration list. It sets no mtu, so
// pods get the one meridiand derives from the node's link and the
// encapsulation in use (node.json in the state dir), as with the chart's
// default.
func cniConflist(stateDir string) ([]byte, error) {
	type plugin struct {
		Type     string `json:"type"`
		StateDir string `json:"stateDir"`
	}
	b, err := json.MarshalIndent(struct {
		CNIVersion string   `json:"cniVersion"`
		Name       string   `json:"name"`
		Plugins    []plugin `json:"plugins"`
	}{
		CNIVersion: "1.0.0",
		Name:       "meridian",
		Plugins:    []plugin{{Type: "meridian-cni", StateDir: stateDir}},
	}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render cni conflist: %w", err)
	}
	return append(b, '\n'), nil
}

func (l *Lab) agentArgv(n Node) []string {
	return []string{
		l.st.LabBin, AgentCommand,
		"--node", n.Name,
		"--node-ip", n.IP.String(),
		"--kubeconfig", l.Kubeconfig(),
		"--cni-conf-dir", l.layout.nodeCNIConfDir(n.Name),
		"--cni-bin-dir", l.st.BinDir,
		"--state-dir", l.layout.nodeDir(n.Name),
	}
}

func (l *Lab) daemonSpec(n Node) procSpec {
	return procSpec{
		Name:  daemonProc(n.Name),
		Netns: n.Netns,
		Argv: []string{
			binPath(l.st.BinDir, "meridiand"),
			"--node-name", n.Name,
			"--kubeconfig", l.layout.path(meridiandKubeconfig),
			"--state-dir", l.layout.nodeStateDir(n.Name),
			// Nodes share the host's file system: one socket per node.
			"--api-socket", l.APISocket(n.Name),
			// and on TCP with mutual TLS, for meridianctl --node.
			"--api-listen", fmt.Sprintf(":%d", APIPort),
			"--api-tls-secret", l.layout.apiTLSDir(),
		},
		Env: []string{"NODE_NAME=" + n.Name},
	}
}

// APISocket is the path of the node's meridiand gRPC socket, for
// `meridianctl --socket`.
func (l *Lab) APISocket(node string) string {
	return filepath.Join(l.layout.nodeDir(node), "meridian.sock")
}

// addNode makes node i: its namespace on the fabric, its CNI configuration,
// its agent and (unless NoDaemon) meridiand, and records it.
func (l *Lab) addNode(ctx context.Context, i int) (Node, error) {
	n := newNode(i)
	if l.st.Topology == TopologyRacks {
		n = newRackNode(i)
	}
	t0 := time.Now()
	// Recorded before anything is made, so that after a failure below
	// RemoveNode finds the node by name and removes what was made.
	l.mu.Lock()
	l.st.Nodes = append(l.st.Nodes, n)
	err := l.save()
	l.mu.Unlock()
	if err != nil {
		return n, err
	}
	if n.Rack != 0 {
		if err := createRackNodeNetns(n); err != nil {
			return n, err
		}
		if err := l.registerRackNode(ctx, n); err != nil {
			return n, err
		}
	} else if err := createEndpointNetns(n.Netns, n.Name, n.IP); err != nil {
		return n, err
	}
	for _, d := range []string{l.layout.nodeCNIConfDir(n.Name), l.layout.nodeStateDir(n.Name)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return n, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	conf, err := cniConflist(l.layout.nodeStateDir(n.Name))
	if err != nil {
		return n, err
	}
	if err := os.WriteFile(filepath.Join(l.layout.nodeCNIConfDir(n.Name), CNIConfFile), conf, 0o644); err != nil {
		return n, fmt.Errorf("node %s: write cni config: %w", n.Name, err)
	}
	if _, err := l.launch.start(procSpec{Name: agentProc(n.Name), Netns: n.Netns, Argv: l.agentArgv(n)}); err != nil {
		return n, err
	}
	if !l.st.NoDaemon {
		if _, err := l.launch.start(l.daemonSpec(n)); err != nil {
			return n, err
		}
	}
	l.log.Info("node started", "node", n.Name, "ip", n.IP, "netns", n.Netns, "took", time.Since(t0).Round(time.Millisecond))
	return n, ctx.Err()
}

// AddNode adds a node with the next free index.
func (l *Lab) AddNode(ctx context.Context) (Node, error) {
	l.mu.Lock()
	next := 1
	for _, n := range l.st.Nodes {
		next = max(next, n.Index+1)
	}
	l.mu.Unlock()
	if next > maxNodes {
		return Node{}, fmt.Errorf("lab is full (%d nodes)", maxNodes)
	}
	n, err := l.addNode(ctx, next)
	if err != nil {
		return n, errors.Join(fmt.Errorf("add node %s: %w", n.Name, err), l.RemoveNode(context.WithoutCancel(ctx), n.Name))
	}
	return n, nil
}

// RemoveNode deletes the Node object, stops the node's agent and daemon,
// and deletes its pods' namespaces and its own.
func (l *Lab) RemoveNode(ctx context.Context, name string) error {
	n, err := l.Node(name)
	if err != nil {
		return err
	}
	var errs []error
	// Pods are listed before the Node goes: the pod GC controller deletes
	// pods bound to a missing node, and with them the names of their netns.
	var podNetns []string
	if cs, err := l.Client(); err != nil {
		errs = append(errs, err)
	} else {
		pods, err := cs.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("spec.nodeName", name).String(),
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("list pods of %s: %w", name, err))
		} else {
			for _, p := range pods.Items {
				podNetns = append(podNetns, nodeagent.PodNetnsName(p.UID))
			}
		}
		if err := cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete node object %s: %w", name, err))
		}
	}
	if err := l.launch.stop(ctx, daemonStopGrace, daemonProc(name), agentProc(name)); err != nil {
		errs = append(errs, err)
	}
	nss := append(podNetns, n.Netns)
	if err := killInNetns(ctx, nss); err != nil {
		errs = append(errs, err)
	}
	// The kernel tears a deleted namespace down in a work queue, and its
	// veth with it, which under load can lag behind an AddNode that wants
	// the same port name back ("file exists"). Deleting the fabric end
	// takes both ends away now.
	if err := deleteFabricPort(n.Name); err != nil {
		errs = append(errs, err)
	}
	for _, ns := range nss {
		if err := deleteNetns(ns); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(filepath.Join(etcNetnsDir, ns)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(l.layout.nodeDir(name)); err != nil {
		errs = append(errs, fmt.Errorf("remove node dir: %w", err))
	}
	l.mu.Lock()
	l.st.Nodes = slicesDeleteNode(l.st.Nodes, name)
	if err := l.save(); err != nil {
		errs = append(errs, err)
	}
	l.mu.Unlock()
	return errors.Join(errs...)
}

// deleteFabricPort removes a node's port (named after it) from the fabric
// namespace, if it is there.
func deleteFabricPort(name string) error {
	h, err := netlinkHandle(FabricNetns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("find fabric port %s: %w", name, err)
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("delete fabric port %s: %w", name, err)
	}
	return nil
}

func slicesDeleteNode(nodes []Node, name string) []Node {
	out := nodes[:0:0]
	for _, n := range nodes {
		if n.Name != name {
			out = append(out, n)
		}
	}
	return out
}

// StopDaemon sends sig to the node's meridiand. For signals that end a
// process (TERM, KILL, INT, QUIT) it waits until the daemon has exited.
func (l *Lab) StopDaemon(node string, sig syscall.Signal) error {
	if _, err := l.Node(node); err != nil {
		return err
	}
	name := daemonProc(node)
	info, err := l.launch.signal(name, sig)
	if err != nil {
		return err
	}
	switch sig {
	case syscall.SIGTERM, syscall.SIGKILL, syscall.SIGINT, syscall.SIGQUIT:
	default:
		return nil
	}
	if !waitGone(context.Background(), daemonStopGrace, []procInfo{info}) {
		return fmt.Errorf("%s (pid %d) still runs %s after %s", name, info.PID, daemonStopGrace, sig)
	}
	return nil
}

// StartDaemon starts the node's meridiand (again).
func (l *Lab) StartDaemon(node string) error {
	n, err := l.Node(node)
	if err != nil {
		return err
	}
	_, err = l.launch.start(l.daemonSpec(n))
	return err
}

// WaitNodesReady waits until every lab node is registered and Ready.
func (l *Lab) WaitNodesReady(ctx context.Context) error {
	cs, err := l.Client()
	if err != nil {
		return err
	}
	for {
		var notReady []string
		list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			ready := map[string]bool{}
			for _, n := range list.Items {
				ready[n.Name] = nodeReady(&n)
			}
			for _, n := range l.Nodes() {
				if !ready[n.Name] {
					notReady = append(notReady, n.Name)
				}
			}
			if len(notReady) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("wait for nodes: %w", errors.Join(err, ctx.Err()))
			}
			return fmt.Errorf("nodes not ready: %s (see %s): %w",
				strings.Join(notReady, ", "), l.launch.logDir, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// ExecNode runs cmd in the node's namespace and returns its combined output.
func (l *Lab) ExecNode(ctx context.Context, node string, cmd ...string) ([]byte, error) {
	n, err := l.Node(node)
	if err != nil {
		return nil, err
	}
	return execIn(ctx, n.Netns, cmd)
}

// PodNetns returns the namespace of a pod, looked up through the API.
func (l *Lab) PodNetns(ctx context.Context, namespace, pod string) (string, error) {
	cs, err := l.Client()
	if err != nil {
		return "", err
	}
	p, err := cs.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("get pod %s/%s: %w", namespace, pod, err)
	}
	name := nodeagent.PodNetnsName(p.UID)
	if !netnsExists(name) {
		return "", fmt.Errorf("pod %s/%s (node %q) has no netns %s yet", namespace, pod, p.Spec.NodeName, name)
	}
	return name, nil
}

// ExecPod runs cmd in the pod's namespace and returns its combined output.
func (l *Lab) ExecPod(ctx context.Context, namespace, pod string, cmd ...string) ([]byte, error) {
	ns, err := l.PodNetns(ctx, namespace, pod)
	if err != nil {
		return nil, err
	}
	return execIn(ctx, ns, cmd)
}
