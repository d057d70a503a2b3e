package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	"github.com/meridian-net/meridian/daemon/cluster"
	"github.com/meridian-net/meridian/daemon/routes"
)

// The racks topology (docs/lab.md):
//
//	host mlab0 198.18.0.1 ─┐
//	cp eth0    198.18.0.2 ─┼─ br0 (core, 198.18.0.0/24)
//	tor1 core0 .251 ───────┤
//	tor2 core0 .252 ───────┘
//	tor1 rack0 198.18.1.1 ── rack1 ── node-1 .11, node-3 .13, ...
//	tor2 rack0 198.18.2.1 ── rack2 ── node-2 .12, node-4 .14, ...
//
// Every node routes by default through its rack's router; the routers
// route the node subnets statically (through each other over the core)
// and, with FRR or BIRD, the pod CIDRs they learn from the nodes. The
// control plane and the host reach the racks through the routers, so the
// API server stays reachable from every node without any pod CIDR.

// createRackBridges adds one bridge per rack to the fabric.
func createRackBridges() error {
	h, err := netlinkHandle(FabricNetns)
	if err != nil {
		return err
	}
	defer h.Close()
	for rack := 1; rack <= Racks; rack++ {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: RackName(rack), Flags: net.FlagUp}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s: %w", br.Name, err)
		}
	}
	return nil
}

// createRouterNetns makes a router's namespace: core0 on br0, rack0 on its
// rack's bridge, forwarding on, and a static route to the other rack's
// subnet through the other router.
func createRouterNetns(r Router, other Router) error {
	if err := createNetns(r.Netns); err != nil {
		return err
	}
	ns, err := openNetns(r.Netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle for %s: %w", r.Netns, err)
	}
	defer h.Close()
	if err := setLoopbackUp(h); err != nil {
		return fmt.Errorf("%s: %w", r.Netns, err)
	}
	if err := attachToSegment(BridgeName, r.Name+"-core", ns, h, RouterCoreLink, netip.PrefixFrom(r.CoreIP, LabSubnet.Bits())); err != nil {
		return err
	}
	if err := attachToSegment(RackName(r.Rack), r.Name+"-rack", ns, h, RouterRackLink, netip.PrefixFrom(r.RackIP, r.Subnet.Bits())); err != nil {
		return err
	}
	if err := routes.EnableIPv4Forwarding(netnsPath(r.Netns)); err != nil {
		return fmt.Errorf("router %s: %w", r.Name, err)
	}
	if other.Name != "" {
		if err := addRoute(h, RouterCoreLink, other.Subnet, other.CoreIP); err != nil {
			return fmt.Errorf("router %s: %w", r.Name, err)
		}
	}
	return nil
}

// addRoute adds dst via gw out of the named link.
func addRoute(h *netlink.Handle, link string, dst netip.Prefix, gw netip.Addr) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("find %s: %w", link, err)
	}
	rt := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixToIPNet(dst), Gw: net.IP(gw.AsSlice())}
	if err := h.RouteAdd(rt); err != nil {
		return fmt.Errorf("route %s via %s: %w", dst, gw, err)
	}
	return nil
}

// routeRacksFrom gives a namespace on the core segment (the control
// plane, the host) a route to every rack subnet through its router. On the
// host the routes hang off mlab0 and go with it.
func routeRacksFrom(h *netlink.Handle, link string, routers []Router) error {
	for _, r := range routers {
		if err := addRoute(h, link, r.Subnet, r.CoreIP); err != nil {
			return err
		}
	}
	return nil
}

func routeCPToRacks(routers []Router) error {
	h, err := netlinkHandle(CPNetns)
	if err != nil {
		return err
	}
	defer h.Close()
	return routeRacksFrom(h, NodeLink, routers)
}

func routeHostToRacks(routers []Router) error {
	_, h, closeHost, err := hostHandle()
	if err != nil {
		return err
	}
	defer closeHost()
	return routeRacksFrom(h, HostLink, routers)
}

// createRackNodeNetns makes a node's namespace on its rack's segment, with
// its rack's router as default gateway.
func createRackNodeNetns(n Node) error {
	if err := createNetns(n.Netns); err != nil {
		return err
	}
	ns, err := openNetns(n.Netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle for %s: %w", n.Netns, err)
	}
	defer h.Close()
	if err := setLoopbackUp(h); err != nil {
		return fmt.Errorf("%s: %w", n.Netns, err)
	}
	subnet := RackSubnet(n.Rack)
	if err := attachToSegment(RackName(n.Rack), n.Name, ns, h, NodeLink, netip.PrefixFrom(n.IP, subnet.Bits())); err != nil {
		return err
	}
	if err := addRoute(h, NodeLink, netip.MustParsePrefix("0.0.0.0/0"), RouterRackIP(n.Rack)); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	return nil
}

// createRacksNetwork builds what the racks topology adds to the fabric:
// the rack bridges, the routers and the routes to the racks from the
// control plane and the host.
func createRacksNetwork(routers []Router) error {
	if err := createRackBridges(); err != nil {
		return err
	}
	for _, r := range routers {
		if err := createRouterNetns(r, otherRouter(routers, r)); err != nil {
			return err
		}
	}
	if err := routeCPToRacks(routers); err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	if err := routeHostToRacks(routers); err != nil {
		return fmt.Errorf("host: %w", err)
	}
	return nil
}

// registerRackNode creates the Node object before the node agent does,
// with its rack label and (with BGP routers) its rack's ASN, so meridiand
// peers with the right router under the right ASN from its first start.
// The agent keeps labels and annotations of a Node that exists.
func (l *Lab) registerRackNode(ctx context.Context, n Node) error {
	cs, err := l.Client()
	if err != nil {
		return err
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   n.Name,
		Labels: map[string]string{RackLabel: RackName(n.Rack)},
	}}
	if l.st.ToR == ToRFRR || l.st.ToR == ToRBIRD {
		node.Annotations = map[string]string{cluster.ASNAnnotation: strconv.FormatUint(uint64(RackASN(n.Rack)), 10)}
	}
	ctx, cancel := context.WithTimeout(ctx, rbacTimeout)
	defer cancel()
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s in %s: %w", n.Name, RackName(n.Rack), err)
	}
	return nil
}

var (
	bgpPeersGVR   = v1alpha1.SchemeGroupVersion.WithResource("bgppeers")
	bgpConfigsGVR = v1alpha1.SchemeGroupVersion.WithResource("bgpconfigurations")
)

// RouterPeerName is the BGPPeer the lab creates for a router: the router's
// name.
func RouterPeerName(r Router) string { return r.Name }

// racksBGPObjects are the objects that make the nodes peer with their
// rack's router: the mesh off (nodes reach each other through the
// routers), one BGPPeer per router selecting its rack's nodes, and the MD5
// Secret when there is a password.
func racksBGPObjects(routers []Router, password string) (*v1alpha1.BGPConfiguration, []*v1alpha1.BGPPeer, *corev1.Secret) {
	mesh := false
	cfg := &v1alpha1.BGPConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.BGPConfigurationName},
		Spec:       v1alpha1.BGPConfigurationSpec{NodeToNodeMesh: &mesh},
	}
	var peers []*v1alpha1.BGPPeer
	for _, r := range routers {
		p := &v1alpha1.BGPPeer{
			TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPPeer"},
			ObjectMeta: metav1.ObjectMeta{Name: RouterPeerName(r)},
			Spec: v1alpha1.BGPPeerSpec{
				PeerIP:        v1alpha1.IPv4(r.RackIP.String()),
				ASNumber:      int64(r.ASN),
				NodeSelector:  &metav1.LabelSelector{MatchLabels: map[string]string{RackLabel: RackName(r.Rack)}},
				HoldTime:      &metav1.Duration{Duration: torPeerHold * time.Second},
				KeepaliveTime: &metav1.Duration{Duration: torPeerKeepalive * time.Second},
			},
		}
		if password != "" {
			p.Spec.Password = &v1alpha1.SecretKeySelector{Namespace: metav1.NamespaceSystem, Name: ToRPasswordSecret, Key: "password"}
		}
		peers = append(peers, p)
	}
	var sec *corev1.Secret
	if password != "" {
		sec = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: metav1.NamespaceSystem, Name: ToRPasswordSecret},
			StringData: map[string]string{"password": password},
		}
	}
	return cfg, peers, sec
}

// applyRacksBGP creates the racks' BGP objects (see racksBGPObjects).
func (l *Lab) applyRacksBGP(ctx context.Context) error {
	cfg, peers, sec := racksBGPObjects(l.st.Routers, l.st.ToRPassword)
	cs, err := l.Client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, rbacTimeout)
	defer cancel()
	if sec != nil {
		if _, err := cs.CoreV1().Secrets(sec.Namespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create Secret %s: %w", sec.Name, err)
		}
	}
	rc, err := clientcmd.BuildConfigFromFlags("", l.Kubeconfig())
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return err
	}
	objs := []runtime.Object{cfg}
	for _, p := range peers {
		objs = append(objs, p)
	}
	for _, o := range objs {
		gvr := bgpPeersGVR
		if _, ok := o.(*v1alpha1.BGPConfiguration); ok {
			gvr = bgpConfigsGVR
		}
		if err := createUnstructured(ctx, dyn, gvr, o); err != nil {
			return err
		}
	}
	return nil
}

func createUnstructured(ctx context.Context, dyn dynamic.Interface, gvr schema.GroupVersionResource, o runtime.Object) error {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		return fmt.Errorf("encode %T: %w", o, err)
	}
	u := &unstructured.Unstructured{Object: m}
	// The CRDs are Established, but a fresh API server may not serve them
	// for another moment.
	return waitUntil(ctx, rbacTimeout, "create "+u.GetKind()+" "+u.GetName(), func() error {
		_, err := dyn.Resource(gvr).Create(ctx, u, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	})
}

// startRacksNetwork builds the racks' segments and router namespaces with
// their static routes, before the control plane starts: the API server is
// reachable from every rack by the time a node exists.
func (l *Lab) startRacksNetwork() error {
	return createRacksNetwork(l.st.Routers)
}

// startRouters starts the routers' daemons and creates the BGP objects
// that make the nodes peer with them; nothing for ToRNone.
func (l *Lab) startRouters(ctx context.Context) error {
	if l.st.ToR != ToRFRR && l.st.ToR != ToRBIRD {
		return nil
	}
	var errs []error
	for _, r := range l.st.Routers {
		c := torConfig{Router: r, Peer: otherRouter(l.st.Routers, r), RackASN: RackASN(r.Rack), ClusterCIDR: ClusterCIDR, Password: l.st.ToRPassword}
		if err := l.startRouterDaemons(ctx, r, c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return l.applyRacksBGP(ctx)
}
