// Command meridiand is Meridian's node daemon: it runs in the host network
// of every node, peers over BGP with the other nodes and installs the routes
// to their pods.
//
// Go 1.24 and later open listeners as MPTCP, which refuses TCP_MD5SIG
// (ENOPROTOOPT), so GoBGP could not put BGPPeer passwords (RFC 2385) on its
// listening socket; BGP is plain TCP.
//
//go:debug multipathtcp=0
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/bgp/gobgp"
	"github.com/meridian-net/meridian/cni-plugin/ipam"
	"github.com/meridian-net/meridian/daemon/apiserver"
	"github.com/meridian-net/meridian/daemon/metrics"
	nftkernel "github.com/meridian-net/meridian/daemon/nft/kernel"
	"github.com/meridian-net/meridian/daemon/routes"
	"github.com/meridian-net/meridian/daemon/routing"
	"github.com/meridian-net/meridian/daemon/tunnel"
)

func main() {
	var (
		nodeName   = flag.String("node-name", os.Getenv("NODE_NAME"), "name of this node's Node object (default $NODE_NAME)")
		kubeconfig = flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig path; empty uses the in-cluster service account")
		asn        = flag.Uint("asn", uint(bgp.DefaultASN), "default BGP ASN of the nodes (a node's meridian.io/asn annotation overrides it)")
		bgpPort    = flag.Int("bgp-port", 179, "TCP port the BGP speaker listens on and dials")
		grTime     = flag.Duration("graceful-restart-time", 120*time.Second, "BGP graceful restart time announced to peers (0 disables graceful restart)")
		stateDir   = flag.String("state-dir", "/var/lib/meridian", "directory shared with meridian-cni (node state, IPAM)")
		logLevel   = flag.String("log-level", "info", "debug, info, warn or error")
		apiSocket  = flag.String("api-socket", "/var/run/meridian/meridian.sock", "Unix socket of the gRPC API (mode 0600); empty disables it")
		apiListen  = flag.String("api-listen", "", "also serve the gRPC API on this TCP address (e.g. :9092) with mutual TLS; needs --api-tls-secret; empty disables it")
		apiTLS     = flag.String("api-tls-secret", "", "directory of a mounted kubernetes.io/tls Secret for --api-listen: tls.crt and tls.key serve, ca.crt verifies the client certificates every client must present; re-read when the files change")
		withdraw   = flag.Bool("withdraw-on-stop", false, "on SIGTERM, close BGP sessions with a hard reset so peers withdraw this node's routes at once (default: peers keep them for the graceful-restart time, so restarts and upgrades do not drop traffic)")
	)
	var dp dataplaneFlags
	dp.register()
	var ef encapFlags
	ef.register()
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "meridiand: --log-level: %v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *nodeName == "" {
		log.Error("no node name: set --node-name or NODE_NAME (the DaemonSet sets it from spec.nodeName)")
		os.Exit(2)
	}
	if *apiListen != "" && *apiTLS == "" {
		log.Error("--api-listen needs --api-tls-secret: the API is only served on TCP with mutual TLS")
		os.Exit(2)
	}
	if *bgpPort < 1 || *bgpPort > 65535 {
		log.Error("invalid --bgp-port", "port", *bgpPort)
		os.Exit(2)
	}
	mode, typ, err := ef.parse()
	if err != nil {
		log.Error("invalid encapsulation flags", "err", err)
		os.Exit(2)
	}
	ec := encapConfig{mode: mode, typ: typ, podMTU: ef.podMTU}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, log, *nodeName, *kubeconfig, uint32(*asn), int32(*bgpPort), *grTime, *stateDir, apiFlags{*apiSocket, *apiListen, *apiTLS}, *withdraw, dp, ec); err != nil {
		log.Error("meridiand stopped", "err", err)
		os.Exit(1)
	}
}

// apiFlags say where the gRPC API is served.
type apiFlags struct {
	socket string
	// listen and tlsDir: the optional mutual-TLS TCP listener.
	listen, tlsDir string
}

func run(ctx context.Context, log *slog.Logger, nodeName, kubeconfig string, asn uint32, bgpPort int32, grTime time.Duration, stateDir string, api apiFlags, withdraw bool, dp dataplaneFlags, ec encapConfig) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var restCfg *rest.Config
	var err error
	if kubeconfig != "" {
		restCfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		restCfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("load Kubernetes client config: %w", err)
	}
	restCfg.UserAgent = "meridiand/" + nodeName
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("create Kubernetes client: %w", err)
	}

	if err := routes.EnableIPv4Forwarding(""); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()

	applier := routes.NewApplier(h, log)
	m := metrics.New()
	// The controller owns the speaker and replaces it when the node's BGP
	// identity changes; the API reads whichever one it built last.
	var current currentSpeaker
	newSpeaker := func(cfg bgp.Config) (bgp.Speaker, error) {
		s, err := gobgp.New(cfg, log)
		if err != nil {
			return nil, err
		}
		current.set(s)
		return s, nil
	}
	writeState := func(name string, cidrs []netip.Prefix, mtu int) error {
		return ipam.NodeState{NodeName: name, PodCIDRs: cidrs, MTU: mtu}.Write(stateDir)
	}
	// BGPConfiguration and BGPPeer are read as unstructured objects and
	// converted to the api/crd/v1alpha1 types.
	crdClient, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("create Kubernetes dynamic client: %w", err)
	}
	ctrl := routing.New(routing.Config{
		NodeName:            nodeName,
		DefaultASN:          asn,
		BGPPort:             bgpPort,
		GracefulRestartTime: grTime,
		WithdrawOnStop:      withdraw,
		// The import policy's allowed set when BGPConfiguration names no
		// acceptedPrefixes.
		ClusterCIDRs:      dp.clusterCIDRs,
		Encapsulation:     ec.mode,
		EncapsulationType: ec.typ,
		PodMTU:            ec.podMTU,
	}, client, crdClient, observedApplier{applier, m.ObserveRoutes}, tunnel.NewApplier(h, log), newSpeaker, writeState, log)
	log.Info("meridiand starting", "node", nodeName, "asn", asn, "stateDir", stateDir, "apiSocket", api.socket, "apiListen", api.listen,
		"encapsulation", ec.mode, "encapsulationType", ec.typ, "podMTU", ec.podMTU)

	// The API, the metrics listener and the dataplane run beside routing.
	var wg sync.WaitGroup
	m.WatchBGP(func() ([]bgp.PeerState, error) { return current.Peers(ctx) }, log)
	m.WatchIPAM(ipamUsage(stateDir), log)
	// One handle on table inet meridian: the dataplane writes it, the API
	// reads its counters.
	nftConn := nftkernel.New(0, log)
	dpCtrl, health := newDataplane(ctx, dp, nodeName, client, h, nftConn, m, log)
	defer health.Close()
	// meridian-cni's per-operation records, drained into the CNI metrics.
	cniRecords := m.WatchCNI(stateDir, log)
	wg.Go(func() { cniRecords.Run(ctx) })
	if api.socket != "" || api.listen != "" {
		srv := apiserver.New(apiserver.Sources{
			Kernel: applier, BGP: &current, IPAM: ipam.NewStore(stateDir),
			// Services and policy as last applied, and the kernel's rule
			// counters for the policy view.
			Dataplane: dpCtrl, Counters: nftConn,
		}, log)
		// The API only observes: losing it must not stop routing.
		if api.socket != "" {
			wg.Go(func() {
				if err := srv.Serve(ctx, api.socket); err != nil {
					log.Error("gRPC API not served; routing goes on without it", "subsys", "api", "socket", api.socket, "err", err)
				}
			})
		}
		if api.listen != "" {
			wg.Go(func() {
				var lc net.ListenConfig
				ln, err := lc.Listen(ctx, "tcp", api.listen)
				if err == nil {
					err = srv.ServeTCP(ctx, ln, api.tlsDir)
				}
				if err != nil {
					log.Error("gRPC API not served on TCP; routing goes on without it", "subsys", "api", "addr", api.listen, "err", err)
				}
			})
		}
	}
	if dp.metricsAddr != "" {
		checks := []metrics.Check{
			{Name: "routes", Ready: metrics.Closed(ctrl.Ready(), "routes not installed with BGP converged yet")},
			{Name: "nftables", Ready: metrics.Closed(dpCtrl.Ready(), "Services and NetworkPolicy not programmed yet")},
		}
		wg.Go(func() {
			if err := m.Serve(ctx, dp.metricsAddr, checks, log); err != nil {
				log.Error("metrics and health not served", "subsys", "metrics", "err", err)
			}
		})
	}
	// Routing and the dataplane are independent: a stuck API watch or a
	// refused nftables transaction in one does not hold up the other.
	var dpErr error
	wg.Go(func() { dpErr = dpCtrl.Run(ctx) })
	err = ctrl.Run(ctx)
	// Routing only returns early on a setup error; take the rest down too.
	cancel()
	wg.Wait()
	// Kernel routes and table inet meridian stay as they are: the next
	// meridiand adopts them.
	log.Info("meridiand stopping; kernel routes and nftables left in place", "withdrawSessions", withdraw)
	return errors.Join(err, dpErr)
}

// currentSpeaker is the speaker the routing controller built last, for the
// API; it answers apiserver.ErrUnavailable until the first one exists.
type currentSpeaker struct {
	mu sync.Mutex
	s  bgp.Speaker
}

func (c *currentSpeaker) set(s bgp.Speaker) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.s = s
}

func (c *currentSpeaker) get() (bgp.Speaker, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s == nil {
		return nil, fmt.Errorf("BGP speaker not started: %w", apiserver.ErrUnavailable)
	}
	return c.s, nil
}

func (c *currentSpeaker) Paths(ctx context.Context) ([]bgp.Path, error) {
	s, err := c.get()
	if err != nil {
		return nil, err
	}
	ps, err := s.Paths(ctx)
	return ps, stoppedUnavailable(err)
}

func (c *currentSpeaker) Peers(ctx context.Context) ([]bgp.PeerState, error) {
	s, err := c.get()
	if err != nil {
		return nil, err
	}
	ps, err := s.Peers(ctx)
	return ps, stoppedUnavailable(err)
}

// stoppedUnavailable marks a stopped speaker as a passing condition: the
// controller starts a new one on its next sync.
func stoppedUnavailable(err error) error {
	if errors.Is(err, gobgp.ErrStopped) {
		return fmt.Errorf("BGP speaker restarting: %w", errors.Join(err, apiserver.ErrUnavailable))
	}
	return err
}

// observedApplier reports each route apply to the metrics.
type observedApplier struct {
	*routes.Applier
	observe func(routes.Result)
}

func (a observedApplier) Apply(desired []routes.Route, prune bool) (routes.Result, error) {
	res, err := a.Applier.Apply(desired, prune)
	a.observe(res)
	return res, err
}
