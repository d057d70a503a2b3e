package lab

import (
	"fmt"
	"net/netip"
)

// Topology. The 198.18.0.0/15 benchmarking range (RFC 2544) is never routed
// on real networks, so the lab cannot collide with what the host talks to.
const (
	DefaultStateDir = "/run/meridian-lab"

	// NetnsPrefix starts the name of every network namespace the lab owns;
	// Down deletes every namespace with this prefix.
	NetnsPrefix = "mlab-"
	// PodNetnsPrefix starts the names of pod namespaces made by node agents.
	PodNetnsPrefix = NetnsPrefix + "pod-"
	FabricNetns    = NetnsPrefix + "fabric"
	CPNetns        = NetnsPrefix + "cp"
	// BridgeName is the shared L2 segment inside FabricNetns.
	BridgeName = "br0"
	// HostLink is the lab's only link in the host namespace.
	HostLink = "mlab0"
	// NodeLink is the name of a node's (and the control plane's) link to
	// the fabric, inside its namespace.
	NodeLink = "eth0"

	APIServerPort = 6443
	etcdClientURL = "http://127.0.0.1:2379"
	etcdPeerURL   = "http://127.0.0.1:2380"

	// hostPortName and cpPortName name the bridge ports in FabricNetns;
	// node ports are named after their node.
	hostPortName = "host"
	cpPortName   = "cp"
)

var (
	LabSubnet   = netip.MustParsePrefix("198.18.0.0/24")
	HostIP      = netip.MustParseAddr("198.18.0.1")
	APIServerIP = netip.MustParseAddr("198.18.0.2")
	ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	ServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")
	// KubernetesServiceIP is the first address of ServiceCIDR, which the API
	// server claims for the default/kubernetes Service.
	KubernetesServiceIP = netip.MustParseAddr("10.96.0.1")
)

// maxNodes keeps node addresses (10+i) inside LabSubnet.
const maxNodes = 200

// APIServerURL is the address kubectl on the host uses.
func APIServerURL() string {
	return fmt.Sprintf("https://%s", netip.AddrPortFrom(APIServerIP, APIServerPort))
}

// NodeName is the name of the i-th node (1-based).
func NodeName(i int) string { return fmt.Sprintf("node-%d", i) }

// NodeNetns is the network namespace of the named node.
func NodeNetns(node string) string { return NetnsPrefix + node }

// NodeIP is the address of the i-th node (1-based) on the lab segment.
func NodeIP(i int) netip.Addr {
	b := LabSubnet.Addr().As4()
	b[3] = byte(10 + i)
	return netip.AddrFrom4(b)
}

// Node is one lab node.
type Node struct {
	Name  string     `json:"name"`
	Netns string     `json:"netns"`
	IP    netip.Addr `json:"ip"`
	// Index is the node's number: node-<Index>, address 10+Index.
	Index int `json:"index"`
	// Rack is the node's rack in TopologyRacks (1 or 2), 0 when flat.
	Rack int `json:"rack,omitempty"`
}

func newNode(i int) Node {
	name := NodeName(i)
	return Node{Name: name, Netns: NodeNetns(name), IP: NodeIP(i), Index: i}
}

// Topology is the shape of a lab's network.
type Topology string

const (
	// TopologyFlat puts the control plane, the host and every node on
	// one segment, LabSubnet (the default).
	TopologyFlat Topology = "flat"
	// TopologyRacks puts the nodes on two rack subnets (RackSubnet), each
	// behind its top-of-rack router; the routers, the control plane and
	// the host share the core segment, LabSubnet.
	TopologyRacks Topology = "racks"
)

// ToRKind is what routes on a racks lab's routers.
type ToRKind string

const (
	// ToRNone: the routers forward with static routes for the node
	// subnets only and know no pod CIDRs.
	ToRNone ToRKind = "none"
	// ToRFRR: FRR (zebra and bgpd) per router, eBGP with its rack's nodes
	// and with the other router, installing what it learns in the kernel.
	ToRFRR ToRKind = "frr"
	// ToRBIRD: BIRD 2 per router, the same sessions, installing through
	// its kernel protocol.
	ToRBIRD ToRKind = "bird"
)

// Racks is the number of racks of TopologyRacks.
const Racks = 2

// RackLabel is the Node label naming a node's rack in TopologyRacks
// (rack1, rack2), the well-known zone label, which BGPPeer node selectors
// match to peer each node with its own rack's router.
const RackLabel = "topology.kubernetes.io/zone"

// Router link names inside a router's namespace.
const (
	// RouterCoreLink is the router's link to the core segment.
	RouterCoreLink = "core0"
	// RouterRackLink is the router's link to its rack's segment, where it
	// is the nodes' gateway.
	RouterRackLink = "rack0"
)

// RackName is the rack label value and the name of the rack's bridge in
// FabricNetns.
func RackName(rack int) string { return fmt.Sprintf("rack%d", rack) }

// RouterName is the name of rack's top-of-rack router: tor1, tor2.
func RouterName(rack int) string { return fmt.Sprintf("tor%d", rack) }

// RouterNetns is the network namespace of a router.
func RouterNetns(name string) string { return NetnsPrefix + name }

// RackSubnet is the node subnet of a rack: 198.18.<rack>.0/24.
func RackSubnet(rack int) netip.Prefix {
	b := LabSubnet.Addr().As4()
	b[2] = byte(rack)
	return netip.PrefixFrom(netip.AddrFrom4(b), 24)
}

// RouterRackIP is the router's address in its rack, the nodes' gateway:
// 198.18.<rack>.1.
func RouterRackIP(rack int) netip.Addr { return RackSubnet(rack).Addr().Next() }

// RouterCoreIP is the router's address on the core segment:
// 198.18.0.(250+rack).
func RouterCoreIP(rack int) netip.Addr {
	b := LabSubnet.Addr().As4()
	b[3] = byte(250 + rack)
	return netip.AddrFrom4(b)
}

// RackASN is the ASN of every node in a rack (the meridian.io/asn
// annotation): one private ASN per rack (RFC 6996), eBGP to the router.
func RackASN(rack int) uint32 { return uint32(65000 + rack) }

// RouterASN is the ASN of a rack's router.
func RouterASN(rack int) uint32 { return uint32(65100 + rack) }

// RackOf is the rack of node i (1-based) in TopologyRacks: odd nodes in
// rack 1, even ones in rack 2, so nodes added later spread over both.
func RackOf(i int) int { return (i-1)%Racks + 1 }

// RackNodeIP is the address of node i in TopologyRacks:
// 198.18.<rack>.(10+i).
func RackNodeIP(i int) netip.Addr {
	b := RackSubnet(RackOf(i)).Addr().As4()
	b[3] = byte(10 + i)
	return netip.AddrFrom4(b)
}

func newRackNode(i int) Node {
	n := newNode(i)
	n.Rack = RackOf(i)
	n.IP = RackNodeIP(i)
	return n
}

// ParseTopology accepts "flat" or "racks" ("" is flat).
func ParseTopology(s string) (Topology, error) {
	switch Topology(s) {
	case "", TopologyFlat:
		return TopologyFlat, nil
	case TopologyRacks:
		return TopologyRacks, nil
	}
	return "", fmt.Errorf("unknown topology %q (want flat or racks)", s)
}

// ParseToR accepts "frr", "bird" or "none".
func ParseToR(s string) (ToRKind, error) {
	switch k := ToRKind(s); k {
	case ToRNone, ToRFRR, ToRBIRD:
		return k, nil
	}
	return "", fmt.Errorf("unknown ToR %q (want frr, bird or none)", s)
}
