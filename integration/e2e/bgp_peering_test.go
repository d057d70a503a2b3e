package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meridian-net/meridian/api/crd/manifests"
	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	"github.com/meridian-net/meridian/daemon/routes"
	"github.com/meridian-net/meridian/integration/lab"
	"github.com/meridian-net/meridian/integration/namedns"
)

var (
	bgpPeersGVR   = v1alpha1.SchemeGroupVersion.WithResource("bgppeers")
	bgpConfigsGVR = v1alpha1.SchemeGroupVersion.WithResource("bgpconfigurations")
)

const (
	frrBgpd     = "/usr/lib/frr/bgpd"
	birdBin     = "/usr/sbin/bird"
	torASN      = 65100
	birdASN     = 65300
	e2eRBACName = "meridian-e2e-bgp-secrets"
)

// bgpAPI makes sure the BGP CRDs are served (the lab installs them; what
// this test adds it removes again). meridiand reads them under the chart's
// RBAC.
func bgpAPI(t *testing.T, l *lab.Lab) dynamic.Interface {
	t.Helper()
	ctx := context.Background()
	cfg, err := clientcmd.BuildConfigFromFlags("", l.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	ext, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	crds, err := manifests.CRDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, crd := range crds {
		name := crd.Name
		// The lab installs the CRDs at up; remove only what this test added.
		_, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{})
		switch {
		case err == nil:
			t.Cleanup(func() {
				_ = ext.ApiextensionsV1().CustomResourceDefinitions().Delete(ctx, name, metav1.DeleteOptions{})
			})
		case !apierrors.IsAlreadyExists(err):
			t.Fatalf("create CRD %s: %v", name, err)
		}
	}
	// Established is set before every handler serves the type: retry the
	// first list until it answers.
	eventually(t, time.Minute, "BGP CRDs served", func() error {
		for _, gvr := range []struct {
			r dynamic.NamespaceableResourceInterface
		}{{dyn.Resource(bgpPeersGVR)}, {dyn.Resource(bgpConfigsGVR)}} {
			if _, err := gvr.r.List(ctx, metav1.ListOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	return dyn
}

func createObject(t *testing.T, dyn dynamic.Interface, obj runtime.Object) {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	gvr := bgpPeersGVR
	if u.GetKind() == "BGPConfiguration" {
		gvr = bgpConfigsGVR
	}
	ctx := context.Background()
	t.Cleanup(func() { _ = dyn.Resource(gvr).Delete(ctx, u.GetName(), metav1.DeleteOptions{}) })
	eventually(t, 30*time.Second, "create "+u.GetKind()+" "+u.GetName(), func() error {
		_, err := dyn.Resource(gvr).Create(ctx, u, metav1.CreateOptions{})
		return err
	})
}

func bgpPeer(name string, ip netip.Addr, asn int64) *v1alpha1.BGPPeer {
	return &v1alpha1.BGPPeer{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPPeer"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.BGPPeerSpec{PeerIP: v1alpha1.IPv4(ip.String()), ASNumber: asn,
			HoldTime: &metav1.Duration{Duration: 9 * time.Second}},
	}
}

// router is a BGP daemon (FRR's bgpd or BIRD) in its own network namespace
// on the lab's fabric, standing in for a top-of-rack switch.
type router struct {
	name  string
	netns string
	ip    netip.Addr
	dir   string
}

// newRouterNetns makes namespace mlab-<name> (Down removes leftovers by the
// prefix) with eth0 on the fabric bridge at ip.
func newRouterNetns(t *testing.T, name string, ip netip.Addr) *router {
	t.Helper()
	r := &router{name: name, netns: lab.NetnsPrefix + name, ip: ip, dir: t.TempDir()}
	_ = namedns.Delete(r.netns) // a leftover of an interrupted run
	if err := namedns.Create(r.netns); err != nil {
		t.Fatalf("create netns %s: %v", r.netns, err)
	}
	t.Cleanup(func() {
		if err := namedns.Delete(r.netns); err != nil {
			t.Errorf("delete netns %s: %v", r.netns, err)
		}
	})
	fabNS, err := netns.GetFromName(lab.FabricNetns)
	if err != nil {
		t.Fatal(err)
	}
	defer fabNS.Close()
	fab, err := netlink.NewHandleAt(fabNS)
	if err != nil {
		t.Fatal(err)
	}
	defer fab.Close()
	rNS, err := netns.GetFromName(r.netns)
	if err != nil {
		t.Fatal(err)
	}
	defer rNS.Close()
	rh, err := netlink.NewHandleAt(rNS)
	if err != nil {
		t.Fatal(err)
	}
	defer rh.Close()
	br, err := fab.LinkByName(lab.BridgeName)
	if err != nil {
		t.Fatal(err)
	}
	port := "e2e-" + name
	_ = fab.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}})
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port, MasterIndex: br.Attrs().Index, Flags: net.FlagUp},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(rNS),
	}
	if err := fab.LinkAdd(veth); err != nil {
		t.Fatalf("veth %s: %v", port, err)
	}
	t.Cleanup(func() { _ = fab2Del(port) })
	for _, ln := range []string{"lo", "eth0"} {
		link, err := rh.LinkByName(ln)
		if err != nil {
			t.Fatal(err)
		}
		if ln == "eth0" {
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(lab.LabSubnet.Bits(), 32)}}
			if err := rh.AddrAdd(link, addr); err != nil {
				t.Fatal(err)
			}
		}
		if err := rh.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// fab2Del removes a fabric port; deleting the router's namespace usually
// took the pair with it already.
func fab2Del(port string) error {
	fabNS, err := netns.GetFromName(lab.FabricNetns)
	if err != nil {
		return err
	}
	defer fabNS.Close()
	fab, err := netlink.NewHandleAt(fabNS)
	if err != nil {
		return err
	}
	defer fab.Close()
	link, err := fab.LinkByName(port)
	if err != nil {
		return nil
	}
	return fab.LinkDel(link)
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) { b.mu.Lock(); defer b.mu.Unlock(); return b.b.Write(p) }
func (b *syncBuf) String() string              { b.mu.Lock(); defer b.mu.Unlock(); return b.b.String() }

// start runs argv inside the router's namespace until the test ends.
func (r *router) start(t *testing.T, argv ...string) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", r.netns}, argv...)...)
	logs := &syncBuf{}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", argv[0], err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", r.name, logs.String())
		}
	})
}

// startFRR runs bgpd alone (no zebra, no kernel routes: the router only
// has to speak BGP) peering eBGP with every node and originating networks.
func (r *router) startFRR(t *testing.T, asn int, nodes []lab.Node, networks []netip.Prefix) {
	t.Helper()
	r.startFRRWithPassword(t, asn, nodes, networks, "")
}

// startFRRWithPassword is startFRR with a TCP MD5 key on every session.
func (r *router) startFRRWithPassword(t *testing.T, asn int, nodes []lab.Node, networks []netip.Prefix, password string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "frr defaults datacenter\nhostname %s\nlog stdout informational\nrouter bgp %d\n bgp router-id %s\n no bgp ebgp-requires-policy\n no bgp network import-check\n bgp graceful-restart\n", r.name, asn, r.ip)
	for _, n := range nodes {
		fmt.Fprintf(&b, " neighbor %s remote-as %d\n neighbor %s timers 3 9\n", n.IP, 64512, n.IP)
		if password != "" {
			fmt.Fprintf(&b, " neighbor %s password %s\n", n.IP, password)
		}
	}
	b.WriteString(" address-family ipv4 unicast\n")
	for _, p := range networks {
		fmt.Fprintf(&b, "  network %s\n", p)
	}
	b.WriteString(" exit-address-family\n")
	conf := filepath.Join(r.dir, "bgpd.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	r.start(t, frrBgpd, "-f", conf, "-i", filepath.Join(r.dir, "bgpd.pid"), "-z", filepath.Join(r.dir, "zserv.api"),
		"--vty_socket", r.dir, "-P", "0", "-l", r.ip.String(), "-n", "-Z", "-S", "--log", "stdout")
	eventually(t, 15*time.Second, r.name+" vty", func() error { _, err := r.vtysh("show bgp summary json"); return err })
}

func (r *router) vtysh(command string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "vtysh", "--vty_socket", r.dir, "-c", command).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("vtysh -c %q: %w: %s", command, err, out)
	}
	return out, nil
}

// frrPeer is one neighbour as FRR reports it.
type frrPeer struct {
	State string `json:"bgpState"`
	// Established counts how often the session came up; a flap raises it.
	Established int `json:"connectionsEstablished"`
}

func (r *router) frrPeers() (map[string]frrPeer, error) {
	out, err := r.vtysh("show bgp neighbors json")
	if err != nil {
		return nil, err
	}
	var peers map[string]frrPeer
	if err := json.Unmarshal(out, &peers); err != nil {
		return nil, fmt.Errorf("decode %s: %w", out, err)
	}
	return peers, nil
}

// frrRoutes is FRR's IPv4 unicast table: prefix -> next hops of valid paths.
func (r *router) frrRoutes() (map[string][]string, error) {
	out, err := r.vtysh("show bgp ipv4 unicast json")
	if err != nil {
		return nil, err
	}
	var tbl struct {
		Routes map[string][]struct {
			Valid    bool `json:"valid"`
			Nexthops []struct {
				IP string `json:"ip"`
			} `json:"nexthops"`
		} `json:"routes"`
	}
	if err := json.Unmarshal(out, &tbl); err != nil {
		return nil, fmt.Errorf("decode %s: %w", out, err)
	}
	got := map[string][]string{}
	for p, paths := range tbl.Routes {
		for _, path := range paths {
			if !path.Valid {
				continue
			}
			for _, nh := range path.Nexthops {
				got[p] = append(got[p], nh.IP)
			}
		}
	}
	return got, nil
}

// startBIRD runs BIRD 2 peering eBGP with every node and originating
// networks from a static protocol.
func (r *router) startBIRD(t *testing.T, asn int, nodes []lab.Node, networks []netip.Prefix) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "router id %s;\nprotocol device {}\nprotocol static tornets {\n ipv4;\n", r.ip)
	for _, p := range networks {
		fmt.Fprintf(&b, " route %s blackhole;\n", p)
	}
	b.WriteString("}\n")
	for i, n := range nodes {
		fmt.Fprintf(&b, `protocol bgp node%d {
 local %s as %d;
 neighbor %s as %d;
 hold time 9;
 graceful restart on;
 ipv4 { import all; export where proto = "tornets"; };
}
`, i+1, r.ip, asn, n.IP, 64512)
	}
	conf := filepath.Join(r.dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	r.start(t, birdBin, "-d", "-c", conf, "-s", filepath.Join(r.dir, "bird.ctl"), "-P", filepath.Join(r.dir, "bird.pid"))
	eventually(t, 15*time.Second, r.name+" control socket", func() error { _, err := r.birdc("show status"); return err })
}

func (r *router) birdc(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "birdc", append([]string{"-s", filepath.Join(r.dir, "bird.ctl")}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("birdc %v: %w: %s", args, err, out)
	}
	return string(out), nil
}

// meridianRoutes lists a node's proto-201 routes as prefix -> sorted next
// hops (empty for a blackhole).
func meridianRoutes(t *testing.T, node lab.Node) map[netip.Prefix][]netip.Addr {
	got := map[netip.Prefix][]netip.Addr{}
	for _, r := range nodeRoutes(t, node) {
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if r.Dst != nil {
			dst = netip.MustParsePrefix(r.Dst.String())
		}
		var hops []netip.Addr
		if r.Gw != nil {
			hops = append(hops, netip.MustParseAddr(r.Gw.String()))
		}
		for _, m := range r.MultiPath {
			hops = append(hops, netip.MustParseAddr(m.Gw.String()))
		}
		slices.SortFunc(hops, netip.Addr.Compare)
		got[dst] = hops
	}
	return got
}

func acceptedOf(dyn dynamic.Interface, name string) (*metav1.Condition, error) {
	u, err := dyn.Resource(bgpPeersGVR).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var p v1alpha1.BGPPeer
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p); err != nil {
		return nil, err
	}
	cond := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionAccepted)
	if cond == nil {
		return nil, fmt.Errorf("no Accepted condition: %+v", p.Status)
	}
	return cond, nil
}

func logHas(l *lab.Lab, node string, parts ...string) bool {
	b, err := os.ReadFile(l.LogPath("meridiand-" + node))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return true
		}
	}
	return false
}

// ToRs as real routers: FRR and BIRD peer eBGP with every node through
// BGPPeer objects, learn every node's pod CIDR, and what they announce goes
// through the import policy: the allowed prefix is installed (as one
// multipath route when two ToRs announce it), a default route, a piece of a
// node's pod CIDR and a prefix outside the cluster are refused and logged
// with their reasons.
func TestBGPPeersWithToRs(t *testing.T) {
	l := needLab(t)
	for _, bin := range []string{frrBgpd, birdBin} {
		if _, err := os.Stat(bin); err != nil {
			t.Skipf("%s not installed: %v", bin, err)
		}
	}
	c := client(t, l)
	nodes := l.Nodes()
	waitMesh(t, c, nodes)
	cidrs := cidrsOf(t, c, nodes)
	dyn := bgpAPI(t, l)

	var (
		tor1IP   = netip.MustParseAddr("198.18.0.201")
		tor2IP   = netip.MustParseAddr("198.18.0.202")
		birdIP   = netip.MustParseAddr("198.18.0.203")
		allowed  = netip.MustParsePrefix("10.244.250.0/24")
		ecmp     = netip.MustParsePrefix("10.244.251.0/24")
		fromBIRD = netip.MustParsePrefix("10.244.252.0/24")
		outside  = netip.MustParsePrefix("192.0.2.0/24")
		dflt     = netip.MustParsePrefix("0.0.0.0/0")
	)
	n2CIDR := cidrs[nodes[1].Name]
	// A /26 out of node-2's pod CIDR: every node must refuse it (node-2 as
	// its own, the others as a more specific of a node's pod CIDR).
	carved := netip.PrefixFrom(n2CIDR.Addr(), n2CIDR.Bits()+2)

	tor1 := newRouterNetns(t, "tor1", tor1IP)
	tor2 := newRouterNetns(t, "tor2", tor2IP)
	bird := newRouterNetns(t, "tor3", birdIP)
	tor1.startFRR(t, torASN, nodes, []netip.Prefix{allowed, ecmp, dflt, carved, outside})
	tor2.startFRR(t, torASN, nodes, []netip.Prefix{ecmp})
	bird.startBIRD(t, birdASN, nodes, []netip.Prefix{fromBIRD, dflt})

	createObject(t, dyn, &v1alpha1.BGPConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec:       v1alpha1.BGPConfigurationSpec{AcceptedPrefixes: []v1alpha1.CIDR{v1alpha1.CIDR(lab.ClusterCIDR.String())}},
	})
	createObject(t, dyn, bgpPeer("tor1", tor1IP, torASN))
	createObject(t, dyn, bgpPeer("tor2", tor2IP, torASN))
	createObject(t, dyn, bgpPeer("tor3-bird", birdIP, birdASN))
	t.Cleanup(func() {
		// With the peers gone every node prunes what the routers taught
		// it, leaving the mesh routes the other tests expect.
		for _, name := range []string{"tor1", "tor2", "tor3-bird"} {
			_ = dyn.Resource(bgpPeersGVR).Delete(context.Background(), name, metav1.DeleteOptions{})
		}
		for _, n := range nodes {
			eventually(t, 90*time.Second, "ToR routes gone from "+n.Name, func() error { return checkMeshRoutes(t, n, cidrs, nodes) })
		}
	})

	t.Run("md5", func(t *testing.T) {
		// FRR with a key, and one with a different key than the Secret's:
		// the first session comes up, the second stays down.
		md5IP, wrongIP := netip.MustParseAddr("198.18.0.204"), netip.MustParseAddr("198.18.0.205")
		good := newRouterNetns(t, "tor4", md5IP)
		good.startFRRWithPassword(t, torASN, nodes, nil, "s3cret-key")
		wrong := newRouterNetns(t, "tor5", wrongIP)
		wrong.startFRRWithPassword(t, torASN, nodes, nil, "other-key")
		ctx := context.Background()
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "e2e-bgp-md5"}, StringData: map[string]string{"password": "s3cret-key"}}
		if _, err := c.CoreV1().Secrets("kube-system").Create(ctx, sec, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.CoreV1().Secrets("kube-system").Delete(ctx, sec.Name, metav1.DeleteOptions{}) })
		// The chart lets meridiand read only the Secrets it is told of;
		// for peers made outside the chart an admin grants them, as here
		// (or with rbac.extraSecrets).
		grantSecrets(t, c, "kube-system", sec.Name)
		for _, p := range []struct {
			name string
			ip   netip.Addr
		}{{"tor4-md5", md5IP}, {"tor5-md5-wrong", wrongIP}} {
			peer := bgpPeer(p.name, p.ip, torASN)
			peer.Spec.Password = &v1alpha1.SecretKeySelector{Namespace: "kube-system", Name: sec.Name, Key: "password"}
			createObject(t, dyn, peer)
			name := p.name
			t.Cleanup(func() { _ = dyn.Resource(bgpPeersGVR).Delete(context.Background(), name, metav1.DeleteOptions{}) })
		}
		eventually(t, 90*time.Second, "MD5 sessions established", func() error {
			peers, err := good.frrPeers()
			if err != nil {
				return err
			}
			for _, n := range nodes {
				if peers[n.IP.String()].State != "Established" {
					return fmt.Errorf("%s: %+v", n.Name, peers)
				}
			}
			return nil
		})
		// By now the same nodes had every chance to reach tor5 too.
		peers, err := wrong.frrPeers()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if peers[n.IP.String()].State == "Established" {
				t.Errorf("%s: session with a mismatched MD5 key is up: %+v", n.Name, peers)
			}
		}
	})

	t.Run("bad object keeps sessions", func(t *testing.T) {
		var before map[string]frrPeer
		eventually(t, 90*time.Second, "tor1's sessions up", func() error {
			var err error
			if before, err = tor1.frrPeers(); err != nil {
				return err
			}
			for _, n := range nodes {
				if before[n.IP.String()].State != "Established" {
					return fmt.Errorf("%s: %+v", n.Name, before)
				}
			}
			return nil
		})
		bad := bgpPeer("e2e-bad-secret", netip.MustParseAddr("198.18.0.206"), torASN)
		bad.Spec.Password = &v1alpha1.SecretKeySelector{Namespace: "kube-system", Name: "e2e-does-not-exist", Key: "password"}
		// Granted, so that meridiand learns the Secret is missing (not
		// that it may not look).
		grantSecrets(t, c, "kube-system", "e2e-does-not-exist")
		createObject(t, dyn, bad)
		eventually(t, 60*time.Second, "bad BGPPeer refused in its status", func() error {
			cond, err := acceptedOf(dyn, bad.Name)
			if err != nil {
				return err
			}
			if cond.Status != metav1.ConditionFalse || cond.Reason != "SecretNotFound" {
				return fmt.Errorf("condition %+v", cond)
			}
			return nil
		})
		eventually(t, 30*time.Second, "Warning event for the bad BGPPeer", func() error {
			evs, err := c.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, e := range evs.Items {
				if e.InvolvedObject.Kind == "BGPPeer" && e.InvolvedObject.Name == bad.Name && e.Reason == "SecretNotFound" && e.Type == corev1.EventTypeWarning {
					return nil
				}
			}
			return fmt.Errorf("no event among %d", len(evs.Items))
		})
		after, err := tor1.frrPeers()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			b, a := before[n.IP.String()], after[n.IP.String()]
			if a.State != "Established" || a.Established != b.Established {
				t.Errorf("%s's session with tor1 flapped over an unrelated bad BGPPeer: before %+v, after %+v", n.Name, b, a)
			}
		}
	})

	t.Run("status", func(t *testing.T) {
		for _, name := range []string{"tor1", "tor2", "tor3-bird"} {
			eventually(t, 90*time.Second, "BGPPeer "+name+" Accepted", func() error {
				cond, err := acceptedOf(dyn, name)
				if err != nil {
					return err
				}
				if cond.Status != metav1.ConditionTrue {
					return fmt.Errorf("condition %+v", cond)
				}
				return nil
			})
		}
	})

	// Each pod CIDR comes from its owner only: nodes send external peers
	// just what they originate, never what other nodes told them.
	t.Run("routers learn every pod CIDR from its owner only", func(t *testing.T) {
		frrOwnersOnly := func(r *router) error {
			got, err := r.frrRoutes()
			if err != nil {
				return err
			}
			for _, n := range nodes {
				hops := slices.Clone(got[cidrs[n.Name].String()])
				slices.Sort(hops)
				if hops = slices.Compact(hops); !slices.Equal(hops, []string{n.IP.String()}) {
					return fmt.Errorf("%s: %s via %v, want via %s only; table %v", r.name, cidrs[n.Name], hops, n.IP, got)
				}
			}
			return nil
		}
		birdOwnersOnly := func() error {
			for _, n := range nodes {
				out, err := bird.birdc("show", "route", "for", cidrs[n.Name].String(), "all")
				if err != nil {
					return err
				}
				if !strings.Contains(out, cidrs[n.Name].String()) || !strings.Contains(out, n.IP.String()) {
					return fmt.Errorf("BIRD has no route for %s via %s:\n%s", cidrs[n.Name], n.IP, out)
				}
				for _, other := range nodes {
					// As a word: 10.0.0.1 must not match in 10.0.0.11.
					mention := regexp.MustCompile(`\b` + regexp.QuoteMeta(other.IP.String()) + `\b`)
					if other.Name != n.Name && mention.MatchString(out) {
						return fmt.Errorf("BIRD has %s also via %s:\n%s", cidrs[n.Name], other.IP, out)
					}
				}
			}
			return nil
		}
		for _, r := range []*router{tor1, tor2} {
			eventually(t, 90*time.Second, r.name+" learns the pod CIDRs", func() error { return frrOwnersOnly(r) })
		}
		eventually(t, 90*time.Second, "BIRD learns the pod CIDRs", birdOwnersOnly)
		// A re-exported path would follow within moments of the owner's;
		// make sure none comes.
		time.Sleep(3 * time.Second)
		for _, r := range []*router{tor1, tor2} {
			if err := frrOwnersOnly(r); err != nil {
				t.Error(err)
			}
		}
		if err := birdOwnersOnly(); err != nil {
			t.Error(err)
		}
	})

	t.Run("import policy and multipath", func(t *testing.T) {
		for _, n := range nodes {
			eventually(t, 90*time.Second, n.Name+" installs exactly the allowed routes", func() error {
				got := meridianRoutes(t, n)
				want := map[netip.Prefix][]netip.Addr{
					allowed:  {tor1IP},
					ecmp:     {tor1IP, tor2IP},
					fromBIRD: {birdIP},
				}
				for p, hops := range want {
					if !slices.Equal(got[p], hops) {
						return fmt.Errorf("%s: route %s via %v, want via %v (routes %v)", n.Name, p, got[p], hops, got)
					}
				}
				for _, p := range []netip.Prefix{dflt, carved, outside} {
					if _, ok := got[p]; ok {
						return fmt.Errorf("%s: refused prefix %s installed: %v", n.Name, p, got)
					}
				}
				for _, other := range nodes {
					if other.Name == n.Name {
						continue
					}
					if !slices.Equal(got[cidrs[other.Name]], []netip.Addr{other.IP}) {
						return fmt.Errorf("%s: %s's pod CIDR %s via %v, want via %s", n.Name, other.Name, cidrs[other.Name], got[cidrs[other.Name]], other.IP)
					}
				}
				return nil
			})
		}
		// The kernel route really is one multipath route.
		h := nodeHandle(t, nodes[0])
		defer h.Close()
		rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routes.Protocol, Table: 254,
			Dst: &net.IPNet{IP: ecmp.Addr().AsSlice(), Mask: net.CIDRMask(ecmp.Bits(), 32)}}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
		if err != nil || len(rs) != 1 || len(rs[0].MultiPath) != 2 {
			t.Errorf("%s: route for %s = %v (err %v), want one route with two next hops", nodes[0].Name, ecmp, rs, err)
		}

		// Each refusal is logged with its peer and reason.
		checks := []struct {
			node   string
			prefix netip.Prefix
			peer   netip.Addr
			reason string
		}{
			{nodes[0].Name, dflt, tor1IP, "defaultRoute"},
			{nodes[0].Name, dflt, birdIP, "defaultRoute"},
			{nodes[0].Name, carved, tor1IP, "podCIDRMoreSpecific"},
			{nodes[1].Name, carved, tor1IP, "ownPodCIDR"},
			{nodes[0].Name, outside, tor1IP, "outsideAllowed"},
		}
		for _, ck := range checks {
			eventually(t, 30*time.Second, fmt.Sprintf("%s logs %s from %s as %s", ck.node, ck.prefix, ck.peer, ck.reason), func() error {
				if !logHas(l, ck.node, "path rejected by import policy", `"prefix":"`+ck.prefix.String()+`"`, `"peer":"`+ck.peer.String()+`"`, `"reason":"`+ck.reason+`"`) {
					return errors.New("not in the log")
				}
				return nil
			})
		}
	})
}

// grantSecrets lets meridiand's service account get the named Secrets of
// namespace, the way the chart's secret Roles do, until the test ends. It
// returns once the API server's authorizer allows it. Refusals after the
// grant is taken back (meridiand may resync a peer being deleted) are
// expected by the run's RBAC check.
func grantSecrets(t *testing.T, c kubernetes.Interface, namespace string, names ...string) {
	t.Helper()
	ctx := context.Background()
	name := e2eRBACName + "-" + names[0]
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: names, Verbs: []string{"get"}}},
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: lab.ServiceAccountName, Namespace: lab.ReleaseNamespace}},
	}
	t.Cleanup(func() {
		revoked := time.Now()
		expectedRefusals.Lock()
		expectedRefusals.match = append(expectedRefusals.match, func(r lab.Request) bool {
			return r.Resource == "secrets" && r.Namespace == namespace && slices.Contains(names, r.Name) && !r.Time.Before(revoked)
		})
		expectedRefusals.Unlock()
		_ = c.RbacV1().RoleBindings(namespace).Delete(ctx, name, metav1.DeleteOptions{})
		_ = c.RbacV1().Roles(namespace).Delete(ctx, name, metav1.DeleteOptions{})
	})
	if _, err := c.RbacV1().Roles(namespace).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatalf("grant secrets: %v", err)
	}
	if _, err := c.RbacV1().RoleBindings(namespace).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("grant secrets: %v", err)
	}
	for _, n := range names {
		eventually(t, 30*time.Second, "meridiand may get secret "+n, func() error {
			sar, err := c.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
				Spec: authorizationv1.SubjectAccessReviewSpec{
					User:   lab.MeridianUser,
					Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + lab.ReleaseNamespace, "system:authenticated"},
					ResourceAttributes: &authorizationv1.ResourceAttributes{
						Namespace: namespace, Verb: "get", Resource: "secrets", Name: n,
					},
				},
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			if !sar.Status.Allowed {
				return fmt.Errorf("not allowed yet: %s", sar.Status.Reason)
			}
			return nil
		})
	}
}
