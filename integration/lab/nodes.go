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
	paths := l.layout.nodePaths()
	argv := []string{
		l.st.LabBin, AgentCommand,
		"--node", n.Name,
		"--node-ip", n.IP.String(),
		"--kubeconfig", l.Kubeconfig(),
		// The node's own CNI directories, where the chart's init
		// container installs meridian-cni and its conflist.
		"--cni-conf-dir", paths.CNIConfDir,
		"--cni-bin-dir", paths.CNIBinDir,
		"--coredns-bin", binPath(l.st.BinDir, "coredns"),
		"--state-dir", l.layout.nodeDir(n.Name),
		"--log-dir", l.launch.logDir,
		"--pid-dir", l.launch.pidDir,
	}
	if l.st.NoDaemon {
		// No chart: the lab's conflist, and meridian-cni from the bin dir.
		return append(argv, "--cni-bin-dir", l.st.BinDir)
	}
	return append(argv,
		"--image-archive", l.st.ImageArchive,
		"--image-cache-dir", l.layout.imageCacheDir(),
		"--container-init", l.st.LabBin+","+ContainerInitCommand)
}

// agentSpec runs the node's agent in the node's network namespace and its
// own view of the disk: nodes/<node>/root over NodeRootMount.
func (l *Lab) agentSpec(n Node) procSpec {
	return procSpec{
		Name:  agentProc(n.Name),
		Netns: n.Netns,
		Argv:  l.agentArgv(n),
		Binds: []Bind{{Source: l.layout.nodeRoot(n.Name), Target: l.layout.nodeRootMount()}},
	}
}

// AgentExecArgv is the command line the lab starts node's agent with
// (meridian-lab netns-exec, with the node's view of the disk), for tests
// that restart an agent themselves.
func (l *Lab) AgentExecArgv(node string) ([]string, error) {
	n, err := l.Node(node)
	if err != nil {
		return nil, err
	}
	return append([]string{l.st.LabBin}, l.agentSpec(n).execArgs()...), nil
}

// APISocket is the path of the node's meridiand gRPC socket, for
// `meridianctl --socket`.
func (l *Lab) APISocket(node string) string {
	return l.layout.onHost(node, l.layout.nodePaths().APISocket)
}

// NodeStateDir is meridiand's --state-dir of node, seen from the host.
func (l *Lab) NodeStateDir(node string) string {
	return l.layout.onHost(node, l.layout.nodePaths().StateDir)
}

// NodeCNIConfDir and NodeCNIBinDir are the node's CNI directories (where
// the chart's install-cni writes), seen from the host.
func (l *Lab) NodeCNIConfDir(node string) string {
	return l.layout.onHost(node, l.layout.nodePaths().CNIConfDir)
}

func (l *Lab) NodeCNIBinDir(node string) string {
	return l.layout.onHost(node, l.layout.nodePaths().CNIBinDir)
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
	paths := l.layout.nodePaths()
	for _, d := range []string{paths.StateDir, paths.CNIConfDir, paths.CNIBinDir, filepath.Dir(paths.APISocket)} {
		if err := os.MkdirAll(l.layout.onHost(n.Name, d), 0o755); err != nil {
			return n, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if l.st.NoDaemon {
		conf, err := cniConflist(paths.StateDir)
		if err != nil {
			return n, err
		}
		if err := os.WriteFile(filepath.Join(l.layout.onHost(n.Name, paths.CNIConfDir), CNIConfFile), conf, 0o644); err != nil {
			return n, fmt.Errorf("node %s: write cni config: %w", n.Name, err)
		}
	}
	if _, err := l.launch.start(l.agentSpec(n)); err != nil {
		return n, err
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
	// The agent first, so that it does not restart meridiand meanwhile.
	for _, proc := range []string{agentProc(name), daemonProc(name)} {
		if err := l.launch.stop(ctx, daemonStopGrace, proc); err != nil {
			errs = append(errs, err)
		}
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

// StopDaemon sends sig to the node's meridiand, the container the node
// agent runs from the chart's DaemonSet. The agent holds the container
// first (nodes/<node>/hold/meridiand), so that it stays down until
// StartDaemon instead of being restarted as a crashed container would be.
// For signals that end a process (TERM, KILL, INT, QUIT) it waits until the
// daemon has exited.
func (l *Lab) StopDaemon(node string, sig syscall.Signal) error {
	if _, err := l.Node(node); err != nil {
		return err
	}
	name := daemonProc(node)
	info, err := l.launch.read(name)
	if err != nil || !info.Alive {
		return fmt.Errorf("%s is not running", name)
	}
	end := false
	switch sig {
	case syscall.SIGTERM, syscall.SIGKILL, syscall.SIGINT, syscall.SIGQUIT:
		end = true
		if err := l.holdDaemon(node, true); err != nil {
			return err
		}
	}
	if _, err := l.launch.signal(name, sig); err != nil {
		return err
	}
	if !end {
		return nil
	}
	if !waitGone(context.Background(), daemonStopGrace, []procInfo{info}) {
		return fmt.Errorf("%s (pid %d) still runs %s after %s", name, info.PID, daemonStopGrace, sig)
	}
	return nil
}

// StartDaemon lets the node agent start meridiand again after StopDaemon
// and waits until it runs.
func (l *Lab) StartDaemon(node string) error {
	if _, err := l.Node(node); err != nil {
		return err
	}
	name := daemonProc(node)
	before, err := l.launch.read(name)
	if err == nil && before.Alive {
		return fmt.Errorf("%s already runs as pid %d", name, before.PID)
	}
	if err := l.holdDaemon(node, false); err != nil {
		return err
	}
	deadline := time.Now().Add(daemonStartTimeout)
	for time.Now().Before(deadline) {
		if cur, err := l.launch.read(name); err == nil && cur.Alive && cur.PID != before.PID {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("node agent of %s did not start meridiand within %s (see %s)", node, daemonStartTimeout, l.LogPath(agentProc(node)))
}

// PauseDaemons stops meridiand on every node (StopDaemon with SIGTERM), for
// benchmarks that run daemons of their own on the lab's nodes.
func (l *Lab) PauseDaemons() error {
	for _, n := range l.Nodes() {
		if err := l.StopDaemon(n.Name, syscall.SIGTERM); err != nil {
			return fmt.Errorf("pause meridiand on %s: %w", n.Name, err)
		}
	}
	return nil
}

// ResumeDaemons starts meridiand again on every node after PauseDaemons
// and waits until the chart's pods are Ready, so the lab is whole again for
// whatever runs next.
func (l *Lab) ResumeDaemons(ctx context.Context) error {
	var errs []error
	for _, n := range l.Nodes() {
		if err := l.StartDaemon(n.Name); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if l.st.NoDaemon {
		return nil
	}
	return l.WaitMeridianReady(ctx)
}

// daemonStartTimeout bounds StartDaemon: the agent polls its hold file
// and starts the container within a second.
const daemonStartTimeout = 30 * time.Second

func (l *Lab) holdDaemon(node string, hold bool) error {
	p := filepath.Join(l.layout.nodeDir(node), "hold", "meridiand")
	if !hold {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("release meridiand on %s: %w", node, err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("hold meridiand on %s: %w", node, err)
	}
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		return fmt.Errorf("hold meridiand on %s: %w", node, err)
	}
	return nil
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
