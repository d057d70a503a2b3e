package services

import (
	"cmp"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Node is what Desired needs to know about the node it runs on.
type Node struct {
	// Name matches EndpointSlice endpoints' nodeName to tell local endpoints.
	Name string
	// Addresses are the node's addresses; NodePorts listen on those that
	// Config.NodePortAddresses lets through.
	Addresses []netip.Addr
	// ClusterCIDRs are the pod address ranges of the whole cluster. They tell
	// pod traffic from the rest (masquerade of ClusterIP traffic from outside,
	// short-circuit of externalTrafficPolicy Local, NAT outgoing).
	ClusterCIDRs []netip.Prefix
}

// Config holds the knobs kube-proxy exposes as flags.
type Config struct {
	// MasqueradeAll masquerades every packet sent to a Service frontend
	// (kube-proxy --masquerade-all).
	MasqueradeAll bool
	// NATOutgoing masquerades pod traffic leaving ClusterCIDRs for
	// destinations outside them (Calico's natOutgoing). DefaultConfig sets it.
	NATOutgoing bool
	// NodePortAddresses restricts NodePorts to node addresses inside these
	// prefixes (kube-proxy --nodeport-addresses); empty means every address.
	NodePortAddresses []netip.Prefix
}

// DefaultConfig is the configuration meridiand starts from.
func DefaultConfig() Config { return Config{NATOutgoing: true} }

// Snapshot is the full input of one Desired computation.
type Snapshot struct {
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Node           Node
	Config         Config
}

// Protocol is an L4 protocol, valued as its IANA number so that it is
// directly the `meta l4proto` a renderer puts in a map key.
type Protocol uint8

const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto%d", uint8(p))
}

// Family is an IP family. A Service port gets one entry per family it has a
// ClusterIP in, because a DNAT never crosses families and nftables needs
// separate maps for ipv4_addr and ipv6_addr data.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// FrontendKind says how a frontend address came about; it decides which
// traffic policy applies (ClusterIP: internal; the rest: external).
type FrontendKind uint8

const (
	ClusterIP FrontendKind = iota + 1
	ExternalIP
	LoadBalancerIP
	NodePort
)

func (k FrontendKind) String() string {
	switch k {
	case ClusterIP:
		return "clusterIP"
	case ExternalIP:
		return "externalIP"
	case LoadBalancerIP:
		return "loadBalancer"
	case NodePort:
		return "nodePort"
	}
	return "unknown"
}

// External reports whether externalTrafficPolicy governs this frontend.
func (k FrontendKind) External() bool { return k != ClusterIP }

// Masquerade says which packets sent to a frontend get SNATed to the node.
type Masquerade uint8

const (
	// MasqueradeNever preserves the client address (externalTrafficPolicy
	// Local seen from outside, ClusterIP when no ClusterCIDRs are known).
	MasqueradeNever Masquerade = iota
	// MasqueradeAlways: external traffic with policy Cluster may be sent to
	// another node, whose reply must come back through this one.
	MasqueradeAlways
	// MasqueradeOffCluster masquerades sources outside ClusterCIDRs (the
	// node itself, or a router sending ClusterIP traffic to it), as
	// kube-proxy does for ClusterIPs when it can detect local traffic.
	MasqueradeOffCluster
	// MasqueradeNodeSource masquerades only traffic the node originates
	// (`fib saddr type local`), which with externalTrafficPolicy Local is
	// short-circuited to the cluster target like pod traffic.
	MasqueradeNodeSource
)

func (m Masquerade) String() string {
	switch m {
	case MasqueradeAlways:
		return "always"
	case MasqueradeOffCluster:
		return "offCluster"
	case MasqueradeNodeSource:
		return "nodeSource"
	}
	return "never"
}

// Verdict is what a target does with a new connection.
type Verdict uint8

const (
	// VerdictDNAT picks one of the target's endpoints.
	VerdictDNAT Verdict = iota
	// VerdictReject answers ICMP port unreachable (TCP reset for TCP): the
	// Service port has no usable endpoint at all, as in kube-proxy.
	VerdictReject
	// VerdictDrop: endpoints exist but none on this node for a Local
	// policy; kube-proxy drops so that a load balancer retries elsewhere.
	VerdictDrop
)

func (v Verdict) String() string {
	switch v {
	case VerdictReject:
		return "reject"
	case VerdictDrop:
		return "drop"
	}
	return "dnat"
}

// Scope is which endpoints a target may choose from.
type Scope uint8

const (
	// ScopeCluster: every usable endpoint in the cluster.
	ScopeCluster Scope = iota
	// ScopeLocal: only endpoints on this node (a Local traffic policy).
	ScopeLocal
)

func (s Scope) String() string {
	if s == ScopeLocal {
		return "local"
	}
	return "cluster"
}

// ServicePortKey names one (Service, port, protocol, family) entry:
// "namespace/name:portname/PROTO/FAMILY". The port name is empty for a
// single unnamed port ("default/web:/TCP/IPv4").
type ServicePortKey string

// TargetKey names one target: the ServicePortKey and the scope,
// "namespace/name:portname/PROTO/FAMILY/cluster". The renderer maps it to a
// chain and a numeric id in the shared endpoint map.
type TargetKey string

// Model is the backend-neutral desired state of Service load balancing on
// one node. Every slice in it is sorted; equal snapshots give equal models.
type Model struct {
	// Services are sorted by namespace/name; only Services with at least one
	// frontend or a health check appear.
	Services []Service
	// NodePortAddresses are the node addresses NodePorts listen on.
	NodePortAddresses []netip.Addr
	// MasqueradeAll is Config.MasqueradeAll, for the renderer's docs.
	MasqueradeAll bool
	// NATOutgoing lists the source ranges (ClusterCIDRs) whose traffic to a
	// destination outside all of them is masqueraded; empty when disabled.
	NATOutgoing []netip.Prefix
	// ClusterCIDRs are the Node's, sorted, for the short-circuit and
	// off-cluster masquerade matches.
	ClusterCIDRs []netip.Prefix
}

// Service is one Kubernetes Service as programmed on this node.
type Service struct {
	Namespace, Name string
	Ports           []ServicePort
	// HealthCheck is set for a LoadBalancer with externalTrafficPolicy Local:
	// the node answers on HealthCheck.NodePort with its local endpoint count
	// so that load balancers send traffic only to nodes with endpoints.
	HealthCheck *HealthCheck
}

// ID is "namespace/name", the unit the applier diffs by.
func (s *Service) ID() string { return s.Namespace + "/" + s.Name }

// Equal reports whether two Services program the same state.
func (s *Service) Equal(o *Service) bool {
	// Every field is a value, a slice of values or a pointer to a value,
	// so deep equality is exactly "same programmed state".
	return reflect.DeepEqual(s, o)
}

// HealthCheck is kube-proxy's healthCheckNodePort responder state.
type HealthCheck struct {
	NodePort uint16
	// LocalEndpoints counts distinct ready endpoint addresses on this node;
	// terminating ones are left out so that a draining node fails the check.
	LocalEndpoints int
}

// ServicePort is one Service port in one IP family.
type ServicePort struct {
	Key      ServicePortKey
	Name     string
	Protocol Protocol
	Family   Family
	Port     uint16
	NodePort uint16
	// Affinity is set for sessionAffinity ClientIP.
	Affinity *Affinity
	// Frontends are sorted by kind, address.
	Frontends []Frontend
	// Targets hold one entry per scope in use, cluster before local.
	Targets []Target
}

// Affinity pins a client address to the endpoint it got first.
type Affinity struct {
	TimeoutSeconds int32
}

// Frontend is one address . protocol . port that leads to a target.
type Frontend struct {
	Kind     FrontendKind
	Addr     netip.Addr
	Protocol Protocol
	Port     uint16
	// Target serves packets from outside the cluster (and, for ClusterIPs,
	// all packets).
	Target TargetKey
	// PodTarget, when set, serves packets from ClusterCIDRs and from the node
	// itself instead of Target: kube-proxy short-circuits them for
	// externalTrafficPolicy Local as if they had gone out to the load
	// balancer and come back (no Local policy applies to them).
	PodTarget  TargetKey
	Masquerade Masquerade
}

// Target is one endpoint set with its verdict.
type Target struct {
	Key   TargetKey
	Scope Scope
	// Endpoints are sorted by address, port; their index is the numgen
	// bucket. Empty unless Verdict is VerdictDNAT.
	Endpoints []Endpoint
	Verdict   Verdict
	// Reason explains a non-DNAT verdict or a terminating fallback; empty
	// otherwise.
	Reason   Reason
	Affinity *Affinity
}

// Endpoint is one backend after merging all slices.
type Endpoint struct {
	Addr        netip.Addr
	Port        uint16
	NodeName    string
	Local       bool
	Ready       bool
	Serving     bool
	Terminating bool
}

func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.Addr, e.Port) }

// FrontendRow is one element of the frontend verdict map
// `daddr . meta l4proto . th dport : goto <target chain>`.
type FrontendRow struct {
	Service    string
	Kind       FrontendKind
	Addr       netip.Addr
	Protocol   Protocol
	Port       uint16
	Target     TargetKey
	PodTarget  TargetKey
	Masquerade Masquerade
}

// FrontendMap flattens every frontend, sorted by family, address,
// protocol, port: the rows of the renderer's frontend maps. Keys are unique.
func (m *Model) FrontendMap() []FrontendRow {
	var rows []FrontendRow
	for i := range m.Services {
		s := &m.Services[i]
		for _, p := range s.Ports {
			for _, f := range p.Frontends {
				rows = append(rows, FrontendRow{
					Service: s.ID(), Kind: f.Kind, Addr: f.Addr, Protocol: f.Protocol, Port: f.Port,
					Target: f.Target, PodTarget: f.PodTarget, Masquerade: f.Masquerade,
				})
			}
		}
	}
	slices.SortFunc(rows, func(a, b FrontendRow) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
	})
	return rows
}

// TargetRow describes one target for the renderer: its chain does
// `numgen random mod Count` into the shared endpoint map, or rejects/drops.
type TargetRow struct {
	Service  string
	Key      TargetKey
	Family   Family
	Protocol Protocol
	Count    int
	Verdict  Verdict
	Reason   Reason
	Affinity *Affinity
}

// TargetRows lists every target, sorted by key.
func (m *Model) TargetRows() []TargetRow {
	var rows []TargetRow
	for i := range m.Services {
		s := &m.Services[i]
		for _, p := range s.Ports {
			for _, t := range p.Targets {
				rows = append(rows, TargetRow{
					Service: s.ID(), Key: t.Key, Family: p.Family, Protocol: p.Protocol,
					Count: len(t.Endpoints), Verdict: t.Verdict, Reason: t.Reason, Affinity: t.Affinity,
				})
			}
		}
	}
	slices.SortFunc(rows, func(a, b TargetRow) int { return strings.Compare(string(a.Key), string(b.Key)) })
	return rows
}

// EndpointRow is one element of the shared endpoint map
// `target id . bucket : endpoint addr . port`.
type EndpointRow struct {
	Service string
	Target  TargetKey
	Family  Family
	Bucket  int
	Addr    netip.Addr
	Port    uint16
}

// EndpointRows lists every DNAT bucket, sorted by target key and bucket.
// Buckets of a target run 0..Count-1 without gaps.
func (m *Model) EndpointRows() []EndpointRow {
	var rows []EndpointRow
	for i := range m.Services {
		s := &m.Services[i]
		for _, p := range s.Ports {
			for _, t := range p.Targets {
				for b, e := range t.Endpoints {
					rows = append(rows, EndpointRow{Service: s.ID(), Target: t.Key, Family: p.Family, Bucket: b, Addr: e.Addr, Port: e.Port})
				}
			}
		}
	}
	slices.SortStableFunc(rows, func(a, b EndpointRow) int {
		return cmp.Or(strings.Compare(string(a.Target), string(b.Target)), cmp.Compare(a.Bucket, b.Bucket))
	})
	return rows
}

// String renders the model as readable text, one line per fact; the golden
// tests compare it.
func (m *Model) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nodePortAddresses %v\n", m.NodePortAddresses)
	fmt.Fprintf(&b, "clusterCIDRs %v\n", m.ClusterCIDRs)
	fmt.Fprintf(&b, "masqueradeAll %v\n", m.MasqueradeAll)
	fmt.Fprintf(&b, "natOutgoing %v\n", m.NATOutgoing)
	for i := range m.Services {
		s := &m.Services[i]
		fmt.Fprintf(&b, "service %s\n", s.ID())
		if s.HealthCheck != nil {
			fmt.Fprintf(&b, "  healthCheck nodePort=%d localEndpoints=%d\n", s.HealthCheck.NodePort, s.HealthCheck.LocalEndpoints)
		}
		for _, p := range s.Ports {
			fmt.Fprintf(&b, "  port %s port=%d nodePort=%d", p.Key, p.Port, p.NodePort)
			if p.Affinity != nil {
				fmt.Fprintf(&b, " affinity=ClientIP/%ds", p.Affinity.TimeoutSeconds)
			}
			b.WriteString("\n")
			for _, f := range p.Frontends {
				fmt.Fprintf(&b, "    frontend %s %s %s -> %s", f.Kind, netip.AddrPortFrom(f.Addr, f.Port), f.Protocol, f.Target)
				if f.PodTarget != "" {
					fmt.Fprintf(&b, " (pods,node -> %s)", f.PodTarget)
				}
				fmt.Fprintf(&b, " masquerade=%s\n", f.Masquerade)
			}
			for _, t := range p.Targets {
				fmt.Fprintf(&b, "    target %s %s", t.Key, t.Verdict)
				if t.Reason != "" {
					fmt.Fprintf(&b, " reason=%s", t.Reason)
				}
				b.WriteString("\n")
				for i, e := range t.Endpoints {
					fmt.Fprintf(&b, "      [%d] %s node=%s local=%v ready=%v serving=%v terminating=%v\n",
						i, e.AddrPort(), e.NodeName, e.Local, e.Ready, e.Serving, e.Terminating)
				}
			}
		}
	}
	return b.String()
}
