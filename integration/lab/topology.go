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
}

func newNode(i int) Node {
	name := NodeName(i)
	return Node{Name: name, Netns: NodeNetns(name), IP: NodeIP(i), Index: i}
}
