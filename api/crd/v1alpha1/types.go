package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Durations are Go durations ("90s", "1m30s"): the pattern keeps out what
// time.ParseDuration or CEL's duration() cannot parse, and the rules repeat
// the pattern as a guard because the API server evaluates them even when the
// pattern has failed, adding a confusing type conversion error. Community
// rules are guarded the same way.
//
// Numbers are int64 rather than uint32 because Kubernetes API conventions
// forbid unsigned fields and controller-gen would give uint32 the OpenAPI
// format int32, which cannot hold 4-byte ASNs (RFC 6793) above 2^31-1. The
// schema bounds keep them inside uint32.

// ConditionAccepted is the condition type meridiand sets on both kinds: True
// when the object is in effect, False with a reason when it was refused for
// something the schema cannot see (a Secret that does not exist, a prefix
// overlapping a node subnet) and the last good configuration keeps running.
const ConditionAccepted = "Accepted"

// DefaultASN is the private ASN (RFC 6996) nodes use when BGPConfiguration
// does not name one.
const DefaultASN = 64512

// BGPConfigurationName is the only name a BGPConfiguration may have.
const BGPConfigurationName = "default"

// BGPConfiguration is the cluster-wide BGP setup. There is at most one, named
// default; without it every field takes its default.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=bgpconfig
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="ASN",type=integer,JSONPath=`.spec.asNumber`
// +kubebuilder:printcolumn:name="Mesh",type=boolean,JSONPath=`.spec.nodeToNodeMesh`
// +kubebuilder:printcolumn:name="Encapsulation",type=string,JSONPath=`.spec.encapsulation`
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.encapsulationType`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name == 'default'",message="there is one BGPConfiguration per cluster and it must be named default"
type BGPConfiguration struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +kubebuilder:default={}
	Spec   BGPConfigurationSpec `json:"spec,omitempty"`
	Status Status               `json:"status,omitempty"`
}

// BGPConfigurationSpec is the cluster-wide BGP setup.
type BGPConfigurationSpec struct {
	// ASNumber is the ASN of every node that has no per-node override.
	// +kubebuilder:default=64512
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4294967294
	// +optional
	ASNumber int64 `json:"asNumber,omitempty"`

	// NodeToNodeMesh makes every node peer iBGP with every other node. Turn
	// it off when nodes learn each other's routes from route reflectors or
	// from the fabric.
	// +kubebuilder:default=true
	// +optional
	NodeToNodeMesh *bool `json:"nodeToNodeMesh,omitempty"`

	// RouteReflectorClusterID is the CLUSTER_ID (RFC 4456) of nodes acting
	// as route reflectors. Empty: each reflector uses its router ID.
	// +optional
	RouteReflectorClusterID IPv4 `json:"routeReflectorClusterID,omitempty"`

	// Communities are attached to every route the nodes advertise.
	// +kubebuilder:validation:MaxItems=32
	// +listType=set
	// +optional
	Communities []Community `json:"communities,omitempty"`

	// LocalPreference is set on the routes the nodes advertise to iBGP
	// peers. Unset: the speaker's default (100).
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=4294967295
	// +optional
	LocalPreference *int64 `json:"localPreference,omitempty"`

	// AcceptedPrefixes are the only prefixes nodes accept from peers (a
	// prefix must fall inside one of them). Empty: the cluster's pod CIDRs.
	// Whatever this says, a default route, a node's own pod CIDR and
	// anything more specific than a node's pod CIDR are refused.
	// +kubebuilder:validation:MaxItems=256
	// +listType=set
	// +optional
	AcceptedPrefixes []CIDR `json:"acceptedPrefixes,omitempty"`

	// Encapsulation decides when traffic to a remote node's pods is
	// tunnelled.
	// +kubebuilder:default=CrossSubnet
	// +optional
	Encapsulation EncapsulationMode `json:"encapsulation,omitempty"`

	// EncapsulationType is the tunnel used when Encapsulation tunnels:
	// IPIP (IP protocol 4, 20 bytes of overhead) or VXLAN (UDP 4789, 50
	// bytes), for networks that drop IP protocol 4. Every node must use
	// the same type. Empty: meridiand's --encapsulation-type (IPIP unless
	// set otherwise).
	// +optional
	EncapsulationType EncapsulationType `json:"encapsulationType,omitempty"`

	// ServiceClusterIPs are the Service ClusterIP ranges nodes advertise.
	// Empty: none.
	// +kubebuilder:validation:MaxItems=16
	// +listType=map
	// +listMapKey=cidr
	// +optional
	ServiceClusterIPs []ServiceCIDRBlock `json:"serviceClusterIPs,omitempty"`

	// ServiceExternalIPs are the ranges of Service externalIPs nodes
	// advertise. Empty: none.
	// +kubebuilder:validation:MaxItems=16
	// +listType=map
	// +listMapKey=cidr
	// +optional
	ServiceExternalIPs []ServiceCIDRBlock `json:"serviceExternalIPs,omitempty"`

	// ServiceLoadBalancerIPs are the ranges of LoadBalancer ingress IPs
	// nodes advertise. Empty: none.
	// +kubebuilder:validation:MaxItems=16
	// +listType=map
	// +listMapKey=cidr
	// +optional
	ServiceLoadBalancerIPs []ServiceCIDRBlock `json:"serviceLoadBalancerIPs,omitempty"`
}

// ServiceCIDRBlock is one range of Service addresses to advertise.
type ServiceCIDRBlock struct {
	// +required
	CIDR CIDR `json:"cidr"`
}

// EncapsulationMode says when pod traffic between nodes is tunnelled.
// +kubebuilder:validation:Enum=Never;CrossSubnet;Always
type EncapsulationMode string

const (
	// EncapsulationNever routes pod traffic natively; the fabric must know
	// the pod CIDRs.
	EncapsulationNever EncapsulationMode = "Never"
	// EncapsulationCrossSubnet routes natively when the next hop is on a
	// directly connected subnet or the fabric has the pod CIDR, and
	// tunnels otherwise.
	EncapsulationCrossSubnet EncapsulationMode = "CrossSubnet"
	// EncapsulationAlways tunnels all pod traffic between nodes.
	EncapsulationAlways EncapsulationMode = "Always"
)

// EncapsulationType is the tunnel pod traffic between nodes goes through
// when it is encapsulated.
// +kubebuilder:validation:Enum=IPIP;VXLAN
type EncapsulationType string

const (
	// EncapsulationIPIP is IP in IP (RFC 2003) over tunl0.
	EncapsulationIPIP EncapsulationType = "IPIP"
	// EncapsulationVXLAN is VXLAN (RFC 7348) with forwarding entries
	// programmed from BGP, no multicast flooding and no learning.
	EncapsulationVXLAN EncapsulationType = "VXLAN"
)

// Community is a BGP community: standard "65000:100" (RFC 1997, two 16-bit
// halves) or large "64512:1:2" (RFC 8092, three 32-bit parts).
// +kubebuilder:validation:MaxLength=32
// +kubebuilder:validation:Pattern=`^[0-9]{1,10}:[0-9]{1,10}(:[0-9]{1,10})?$`
// +kubebuilder:validation:XValidation:rule="!self.matches('^[0-9]{1,10}:[0-9]{1,10}(:[0-9]{1,10})?$') || (self.split(':').size() == 2 ? self.split(':').all(p, int(p) <= 65535) : self.split(':').all(p, int(p) <= 4294967295))",message="a standard community has two parts of at most 65535, a large community three parts of at most 4294967295"
type Community string

// IPv4 is an IPv4 address in dotted-quad form.
// +kubebuilder:validation:MaxLength=15
// +kubebuilder:validation:XValidation:rule="isIP(self) && ip.isCanonical(self) && ip(self).family() == 4",message="must be an IPv4 address such as 192.0.2.1"
type IPv4 string

// CIDR is an IP prefix with no host bits set, such as 10.244.0.0/16.
// +kubebuilder:validation:MaxLength=43
// +kubebuilder:validation:XValidation:rule="isCIDR(self) && cidr(self) == cidr(self).masked()",message="must be a CIDR with no host bits set, such as 10.244.0.0/16"
type CIDR string

// +kubebuilder:object:root=true

// BGPConfigurationList is a list of BGPConfiguration.
type BGPConfigurationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BGPConfiguration `json:"items"`
}

// BGPPeer is a BGP speaker outside the cluster, typically a top-of-rack
// router, that some or all nodes peer with.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Peer IP",type=string,JSONPath=`.spec.peerIP`
// +kubebuilder:printcolumn:name="ASN",type=integer,JSONPath=`.spec.asNumber`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type BGPPeer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec   BGPPeerSpec `json:"spec"`
	Status Status      `json:"status,omitempty"`
}

// BGPPeerSpec says who the peer is, which nodes peer with it and how.
//
// +kubebuilder:validation:XValidation:rule="!(has(self.node) && has(self.nodeSelector))",message="node and nodeSelector are mutually exclusive"
// +kubebuilder:validation:XValidation:rule="!has(self.holdTime) || !self.holdTime.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || duration(self.holdTime) == duration('0s') || duration(self.holdTime) >= duration('3s')",message="holdTime must be 0 (no keepalives) or at least 3s (RFC 4271 section 4.2)"
// +kubebuilder:validation:XValidation:rule="!has(self.keepaliveTime) || !has(self.holdTime) || !self.keepaliveTime.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || !self.holdTime.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self.holdTime) == duration('0s') ? duration(self.keepaliveTime) == duration('0s') : duration(self.keepaliveTime) < duration(self.holdTime))",message="keepaliveTime must be less than holdTime (and 0 when holdTime is 0)"
type BGPPeerSpec struct {
	// PeerIP is the peer's address.
	// +required
	PeerIP IPv4 `json:"peerIP"`

	// ASNumber is the peer's ASN; equal to the node's ASN means iBGP.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4294967294
	// +required
	ASNumber int64 `json:"asNumber"`

	// NodeSelector picks the nodes that peer with this peer. Unset (and no
	// node): all nodes.
	// +optional
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	// Node is the one node that peers with this peer.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Node string `json:"node,omitempty"`

	// SourceAddress is the local address of the session. Unset: the address
	// the kernel picks for the route to the peer.
	// +optional
	SourceAddress IPv4 `json:"sourceAddress,omitempty"`

	// EBGPMultihop is the TTL of packets to an eBGP peer that is not
	// directly connected. Unset: 1, the peer must be on a connected subnet.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=255
	// +optional
	EBGPMultihop *int32 `json:"ebgpMultihop,omitempty"`

	// Password is the TCP MD5 signature key (RFC 2385) of the session.
	// +optional
	Password *SecretKeySelector `json:"password,omitempty"`

	// HoldTime is the hold time offered in OPEN: 0 (no keepalives) or at
	// least 3s.
	// +kubebuilder:default="90s"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$`
	HoldTime *metav1.Duration `json:"holdTime,omitempty"`

	// KeepaliveTime is the interval between KEEPALIVEs. Unset: a third of
	// the negotiated hold time.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$`
	KeepaliveTime *metav1.Duration `json:"keepaliveTime,omitempty"`

	// GracefulRestart (RFC 4724) keeps forwarding through restarts of
	// either side.
	// +kubebuilder:default={}
	// +optional
	GracefulRestart *GracefulRestart `json:"gracefulRestart,omitempty"`

	// Passive waits for the peer to connect and never opens the session.
	// +optional
	Passive bool `json:"passive,omitempty"`

	// MaxPrefixes limits how many prefixes the peer may announce.
	// +optional
	MaxPrefixes *MaxPrefixes `json:"maxPrefixes,omitempty"`
}

// SecretKeySelector names one key of a Secret.
type SecretKeySelector struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Key string `json:"key"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +required
	Namespace string `json:"namespace"`
}

// GracefulRestart configures RFC 4724 graceful restart for a session.
//
// +kubebuilder:validation:XValidation:rule="!has(self.restartTime) || !self.restartTime.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self.restartTime) >= duration('1s') && duration(self.restartTime) <= duration('4095s'))",message="restartTime must be between 1s and 4095s (a 12-bit field, RFC 4724 section 3)"
type GracefulRestart struct {
	// Enabled advertises the graceful restart capability.
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`

	// RestartTime is how long the peer keeps our routes while the session
	// is down. Unset: 120s.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$`
	RestartTime *metav1.Duration `json:"restartTime,omitempty"`
}

// MaxPrefixes limits the prefixes accepted from a peer.
type MaxPrefixes struct {
	// Limit is the number of prefixes the peer may announce.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4294967295
	// +required
	Limit int64 `json:"limit"`

	// Action is taken when the peer announces more than Limit prefixes.
	// +kubebuilder:default=Restart
	// +optional
	Action MaxPrefixAction `json:"action,omitempty"`
}

// MaxPrefixAction is what happens when a peer exceeds its prefix limit.
// +kubebuilder:validation:Enum=Warn;Restart;Drop
type MaxPrefixAction string

const (
	// MaxPrefixWarn logs and records an event, keeping all prefixes.
	MaxPrefixWarn MaxPrefixAction = "Warn"
	// MaxPrefixRestart closes the session with a CEASE "maximum number of
	// prefixes reached" (RFC 4486), the default because it is what
	// operators of BGP routers expect.
	MaxPrefixRestart MaxPrefixAction = "Restart"
	// MaxPrefixDrop keeps the session and ignores prefixes beyond Limit.
	MaxPrefixDrop MaxPrefixAction = "Drop"
)

// +kubebuilder:object:root=true

// BGPPeerList is a list of BGPPeer.
type BGPPeerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BGPPeer `json:"items"`
}

// Status is what meridiand reports on both kinds.
type Status struct {
	// Conditions: see ConditionAccepted.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// ObservedGeneration is the metadata.generation the conditions describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}
