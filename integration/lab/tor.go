package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Router is a top-of-rack router of TopologyRacks: a namespace
// (mlab-tor<N>) with one link on the core segment and one on its rack's,
// running FRR, BIRD or nothing but the kernel's forwarding.
type Router struct {
	Name  string  `json:"name"`
	Netns string  `json:"netns"`
	Rack  int     `json:"rack"`
	Kind  ToRKind `json:"kind"`
	// ASN is the router's own ASN (RouterASN); the rack's nodes have
	// RackASN.
	ASN uint32 `json:"asn"`
	// CoreIP is the router's address on the core segment (LabSubnet),
	// where it peers with the other router.
	CoreIP netip.Addr `json:"coreIP"`
	// RackIP is its address on the rack's subnet: the nodes' gateway and
	// BGP neighbour.
	RackIP netip.Addr `json:"rackIP"`
	// Subnet is the rack's node subnet.
	Subnet netip.Prefix `json:"subnet"`
	// Dir holds the router's configuration, FRR's vty sockets or BIRD's
	// control socket.
	Dir string `json:"dir"`
}

// Router daemons' executables, from Debian's frr and bird2 packages.
const (
	FRRZebra = "/usr/lib/frr/zebra"
	FRRBgpd  = "/usr/lib/frr/bgpd"
	BIRDBin  = "/usr/sbin/bird"
)

// torPeerHold and torPeerKeepalive are the routers' session timers: short,
// so a test sees a dead session in seconds; the ratio is RFC 4271's 3:1.
const (
	torPeerKeepalive = 3
	torPeerHold      = 9
)

// ToRPasswordSecret is the Secret (in kube-system, key "password") holding
// the TCP MD5 key of the routers' sessions when Options.ToRPassword is set.
const ToRPasswordSecret = "meridian-lab-tor-md5"

// PodCIDRMaskSize is the size of the pod CIDR the controller manager gives
// each node (--node-cidr-mask-size).
const PodCIDRMaskSize = 24

func routerProc(router, daemon string) string { return router + "-" + daemon }

// BGPSocket is where vtysh finds an FRR router's daemons, or birdc a BIRD
// router's control socket.
func (r Router) BGPSocket() string {
	if r.Kind == ToRBIRD {
		return filepath.Join(r.Dir, "bird.ctl")
	}
	return r.Dir
}

// RouterArgv points vtysh and birdc at the router's own daemons (they
// would look in /run/frr and /run/bird otherwise, where no lab router
// listens); other commands are left alone.
func RouterArgv(r Router, argv []string) []string {
	if len(argv) == 0 {
		return argv
	}
	var extra []string
	switch filepath.Base(argv[0]) {
	case "vtysh":
		if !hasFlag(argv, "--vty_socket") {
			extra = []string{"--vty_socket", r.BGPSocket()}
		}
	case "birdc", "birdcl":
		if !hasFlag(argv, "-s") {
			extra = []string{"-s", r.BGPSocket()}
		}
	}
	if len(extra) == 0 {
		return argv
	}
	out := append([]string{argv[0]}, extra...)
	return append(out, argv[1:]...)
}

func hasFlag(argv []string, flag string) bool {
	for _, a := range argv[1:] {
		if a == flag || strings.HasPrefix(a, flag+"=") {
			return true
		}
	}
	return false
}

// newRouter describes rack's router.
func newRouter(rack int, kind ToRKind, s layout) Router {
	name := RouterName(rack)
	return Router{
		Name: name, Netns: RouterNetns(name), Rack: rack, Kind: kind,
		ASN: RouterASN(rack), CoreIP: RouterCoreIP(rack), RackIP: RouterRackIP(rack),
		Subnet: RackSubnet(rack), Dir: s.path("routers", name),
	}
}

// otherRouter is the router of the other rack.
func otherRouter(routers []Router, r Router) Router {
	for _, o := range routers {
		if o.Name != r.Name {
			return o
		}
	}
	return Router{}
}

// torConfig is what a router's configuration is made from.
type torConfig struct {
	Router Router
	// Peer is the other rack's router, reached over the core segment.
	Peer Router
	// RackASN is the ASN of this router's rack's nodes.
	RackASN uint32
	// ClusterCIDR holds every pod CIDR; a node announces one of
	// PodCIDRMaskSize bits.
	ClusterCIDR netip.Prefix
	// Password is the TCP MD5 key (RFC 2385) of the sessions with the
	// nodes; empty for none.
	Password string
}

// maxPrefixesPerNode bounds what one node may announce (RFC 7454 section
// 8): its pod CIDR, and room for Service addresses.
const maxPrefixesPerNode = 1000

// frrBgpdConfig renders an FRR bgpd configuration for the router: eBGP
// with every node of its rack (a dynamic-neighbour listen range, so nodes
// added later peer too) and with the other router; prefix filters in both
// directions as RFC 7454 section 6 asks (a node may announce only pod
// CIDRs out of the cluster CIDR; the router sends nodes only those); MD5;
// graceful restart (RFC 4724), so a restarting meridiand keeps its routes
// on the router.
func frrBgpdConfig(c torConfig) string {
	r, p := c.Router, c.Peer
	pods := fmt.Sprintf("%s ge %d le %d", c.ClusterCIDR.Masked(), PodCIDRMaskSize, PodCIDRMaskSize)
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("frr defaults datacenter")
	w("hostname %s", r.Name)
	w("log stdout informational")
	w("!")
	w("! Only pod CIDRs out of the cluster CIDR, each of the size nodes get.")
	w("ip prefix-list POD-CIDRS seq 10 permit %s", pods)
	w("ip prefix-list POD-CIDRS seq 100 deny any")
	w("!")
	w("route-map NODES-IN permit 10")
	w(" match ip address prefix-list POD-CIDRS")
	w("route-map NODES-IN deny 100")
	w("route-map NODES-OUT permit 10")
	w(" match ip address prefix-list POD-CIDRS")
	w("route-map NODES-OUT deny 100")
	w("route-map CORE-IN permit 10")
	w(" match ip address prefix-list POD-CIDRS")
	w("route-map CORE-IN deny 100")
	w("route-map CORE-OUT permit 10")
	w(" match ip address prefix-list POD-CIDRS")
	w("route-map CORE-OUT deny 100")
	w("!")
	w("router bgp %d", r.ASN)
	w(" bgp router-id %s", r.CoreIP)
	w(" bgp log-neighbor-changes")
	w(" bgp graceful-restart")
	w(" bgp graceful-restart restart-time 120")
	w(" bgp bestpath as-path multipath-relax")
	w(" neighbor NODES peer-group")
	w(" neighbor NODES remote-as %d", c.RackASN)
	w(" neighbor NODES timers %d %d", torPeerKeepalive, torPeerHold)
	if c.Password != "" {
		w(" neighbor NODES password %s", c.Password)
	}
	w(" bgp listen range %s peer-group NODES", r.Subnet.Masked())
	if p.Name != "" {
		w(" neighbor %s remote-as %d", p.CoreIP, p.ASN)
		w(" neighbor %s description %s", p.CoreIP, p.Name)
		w(" neighbor %s timers %d %d", p.CoreIP, torPeerKeepalive, torPeerHold)
	}
	w(" !")
	w(" address-family ipv4 unicast")
	w("  neighbor NODES route-map NODES-IN in")
	w("  neighbor NODES route-map NODES-OUT out")
	// Every node of the rack has the rack's ASN: without as-override a
	// node would drop its rack-mates' pod CIDRs as AS-path loops.
	w("  neighbor NODES as-override")
	w("  neighbor NODES maximum-prefix %d", maxPrefixesPerNode)
	if p.Name != "" {
		w("  neighbor %s route-map CORE-IN in", p.CoreIP)
		w("  neighbor %s route-map CORE-OUT out", p.CoreIP)
	}
	w(" exit-address-family")
	w("exit")
	w("!")
	return b.String()
}

// frrZebraConfig is zebra's configuration: nothing but its name and log.
func frrZebraConfig(c torConfig) string {
	return fmt.Sprintf("hostname %s\nlog stdout informational\n!\n", c.Router.Name)
}

// birdConfig renders the same router for BIRD 2: the kernel protocol
// installs the best BGP routes, so the router forwards pod traffic; the
// nodes' session is a dynamic one per node out of the rack subnet.
func birdConfig(c torConfig) string {
	r, p := c.Router, c.Peer
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("log stderr all;")
	w("router id %s;", r.CoreIP)
	w("")
	w("# Only pod CIDRs out of the cluster CIDR, each of the size nodes get.")
	w("define POD_CIDRS = [ %s{%d,%d} ];", c.ClusterCIDR.Masked(), PodCIDRMaskSize, PodCIDRMaskSize)
	w("")
	w("protocol device {}")
	w("")
	w("protocol kernel {")
	w(" ipv4 { import none; export where source = RTS_BGP; };")
	w(" merge paths on;")
	w(" graceful restart on;")
	w("}")
	w("")
	w("filter pods_in { if net ~ POD_CIDRS then accept; reject; }")
	// BIRD has no as-override: the rack's ASN is taken out of the path
	// instead, or a node would drop its rack-mates' pod CIDRs as loops.
	w("filter nodes_out { if net ~ POD_CIDRS then { bgp_path.delete(%d); accept; } reject; }", c.RackASN)
	w("")
	w("protocol bgp nodes {")
	w(" local %s as %d;", r.RackIP, r.ASN)
	w(" neighbor range %s as %d;", r.Subnet.Masked(), c.RackASN)
	w(" dynamic name \"node\";")
	w(" hold time %d;", torPeerHold)
	w(" keepalive time %d;", torPeerKeepalive)
	w(" graceful restart on;")
	if c.Password != "" {
		w(" password %q;", c.Password)
	}
	w(" ipv4 { import filter pods_in; import limit %d action restart; export filter nodes_out; };", maxPrefixesPerNode)
	w("}")
	if p.Name != "" {
		w("")
		w("protocol bgp %s {", p.Name)
		w(" local %s as %d;", r.CoreIP, r.ASN)
		w(" neighbor %s as %d;", p.CoreIP, p.ASN)
		w(" hold time %d;", torPeerHold)
		w(" keepalive time %d;", torPeerKeepalive)
		w(" graceful restart on;")
		w(" ipv4 { import filter pods_in; export filter pods_in; };")
		w("}")
	}
	return b.String()
}

// frrUser is the account FRR's daemons switch to; their directory must
// be theirs.
func frrUser() (uid, gid int, err error) {
	u, err := user.Lookup("frr")
	if err != nil {
		return 0, 0, fmt.Errorf("look up user frr (is the frr package installed?): %w", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, nil
}

// startRouterDaemons writes the router's configuration and starts its
// daemons, recorded like the lab's others (logs/tor1-bgpd.log ...), and
// waits until their control sockets answer.
func (l *Lab) startRouterDaemons(ctx context.Context, r Router, c torConfig) error {
	if err := os.MkdirAll(r.Dir, 0o750); err != nil {
		return fmt.Errorf("router %s: %w", r.Name, err)
	}
	switch r.Kind {
	case ToRFRR:
		return l.startFRR(ctx, r, c)
	case ToRBIRD:
		return l.startBIRD(ctx, r, c)
	}
	return nil
}

func (l *Lab) startFRR(ctx context.Context, r Router, c torConfig) error {
	uid, gid, err := frrUser()
	if err != nil {
		return err
	}
	// FRR's daemons drop to user frr, which must reach its directory
	// through the state directory: traverse only (keys stay 0600).
	if err := allowTraverse(l.layout.dir); err != nil {
		return err
	}
	files := map[string]string{"zebra.conf": frrZebraConfig(c), "bgpd.conf": frrBgpdConfig(c)}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(r.Dir, name), []byte(body), 0o640); err != nil {
			return fmt.Errorf("router %s: %w", r.Name, err)
		}
		if err := os.Chown(filepath.Join(r.Dir, name), uid, gid); err != nil {
			return fmt.Errorf("router %s: %w", r.Name, err)
		}
	}
	for _, d := range []string{r.Dir, filepath.Dir(r.Dir)} {
		if err := os.Chown(d, uid, gid); err != nil {
			return fmt.Errorf("router %s: %w", r.Name, err)
		}
	}
	zserv := filepath.Join(r.Dir, "zserv.api")
	common := func(daemon string) []string {
		return []string{
			"-f", filepath.Join(r.Dir, daemon+".conf"),
			"-i", filepath.Join(r.Dir, daemon+".pid"),
			"-z", zserv,
			"--vty_socket", r.Dir,
			"-P", "0", // no TCP vty: vtysh uses the unix sockets
			"--log", "stdout",
		}
	}
	if _, err := l.launch.start(procSpec{Name: routerProc(r.Name, "zebra"), Netns: r.Netns, Argv: append([]string{FRRZebra}, common("zebra")...)}); err != nil {
		return err
	}
	// bgpd gives up on zebra quietly when it starts first; wait for the
	// zserv socket.
	if err := waitUntil(ctx, 15*time.Second, r.Name+" zebra", func() error {
		_, err := os.Stat(zserv)
		return err
	}); err != nil {
		return errors.Join(err, l.procError(routerProc(r.Name, "zebra")))
	}
	if _, err := l.launch.start(procSpec{Name: routerProc(r.Name, "bgpd"), Netns: r.Netns, Argv: append([]string{FRRBgpd}, common("bgpd")...)}); err != nil {
		return err
	}
	return waitUntil(ctx, 15*time.Second, r.Name+" bgpd", func() error {
		out, err := l.ExecRouter(ctx, r.Name, "vtysh", "-c", "show bgp summary json")
		if err != nil {
			return errors.Join(err, l.procError(routerProc(r.Name, "bgpd")))
		}
		if !strings.Contains(string(out), "ipv4Unicast") && !strings.Contains(string(out), "{") {
			return fmt.Errorf("bgpd not answering: %s", out)
		}
		return nil
	})
}

func (l *Lab) startBIRD(ctx context.Context, r Router, c torConfig) error {
	conf := filepath.Join(r.Dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(birdConfig(c)), 0o640); err != nil {
		return fmt.Errorf("router %s: %w", r.Name, err)
	}
	argv := []string{BIRDBin, "-f", "-c", conf, "-s", r.BGPSocket(), "-P", filepath.Join(r.Dir, "bird.pid")}
	if _, err := l.launch.start(procSpec{Name: routerProc(r.Name, "bird"), Netns: r.Netns, Argv: argv}); err != nil {
		return err
	}
	return waitUntil(ctx, 15*time.Second, r.Name+" bird", func() error {
		_, err := l.ExecRouter(ctx, r.Name, "birdc", "show", "status")
		return errors.Join(err, l.procError(routerProc(r.Name, "bird")))
	})
}

// procError is the log tail of a recorded process that exited, nil while
// it runs.
func (l *Lab) procError(name string) error {
	info, err := l.launch.read(name)
	if err != nil || info.Alive {
		return nil
	}
	return fmt.Errorf("%s exited; last lines of %s:\n%s", name, info.Log, tailFile(info.Log, 2048))
}

// allowTraverse adds search permission for others to dir, nothing else.
func allowTraverse(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if st.Mode().Perm()&0o001 != 0 {
		return nil
	}
	if err := os.Chmod(dir, st.Mode().Perm()|0o011); err != nil {
		return fmt.Errorf("let the frr user into %s: %w", dir, err)
	}
	return nil
}

// waitUntil polls cond until it returns nil, ctx ends or d passes.
func waitUntil(ctx context.Context, d time.Duration, what string, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w", what, d, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, errors.Join(err, ctx.Err()))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Topology is the lab's network shape.
func (l *Lab) Topology() Topology {
	if l.st.Topology == "" {
		return TopologyFlat
	}
	return l.st.Topology
}

// ToR is what runs on the routers of a racks lab ("" when flat).
func (l *Lab) ToR() ToRKind { return l.st.ToR }

// Routers are the racks lab's routers, tor1 first; none when flat.
func (l *Lab) Routers() []Router {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Router(nil), l.st.Routers...)
}

// Router returns the named router (tor1, tor2).
func (l *Lab) Router(name string) (Router, error) {
	for _, r := range l.Routers() {
		if r.Name == name {
			return r, nil
		}
	}
	return Router{}, fmt.Errorf("no router %q in the lab", name)
}

// ExecRouter runs argv in the router's namespace and returns its combined
// output; vtysh and birdc reach the router's daemons (see RouterArgv).
func (l *Lab) ExecRouter(ctx context.Context, name string, argv ...string) ([]byte, error) {
	r, err := l.Router(name)
	if err != nil {
		return nil, err
	}
	return execIn(ctx, r.Netns, RouterArgv(r, argv))
}

// RouterExecArgv is the full command line that runs argv in the named
// router's namespace, as ExecRouter does: for `meridian-lab exec tor1 --`.
func (l *Lab) RouterExecArgv(name string, argv ...string) ([]string, error) {
	r, err := l.Router(name)
	if err != nil {
		return nil, err
	}
	return IPNetnsExecArgv(r.Netns, RouterArgv(r, argv)...), nil
}

// StopRouter ends the named router's daemons (SIGTERM); the namespace and
// its forwarding stay.
func (l *Lab) StopRouter(ctx context.Context, name string) error {
	if _, err := l.Router(name); err != nil {
		return err
	}
	return l.launch.stop(ctx, daemonStopGrace, routerProc(name, "bgpd"), routerProc(name, "zebra"), routerProc(name, "bird"))
}
