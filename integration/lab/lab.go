package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
)

// Options configure Up.
type Options struct {
	// Nodes is the number of nodes; 0 means 2.
	Nodes int
	// BinDir holds kube-apiserver, kube-controller-manager, kube-scheduler,
	// and, unless NoDaemon, helm and Meridian's binaries (meridiand,
	// meridianctl, meridian-cni, meridian-install-cni) or the image `make
	// image` built from them (meridian-image.tar); coredns, which the
	// node agents run for the cluster DNS's pods, is looked for here too.
	// Default: the directory of the running executable.
	BinDir string
	// StateDir holds certificates, kubeconfigs, etcd data, logs and pid
	// files. Default: DefaultStateDir.
	StateDir string
	// NoDaemon starts the node agents but does not install Meridian
	// (helm install of charts/meridian); the nodes get the lab's own
	// conflist and BinDir's meridian-cni.
	NoDaemon bool
	// LabBin is the meridian-lab executable, re-executed to start daemons
	// in namespaces and to run node agents. Default: the running executable
	// if it is named meridian-lab, else BinDir/meridian-lab.
	LabBin string
	// EtcdBin is the etcd executable. Default: BinDir/etcd if present,
	// else etcd from PATH (Debian's /usr/bin/etcd).
	EtcdBin string
	// Topology is the network's shape; "" is TopologyFlat.
	Topology Topology
	// ToR is what runs on the routers of TopologyRacks; "" is ToRFRR.
	// Ignored when flat.
	ToR ToRKind
	// ToRPassword, when set with FRR or BIRD routers, is the TCP MD5 key
	// of every node-router session: the routers are configured with it
	// and the BGPPeers read it from the Secret ToRPasswordSecret.
	ToRPassword string
	Log         *slog.Logger
}

const labBinName = "meridian-lab"

func (o Options) withDefaults() (Options, error) {
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Nodes < 0 || o.Nodes > maxNodes {
		return o, fmt.Errorf("nodes must be between 1 and %d, not %d", maxNodes, o.Nodes)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	topo, err := ParseTopology(string(o.Topology))
	if err != nil {
		return o, err
	}
	o.Topology = topo
	if o.Topology == TopologyRacks {
		if o.ToR == "" {
			o.ToR = ToRFRR
		}
		if _, err := ParseToR(string(o.ToR)); err != nil {
			return o, err
		}
	} else {
		o.ToR, o.ToRPassword = "", ""
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if err := checkStateDir(o.StateDir); err != nil {
		return o, err
	}
	self, _ := os.Executable()
	if o.BinDir == "" {
		if self == "" {
			return o, errors.New("no bin dir given and the executable's path is unknown")
		}
		o.BinDir = filepath.Dir(self)
	}
	abs, err := filepath.Abs(o.BinDir)
	if err != nil {
		return o, fmt.Errorf("bin dir: %w", err)
	}
	o.BinDir = abs
	if o.LabBin == "" {
		if filepath.Base(self) == labBinName {
			o.LabBin = self
		} else {
			o.LabBin = filepath.Join(o.BinDir, labBinName)
		}
	}
	if o.EtcdBin == "" {
		o.EtcdBin = filepath.Join(o.BinDir, "etcd")
		if !isExecutable(o.EtcdBin) {
			o.EtcdBin = "etcd"
		}
	}
	return o, nil
}

// checkStateDir refuses state directories whose removal by Down would be a
// disaster.
func checkStateDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("state dir %q must be absolute", dir)
	}
	clean := filepath.Clean(dir)
	if clean == "/" || filepath.Dir(clean) == "/" {
		return fmt.Errorf("state dir %q is too close to /", dir)
	}
	return nil
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func binPath(binDir, name string) string { return filepath.Join(binDir, name) }

// requiredBinaries lists what Up will execute, so a missing one fails Up
// before anything is made.
func requiredBinaries(o Options) []string {
	bins := []string{
		o.LabBin, o.EtcdBin,
		binPath(o.BinDir, "kube-apiserver"),
		binPath(o.BinDir, "kube-controller-manager"),
		binPath(o.BinDir, "kube-scheduler"),
	}
	if !o.NoDaemon {
		// The image is built from these unless BinDir has a fresh one.
		for _, b := range imageBinaries {
			bins = append(bins, binPath(o.BinDir, b))
		}
		bins = append(bins, binPath(o.BinDir, "helm"))
	}
	switch o.ToR {
	case ToRFRR:
		bins = append(bins, FRRZebra, FRRBgpd, "vtysh")
	case ToRBIRD:
		bins = append(bins, BIRDBin, "birdc")
	}
	return bins
}

func checkBinaries(o Options) error {
	var errs []error
	for _, b := range requiredBinaries(o) {
		if filepath.Base(b) == b {
			if _, err := lookPath(b); err != nil {
				errs = append(errs, fmt.Errorf("%s not found in PATH", b))
			}
			continue
		}
		if !isExecutable(b) {
			errs = append(errs, fmt.Errorf("%s is missing or not executable", b))
		}
	}
	return errors.Join(errs...)
}

// layout names the files in the state directory.
type layout struct{ dir string }

const (
	stateFile                   = "lab.json"
	adminKubeconfig             = "kubeconfig"
	controllerManagerKubeconfig = "controller-manager.kubeconfig"
	schedulerKubeconfig         = "scheduler.kubeconfig"
)

func (s layout) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}
func (s layout) pkiFiles() pkiFiles { return newPKIFiles(s.path("pki")) }
func (s layout) launcher(labBin string) launcher {
	return launcher{labBin: labBin, logDir: s.path("logs"), pidDir: s.path("pids")}
}
func (s layout) nodeDir(node string) string { return s.path("nodes", node) }
func (s layout) nodeCNIConfDir(node string) string {
	return filepath.Join(s.nodeDir(node), "cni", "net.d")
}
func (s layout) nodeStateDir(node string) string { return filepath.Join(s.nodeDir(node), "state") }

// labState is what Load needs to reattach to a running lab (lab.json).
type labState struct {
	BinDir   string `json:"binDir"`
	LabBin   string `json:"labBin"`
	EtcdBin  string `json:"etcdBin"`
	NoDaemon bool   `json:"noDaemon"`
	// ImageArchive is the image the nodes run the chart's pods from.
	ImageArchive string `json:"imageArchive,omitempty"`
	Nodes        []Node `json:"nodes"`
	// Topology, ToR, ToRPassword and Routers describe a racks lab; a lab
	// state without them is flat.
	Topology    Topology `json:"topology,omitempty"`
	ToR         ToRKind  `json:"tor,omitempty"`
	ToRPassword string   `json:"torPassword,omitempty"`
	Routers     []Router `json:"routers,omitempty"`
}

// Lab is a running lab.
type Lab struct {
	mu     sync.Mutex
	layout layout
	launch launcher
	st     labState
	log    *slog.Logger
}

func newLab(stateDir string, st labState, log *slog.Logger) *Lab {
	s := layout{dir: stateDir}
	return &Lab{layout: s, launch: s.launcher(st.LabBin), st: st, log: log}
}

// Up starts a lab, replacing any running one (Down first). On failure it
// removes everything it made before returning the error.
func Up(ctx context.Context, o Options) (*Lab, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := acquireHost(ctx, o.Log); err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := down(ctx, o.StateDir, o.Log); err != nil {
		releaseHost(1)
		return nil, fmt.Errorf("remove previous lab: %w", err)
	}
	l, err := up(ctx, o)
	if err != nil {
		o.Log.Error("lab up failed, cleaning up", "err", err)
		uerr := &UpError{Err: err, LogDir: keepLogs(layout{dir: o.StateDir})}
		err = uerr
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if derr := down(cctx, o.StateDir, o.Log); derr != nil {
			err = errors.Join(err, fmt.Errorf("clean up after failed up: %w", derr))
		}
		releaseHost(1)
		return nil, err
	}
	holdForLab()
	o.Log.Info("lab up", "nodes", len(l.st.Nodes), "took", time.Since(t0).Round(time.Millisecond),
		"kubeconfig", l.Kubeconfig())
	return l, nil
}

// UpError is a failed Up. The daemons' logs outlive the clean-up in LogDir
// (empty when none were written), for finding out why.
type UpError struct {
	Err    error
	LogDir string
}

func (e *UpError) Error() string {
	if e.LogDir == "" {
		return e.Err.Error()
	}
	return fmt.Sprintf("%v (logs kept in %s)", e.Err, e.LogDir)
}

func (e *UpError) Unwrap() error { return e.Err }

// keepLogs moves the state directory's logs out of the way of Down and
// returns where to, or "" when there are none.
func keepLogs(s layout) string {
	src := s.path("logs")
	if entries, err := os.ReadDir(src); err != nil || len(entries) == 0 {
		return ""
	}
	dst, err := os.MkdirTemp("", "meridian-lab-failed-up-")
	if err != nil {
		return ""
	}
	if err := os.Rename(src, filepath.Join(dst, "logs")); err != nil {
		os.Remove(dst)
		return ""
	}
	return filepath.Join(dst, "logs")
}

func up(ctx context.Context, o Options) (*Lab, error) {
	if err := checkBinaries(o); err != nil {
		return nil, fmt.Errorf("binaries: %w", err)
	}
	st := labState{BinDir: o.BinDir, LabBin: o.LabBin, EtcdBin: o.EtcdBin, NoDaemon: o.NoDaemon}
	if o.Topology == TopologyRacks {
		st.Topology, st.ToR, st.ToRPassword = o.Topology, o.ToR, o.ToRPassword
	}
	l := newLab(o.StateDir, st, o.Log)
	if o.Topology == TopologyRacks {
		for rack := 1; rack <= Racks; rack++ {
			l.st.Routers = append(l.st.Routers, newRouter(rack, o.ToR, l.layout))
		}
	}
	if err := os.MkdirAll(o.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	if err := l.save(); err != nil {
		return nil, err
	}
	if err := l.writeCredentials(time.Now()); err != nil {
		return nil, err
	}
	if !o.NoDaemon {
		if err := l.writeChart(); err != nil {
			return nil, err
		}
		archive, err := l.ensureImage()
		if err != nil {
			return nil, err
		}
		l.st.ImageArchive = archive
		if err := l.save(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(l.layout.nodeRootMount(), 0o755); err != nil {
		return nil, fmt.Errorf("create node root mount point: %w", err)
	}
	t0 := time.Now()
	if err := createFabric(); err != nil {
		return nil, err
	}
	if err := attachHost(); err != nil {
		return nil, err
	}
	if err := createEndpointNetns(CPNetns, cpPortName, APIServerIP); err != nil {
		return nil, err
	}
	if o.Topology == TopologyRacks {
		if err := l.startRacksNetwork(); err != nil {
			return nil, err
		}
	}
	o.Log.Info("fabric ready", "topology", o.Topology, "took", time.Since(t0).Round(time.Millisecond))
	if err := l.startControlPlane(ctx); err != nil {
		return nil, err
	}
	// Routers before nodes: meridiand finds its BGPPeers and the mesh
	// off from its first start.
	if err := l.startRouters(ctx); err != nil {
		return nil, err
	}
	for i := 1; i <= o.Nodes; i++ {
		if _, err := l.addNode(ctx, i); err != nil {
			return nil, err
		}
	}
	// Pods cannot be created before the controller manager has made the
	// namespace's default ServiceAccount; waiting for it also proves the
	// controller manager works. Meanwhile a daemon that cannot start (bad
	// flag, missing library) has time to exit, which checkAlive catches.
	if err := l.waitDefaultServiceAccount(ctx); err != nil {
		return nil, errors.Join(err, l.checkAlive())
	}
	if err := l.checkAlive(); err != nil {
		return nil, err
	}
	if !o.NoDaemon {
		if err := l.installMeridian(ctx); err != nil {
			return nil, errors.Join(err, l.checkAlive())
		}
	}
	// Cluster DNS last: its pods start once nodes run them; Up does not
	// wait for them (WaitDNSReady does).
	cs, err := l.Client()
	if err != nil {
		return nil, err
	}
	if err := applyDNS(ctx, cs); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Lab) writeCredentials(now time.Time) error {
	p, err := generatePKI(now)
	if err != nil {
		return err
	}
	if err := p.write(l.layout.pkiFiles()); err != nil {
		return err
	}
	if err := l.writeAPITLS(p, now); err != nil {
		return err
	}
	for _, kc := range []struct {
		file   string
		server string
		client keyPair
	}{
		{adminKubeconfig, APIServerURL(), p.Admin},
		{controllerManagerKubeconfig, APIServerURL(), p.ControllerManager},
		{schedulerKubeconfig, APIServerURL(), p.Scheduler},
	} {
		if err := writeKubeconfig(l.layout.path(kc.file), kc.server, p.CA.CertPEM, kc.client); err != nil {
			return err
		}
	}
	return nil
}

// checkAlive fails with the log tail of the first recorded process that
// is no longer running.
func (l *Lab) checkAlive() error {
	procs, err := l.launch.list()
	if err != nil {
		return err
	}
	for _, p := range procs {
		if !p.Alive {
			return fmt.Errorf("%s exited; last lines of %s:\n%s", p.Name, p.Log, tailFile(p.Log, 2048))
		}
	}
	return nil
}

func (l *Lab) save() error {
	b, err := json.MarshalIndent(l.st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	tmp := l.layout.path(stateFile + ".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, l.layout.path(stateFile)); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// Load reattaches to the lab whose state is in stateDir ("" for the
// default).
func Load(stateDir string) (*Lab, error) {
	return LoadWithLogger(stateDir, nil)
}

// LoadWithLogger is Load with a logger for the lab's later operations.
func LoadWithLogger(stateDir string, log *slog.Logger) (*Lab, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	b, err := os.ReadFile(filepath.Join(stateDir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no lab in %s (run meridian-lab up)", stateDir)
	}
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	var st labState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("decode lab state %s: %w", filepath.Join(stateDir, stateFile), err)
	}
	return newLab(stateDir, st, log), nil
}

// StateDir is the lab's state directory.
func (l *Lab) StateDir() string { return l.layout.dir }

// BinDir is where the lab takes its binaries from.
func (l *Lab) BinDir() string { return l.st.BinDir }

// Kubeconfig is the path of the admin kubeconfig for the host.
func (l *Lab) Kubeconfig() string { return l.layout.path(adminKubeconfig) }

// Nodes returns the lab's nodes in index order.
func (l *Lab) Nodes() []Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.st.Nodes)
}

// Node returns the named node.
func (l *Lab) Node(name string) (Node, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nodeLocked(name)
}

func (l *Lab) nodeLocked(name string) (Node, error) {
	for _, n := range l.st.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return Node{}, fmt.Errorf("no node %q in the lab", name)
}

// Client returns an admin clientset for the lab's API server.
func (l *Lab) Client() (kubernetes.Interface, error) {
	return clientFor(l.Kubeconfig())
}

// Process is a daemon the lab started.
type Process struct {
	Name string
	// Node is empty for control plane processes.
	Node  string
	PID   int
	Alive bool
	Log   string
}

// Processes lists the daemons recorded in the state directory: the control
// plane first, then per node.
func (l *Lab) Processes() ([]Process, error) {
	procs, err := l.launch.list()
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, p := range procs {
		out = append(out, Process{Name: p.Name, Node: nodeOfProc(p.Name), PID: p.PID, Alive: p.Alive, Log: p.Log})
	}
	order := map[string]int{procEtcd: 0, procAPIServer: 1, procControllerManager: 2, procScheduler: 3}
	rank := func(p Process) int {
		if r, ok := order[p.Name]; ok {
			return r
		}
		return 4
	}
	slices.SortStableFunc(out, func(a, b Process) int {
		if d := rank(a) - rank(b); d != 0 {
			return d
		}
		if a.Node != b.Node {
			return compareNodeNames(a.Node, b.Node)
		}
		return compareStrings(a.Name, b.Name)
	})
	return out, nil
}

// LogPath is the log file of a lab process (see Process.Name).
func (l *Lab) LogPath(proc string) string { return l.launch.logPath(proc) }
