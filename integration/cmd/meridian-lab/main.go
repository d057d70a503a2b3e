// Command meridian-lab runs a whole Kubernetes cluster with Meridian in
// network namespaces on this host.
//
//	meridian-lab up [--nodes N] [--no-daemon] [--wait DURATION]
//	                [--topology flat|racks] [--tor frr|bird|none] [--tor-password KEY]
//	meridian-lab status
//	meridian-lab exec NODE -- CMD...            (NODE: node-1, ... or cp)
//	meridian-lab exec NAMESPACE/POD -- CMD...
//	meridian-lab kubeconfig
//	meridian-lab down
//
// Every subcommand takes --state-dir (default /run/meridian-lab) and
// --bin-dir (default: this executable's directory).
//
// Exit codes: 0 success; 1 failure (status: lab unhealthy); 2 usage error;
// 3 no lab in the state directory. exec exits with the command's status.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meridian-net/meridian/integration/lab"
	"github.com/meridian-net/meridian/integration/nodeagent"
	"github.com/meridian-net/meridian/integration/nodeagent/container"
)

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	exitNoLab   = 3
)

// errUsage marks errors that are the caller's command line's fault.
var errUsage = errors.New("usage")

// errNoLab marks "there is no lab to act on".
var errNoLab = errors.New("no lab")

const usage = `usage: meridian-lab [--state-dir DIR] [--bin-dir DIR] [-v] COMMAND [ARGS]

commands:
  up [--nodes N] [--no-daemon] [--wait DURATION]
     [--topology flat|racks] [--tor frr|bird|none] [--tor-password KEY]
                          start a lab (replacing a running one) and wait for
                          its nodes to be Ready (--wait 0: do not wait);
                          racks: nodes on two subnets behind routers tor1
                          and tor2 running FRR, BIRD or static routes only
  down                    remove the lab and everything it made
  status                  show nodes, processes and logs
  exec NODE -- CMD...     run CMD in a node's netns (NODE: node-1.. or cp)
  exec ROUTER -- CMD...   run CMD in a racks lab's router (tor1, tor2);
                          vtysh and birdc reach its FRR or BIRD
  exec NS/POD -- CMD...   run CMD in a pod's netns
  kubeconfig              print the path of the admin kubeconfig
  walkthrough             deploy the seed's web app, print routes and a
                          pod-to-pod reachability matrix
  bench [--out FILE] [--services 1000,5000] [--services-only]
        [--policies 1000] [--policy-pods 2000] [--policies-only]
        [--bgp-prefixes 10k,100k] [--bgp-withdraws 5] [--bgp-only]
                          measure pod start-up, CNI ADD latency and
                          throughput against their reference points,
                          Service NAT (meridiand vs kube-proxy nftables)
                          at each Service count (0: skip), NetworkPolicy
                          (meridiand vs kube-network-policies) and BGP
                          (learned prefixes into the FIB, a pod CIDR's
                          withdrawal: meridiand vs BIRD)
`

type globals struct {
	stateDir string
	binDir   string
	verbose  bool
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.stateDir, "state-dir", g.stateDir, "lab state directory")
	fs.StringVar(&g.binDir, "bin-dir", g.binDir, "directory with the lab's binaries (default: this executable's)")
	fs.BoolVar(&g.verbose, "v", g.verbose, "debug logging")
}

func (g *globals) logger() *slog.Logger {
	level := slog.LevelInfo
	if g.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	// Hidden subcommands re-executed by the lab itself; no global flags.
	if len(args) > 0 {
		switch args[0] {
		case lab.NetnsExecCommand:
			return netnsExec(args[1:])
		case lab.AgentCommand:
			return report(agent(args[1:]))
		case container.InitCommand:
			// Returns only when the container could not be started;
			// container.Start reads the same text from its status pipe.
			err := container.Init()
			fmt.Fprintf(os.Stderr, "meridian-lab %s: %v\n", container.InitCommand, err)
			return exitFailure
		}
	}
	g := &globals{stateDir: lab.DefaultStateDir}
	top := flag.NewFlagSet("meridian-lab", flag.ContinueOnError)
	top.SetOutput(io.Discard)
	g.register(top)
	if err := top.Parse(args); err != nil {
		return report(fmt.Errorf("%w: %w", errUsage, err))
	}
	rest := top.Args()
	if len(rest) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd, cargs := rest[0], rest[1:]
	var err error
	switch cmd {
	case "up":
		err = up(ctx, g, cargs)
	case "down":
		err = down(ctx, g, cargs)
	case "status":
		err = status(ctx, g, cargs)
	case "exec":
		err = execCmd(ctx, g, cargs)
	case "kubeconfig":
		err = kubeconfig(g, cargs)
	case "walkthrough":
		err = walkthroughCmd(ctx, g, cargs)
	case "bench":
		err = benchCmd(ctx, g, cargs)
	case "help", "-h", "--help":
		fmt.Fprint(os.Stdout, usage)
		return exitOK
	default:
		err = fmt.Errorf("%w: unknown command %q", errUsage, cmd)
	}
	return report(err)
}

// report prints err and maps it to an exit code.
func report(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errUsage):
		fmt.Fprintf(os.Stderr, "meridian-lab: %v\n\n%s", err, usage)
		return exitUsage
	case errors.Is(err, errNoLab):
		fmt.Fprintf(os.Stderr, "meridian-lab: %v\n", err)
		return exitNoLab
	default:
		fmt.Fprintf(os.Stderr, "meridian-lab: %v\n", err)
		return exitFailure
	}
}

// subFlags parses a subcommand's flags, global ones included, so they may
// come before or after the subcommand.
func subFlags(name string, g *globals, args []string, define func(*flag.FlagSet)) ([]string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.register(fs)
	if define != nil {
		define(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", errUsage, name, err)
	}
	return fs.Args(), nil
}

func noArgs(name string, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: %s takes no arguments, got %q", errUsage, name, args)
	}
	return nil
}

func loadLab(g *globals) (*lab.Lab, error) {
	l, err := lab.LoadWithLogger(g.stateDir, g.logger())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoLab, err)
	}
	return l, nil
}

func up(ctx context.Context, g *globals, args []string) error {
	var nodes int
	var noDaemon bool
	var wait time.Duration
	var topology, tor, torPassword string
	rest, err := subFlags("up", g, args, func(fs *flag.FlagSet) {
		fs.IntVar(&nodes, "nodes", 3, "number of nodes")
		fs.BoolVar(&noDaemon, "no-daemon", false, "do not start meridiand")
		fs.StringVar(&topology, "topology", string(lab.TopologyFlat), "flat (one segment) or racks (two rack subnets behind routers tor1, tor2)")
		fs.StringVar(&tor, "tor", string(lab.ToRFRR), "with --topology racks: what the routers run: frr, bird or none (static routes only)")
		fs.StringVar(&torPassword, "tor-password", "", "with --tor frr|bird: TCP MD5 key of the node-router sessions")
		fs.DurationVar(&wait, "wait", 2*time.Minute, "how long to wait for nodes to be Ready (0: do not wait)")
	})
	if err != nil {
		return err
	}
	if err := noArgs("up", rest); err != nil {
		return err
	}
	if nodes < 1 {
		return fmt.Errorf("%w: --nodes must be at least 1", errUsage)
	}
	topo, err := lab.ParseTopology(topology)
	if err != nil {
		return fmt.Errorf("%w: --topology: %w", errUsage, err)
	}
	torKind, err := lab.ParseToR(tor)
	if err != nil {
		return fmt.Errorf("%w: --tor: %w", errUsage, err)
	}
	t0 := time.Now()
	l, err := lab.Up(ctx, lab.Options{Nodes: nodes, BinDir: g.binDir, StateDir: g.stateDir, NoDaemon: noDaemon,
		Topology: topo, ToR: torKind, ToRPassword: torPassword, Log: g.logger()})
	if err != nil {
		return err
	}
	if wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		if err := l.WaitNodesReady(wctx); err != nil {
			return fmt.Errorf("lab is up but not ready (meridian-lab status; meridian-lab down to remove it): %w", err)
		}
	}
	fmt.Printf("lab up in %s: %d nodes, API server %s\n", time.Since(t0).Round(100*time.Millisecond), nodes, lab.APIServerURL())
	for _, r := range l.Routers() {
		fmt.Printf("router %s (%s, AS%d): rack %s, core %s, gateway %s\n", r.Name, l.ToR(), r.ASN, r.Subnet, r.CoreIP, r.RackIP)
	}
	fmt.Printf("export KUBECONFIG=%s\n", l.Kubeconfig())
	return nil
}

func down(ctx context.Context, g *globals, args []string) error {
	rest, err := subFlags("down", g, args, nil)
	if err != nil {
		return err
	}
	if err := noArgs("down", rest); err != nil {
		return err
	}
	t0 := time.Now()
	if err := lab.DownWithLogger(ctx, g.stateDir, g.logger()); err != nil {
		return err
	}
	fmt.Printf("lab down in %s\n", time.Since(t0).Round(100*time.Millisecond))
	return nil
}

func kubeconfig(g *globals, args []string) error {
	rest, err := subFlags("kubeconfig", g, args, nil)
	if err != nil {
		return err
	}
	if err := noArgs("kubeconfig", rest); err != nil {
		return err
	}
	l, err := loadLab(g)
	if err != nil {
		return err
	}
	fmt.Println(l.Kubeconfig())
	return nil
}

func status(ctx context.Context, g *globals, args []string) error {
	rest, err := subFlags("status", g, args, nil)
	if err != nil {
		return err
	}
	if err := noArgs("status", rest); err != nil {
		return err
	}
	l, err := loadLab(g)
	if err != nil {
		return err
	}
	var problems []string
	fmt.Printf("state dir:  %s\napi server: %s\nkubeconfig: %s\n\n", l.StateDir(), lab.APIServerURL(), l.Kubeconfig())

	apiNodes := map[string]*corev1.Node{}
	cs, err := l.Client()
	if err == nil {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var list *corev1.NodeList
		list, err = cs.CoreV1().Nodes().List(qctx, metav1.ListOptions{})
		cancel()
		if err == nil {
			for i := range list.Items {
				apiNodes[list.Items[i].Name] = &list.Items[i]
			}
		}
	}
	if err != nil {
		problems = append(problems, fmt.Sprintf("api server unreachable: %v", err))
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tIP\tNETNS\tPOD CIDR\tREADY\tAPI SOCKET")
	for _, n := range l.Nodes() {
		cidr, ready := "-", "unknown"
		if err == nil {
			ready = "not registered"
		}
		if an, ok := apiNodes[n.Name]; ok {
			if an.Spec.PodCIDR != "" {
				cidr = an.Spec.PodCIDR
			}
			ready = readyCondition(an)
		}
		if ready != "True" {
			problems = append(problems, fmt.Sprintf("%s not ready (%s)", n.Name, ready))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.IP, n.Netns, cidr, ready, l.APISocket(n.Name))
	}
	tw.Flush()
	fmt.Println()

	if routers := l.Routers(); len(routers) > 0 {
		tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ROUTER\tRUNS\tASN\tCORE IP\tRACK SUBNET\tGATEWAY\tNETNS")
		for _, r := range routers {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.Name, r.Kind, r.ASN, r.CoreIP, r.Subnet, r.RackIP, r.Netns)
		}
		tw.Flush()
		fmt.Println()
	}

	procs, perr := l.Processes()
	if perr != nil {
		return perr
	}
	tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROCESS\tNODE\tPID\tSTATE\tLOG")
	for _, p := range procs {
		state, node := "running", p.Node
		if !p.Alive {
			state = "exited"
			problems = append(problems, p.Name+" exited")
		}
		if node == "" {
			node = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", p.Name, node, p.PID, state, p.Log)
	}
	tw.Flush()
	if len(problems) > 0 {
		return fmt.Errorf("lab unhealthy: %s", strings.Join(problems, "; "))
	}
	return nil
}

func readyCondition(n *corev1.Node) string {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return string(c.Status)
		}
	}
	return "no condition"
}

// execCmd replaces this process with `ip netns exec NETNS CMD...`, so the
// command gets the terminal, signals and exit status directly.
func execCmd(ctx context.Context, g *globals, args []string) error {
	rest, err := subFlags("exec", g, args, nil)
	if err != nil {
		return err
	}
	if len(rest) < 3 || rest[1] != "--" {
		return fmt.Errorf("%w: exec TARGET -- CMD [ARGS...]", errUsage)
	}
	target, argv := rest[0], rest[2:]
	l, err := loadLab(g)
	if err != nil {
		return err
	}
	var netnsName string
	if r, rerr := l.Router(target); rerr == nil {
		// vtysh and birdc need the router's sockets: RouterExecArgv adds
		// them.
		full, err := l.RouterExecArgv(r.Name, argv...)
		if err != nil {
			return err
		}
		path, err := exec.LookPath(full[0])
		if err != nil {
			return err
		}
		return fmt.Errorf("exec %s: %w", path, syscall.Exec(path, full, os.Environ()))
	}
	switch {
	case strings.Contains(target, "/"):
		ns, pod, _ := strings.Cut(target, "/")
		if netnsName, err = l.PodNetns(ctx, ns, pod); err != nil {
			return err
		}
	case target == "cp" || target == "control-plane":
		netnsName = lab.CPNetns
	default:
		n, err := l.Node(target)
		if err != nil {
			return err
		}
		netnsName = n.Netns
	}
	full := lab.IPNetnsExecArgv(netnsName, argv...)
	path, err := exec.LookPath(full[0])
	if err != nil {
		return err
	}
	return fmt.Errorf("exec %s: %w", path, syscall.Exec(path, full, os.Environ()))
}

// netnsExec is the hidden `netns-exec [--bind SRC:DST]... NAME -- CMD...`:
// it only returns on failure, with 127 as a shell does for a command it
// cannot run.
func netnsExec(args []string) int {
	var binds []lab.Bind
	for len(args) >= 2 && args[0] == "--bind" {
		b, err := lab.ParseBind(args[1])
		if err != nil {
			fmt.Fprintf(os.Stderr, "meridian-lab %s: %v\n", lab.NetnsExecCommand, err)
			return exitUsage
		}
		binds = append(binds, b)
		args = args[2:]
	}
	if len(args) < 3 || args[1] != "--" {
		fmt.Fprintf(os.Stderr, "meridian-lab %s: usage: %s [--bind SRC:DST]... NAME -- CMD [ARGS...]\n", lab.NetnsExecCommand, lab.NetnsExecCommand)
		return exitUsage
	}
	err := lab.NetnsExec(args[0], binds, args[2:])
	fmt.Fprintf(os.Stderr, "meridian-lab: %v\n", err)
	return 127
}

// agent is the hidden `agent` subcommand: one node agent, run inside the
// node's namespace until SIGTERM.
func agent(args []string) error {
	var cfg nodeagent.Config
	var nodeIP string
	var binDirs multiFlag
	fs := flag.NewFlagSet(lab.AgentCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.NodeName, "node", "", "node name")
	fs.StringVar(&nodeIP, "node-ip", "", "node address")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig")
	fs.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "", "CNI configuration directory")
	fs.Var(&binDirs, "cni-bin-dir", "CNI plugin directory (repeatable, or comma-separated)")
	fs.StringVar(&cfg.StateDir, "state-dir", "", "the node's state directory")
	fs.StringVar(&cfg.CoreDNSBin, "coredns-bin", "", "CoreDNS executable for CoreDNS pods (default: coredns in a CNI bin dir)")
	fs.StringVar(&cfg.ImageArchive, "image-archive", "", "docker-archive of the images host-network pods run from")
	fs.StringVar(&cfg.ImageCacheDir, "image-cache-dir", "", "where images are unpacked (default STATE/images)")
	var containerInit multiFlag
	fs.Var(&containerInit, "container-init", "argv that starts a container, comma-separated (meridian-lab,container-init)")
	fs.StringVar(&cfg.LogDir, "log-dir", "", "container logs (default STATE/logs)")
	fs.StringVar(&cfg.PidDir, "pid-dir", "", "container pid records (default STATE/pids)")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: agent: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: agent takes no arguments, got %q", errUsage, fs.Args())
	}
	ip, err := netip.ParseAddr(nodeIP)
	if err != nil {
		return fmt.Errorf("%w: agent: --node-ip: %w", errUsage, err)
	}
	cfg.NodeIP = ip
	cfg.CNIBinDirs = binDirs
	cfg.ContainerInit = containerInit
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("node", cfg.NodeName)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = nodeagent.Run(ctx, cfg, log)
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// multiFlag collects a repeatable, comma-separated string flag.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, ",") }

func (m *multiFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s != "" {
			*m = append(*m, s)
		}
	}
	return nil
}
