package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"k8s.io/client-go/kubernetes"

	"github.com/meridian-net/meridian/cni-plugin/ipam"
	"github.com/meridian-net/meridian/daemon/dataplane"
	"github.com/meridian-net/meridian/daemon/events"
	"github.com/meridian-net/meridian/daemon/healthcheck"
	"github.com/meridian-net/meridian/daemon/metrics"
	"github.com/meridian-net/meridian/daemon/nft"
	nftkernel "github.com/meridian-net/meridian/daemon/nft/kernel"
	"github.com/meridian-net/meridian/daemon/services"
	"github.com/meridian-net/meridian/daemon/services/servicenft"
	"github.com/meridian-net/meridian/policy"
	"github.com/meridian-net/meridian/policy/policynft"
)

// prefixList is a flag holding comma-separated CIDRs.
type prefixList []netip.Prefix

func (p *prefixList) String() string {
	s := make([]string, len(*p))
	for i, x := range *p {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func (p *prefixList) Set(v string) error {
	for f := range strings.SplitSeq(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		pr, err := netip.ParsePrefix(f)
		if err != nil {
			return fmt.Errorf("%q is not a CIDR: %w", f, err)
		}
		*p = append(*p, pr.Masked())
	}
	return nil
}

// dataplaneFlags are the kube-proxy-style knobs of Service NAT.
type dataplaneFlags struct {
	clusterCIDRs      prefixList
	nodePortAddresses prefixList
	natOutgoing       bool
	masqueradeAll     bool
	metricsAddr       string
}

func (d *dataplaneFlags) register() {
	flag.Var(&d.clusterCIDRs, "cluster-cidr", "pod CIDRs of the whole cluster, comma-separated (default: the union of every Node's spec.podCIDRs)")
	flag.Var(&d.nodePortAddresses, "nodeport-addresses", "serve NodePorts only on node addresses inside these CIDRs, comma-separated (kube-proxy --nodeport-addresses; default: every node address)")
	flag.BoolVar(&d.natOutgoing, "nat-outgoing", true, "masquerade pod traffic leaving the cluster CIDRs for other destinations (Calico's natOutgoing)")
	flag.BoolVar(&d.masqueradeAll, "masquerade-all", false, "masquerade every packet sent to a Service (kube-proxy --masquerade-all)")
	flag.StringVar(&d.metricsAddr, "metrics-addr", ":9091", "address serving /metrics, /healthz and /readyz; empty disables it")
}

// newDataplane wires Service NAT and NetworkPolicy into table inet meridian
// of the host's network namespace.
func newDataplane(ctx context.Context, f dataplaneFlags, nodeName string, client kubernetes.Interface, h *netlink.Handle, conn *nftkernel.Conn, m *metrics.Metrics, log *slog.Logger) (*dataplane.Controller, *healthcheck.Server) {
	svcCfg := services.DefaultConfig()
	svcCfg.NATOutgoing = f.natOutgoing
	svcCfg.MasqueradeAll = f.masqueradeAll
	svcCfg.NodePortAddresses = f.nodePortAddresses
	// One Renderer for the life of the loop: it reuses the element text of
	// unchanged endpoints from one sync to the next.
	svcRenderer := servicenft.NewRenderer(servicenft.DefaultConfig())
	health := healthcheck.New("", log)
	ctrl := dataplane.New(dataplane.Config{
		NodeName:     nodeName,
		ClusterCIDRs: f.clusterCIDRs,
		Services:     svcCfg,
	}, client, conn, dataplane.Renderers{
		Services: svcRenderer.Render,
		Policy:   policynft.Render,
		PolicyFailClosed: func(m *policy.Model, applied nft.Table) (nft.Table, []string) {
			suspects := policynft.Suspects(m, applied)
			return policynft.RenderWith(m, policynft.RenderOptions{FailClosed: suspects}), suspects
		},
	}, dataplane.Options{
		Conntrack:    dataplane.NetlinkConntrack{Handle: h},
		HealthChecks: health,
		OnSync:       m.ObserveSync,
		Events:       events.NewNodeRecorder(ctx, client, nodeName),
	}, log)
	return ctrl, health
}

// ipamUsage reports the node pool's allocated and usable addresses.
func ipamUsage(stateDir string) func() (int, int, error) {
	store := ipam.NewStore(stateDir)
	return func() (int, int, error) {
		st, err := ipam.ReadNodeState(stateDir)
		if err != nil {
			return 0, 0, err
		}
		pool, ok := st.IPv4PodCIDR()
		if !ok {
			return 0, 0, fmt.Errorf("node has no IPv4 pod CIDR yet")
		}
		allocs, err := store.List()
		if err != nil {
			return 0, 0, err
		}
		return len(allocs), ipam.Usable(pool), nil
	}
}
