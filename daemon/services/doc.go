// Package services computes how one node load-balances Kubernetes Services,
// in place of kube-proxy. This package is the pure half: Desired turns a
// Snapshot (Services, EndpointSlices, the node, the configuration) into a
// backend-neutral Model plus Problems carrying stable Reason codes. It
// imports no kernel package; an nftables renderer and applier build on it.
//
// # Model
//
// A Service yields one ServicePort per (port, protocol, IP family it has a
// ClusterIP in), keyed "namespace/name:portname/PROTO/FAMILY". Each
// ServicePort has:
//
//   - Frontends: every address . protocol . port that reaches it: each
//     ClusterIP, each externalIP, each status.loadBalancer.ingress IP (unless
//     its ipMode is Proxy) on the Service port, and each NodePort address on
//     the node port. Headless and ExternalName Services have none. Frontend
//     keys are unique across the Model; a conflict keeps the first Service by
//     namespace/name.
//   - Targets: up to two endpoint sets, "cluster" (all usable endpoints) and
//     "local" (this node's), each keyed by the ServicePortKey plus the scope.
//     ClusterIP frontends use local when internalTrafficPolicy is Local;
//     external frontends use local when externalTrafficPolicy is Local, and
//     then also name the cluster target as PodTarget for packets from pods
//     and from the node itself (kube-proxy's short-circuit).
//
// Endpoint choice follows kube-proxy: ready endpoints; serving-but-terminating
// ones only when the target has no ready one (terminatingFallback); a target
// left empty by a Local policy drops (noLocalEndpoints) while a port with no
// usable endpoint at all rejects (noEndpoints: ICMP port unreachable, TCP
// reset). Endpoints are merged across slices by address . port (the better
// conditioned copy wins, then the local one, as kube-proxy), only the slice port whose name and protocol match
// the Service port is used (so named targetPorts resolve per slice), slices
// of other address families and endpoints without addresses are ignored.
//
// Masquerade: each Frontend says which packets are SNATed (always for
// external frontends with policy Cluster; only node-originated ones with
// policy Local; sources outside the cluster CIDRs for ClusterIPs; everything
// with MasqueradeAll). Two rules are global: hairpin (a packet DNATed back to
// its own source) and NATOutgoing (sources in ClusterCIDRs to destinations
// outside them).
//
// # Helpers for the applier
//
// ChangedServices names the Services whose state differs between the
// applied and the next Model (the unit of a partial sync), and
// StaleUDPFlows lists the UDP conntrack entries to delete after applying
// (removed endpoints; ports that had none and rejected), as kube-proxy does.
//
// # Flat views for nftables
//
// FrontendMap, TargetRows and EndpointRows are the Model as map elements, so
// the renderer's number of sets stays constant as Services grow (per-Service
// sets made kube-proxy's full sync grow with the square of the Service count:
// /work/shared/notes/nftables-scale.md). The renderer is package
// servicenft, whose doc has the layout as built (IPv4 only so far, endpoint
// choice by per-target numgen rules rather than a shared verdict map, whose
// kernel validation cost grows with Services × endpoints, and the
// no-endpoints check in filter prerouting/output). The original plan, one
// table "inet meridian" written through github.com/google/nftables:
//
//	map frontends4 { type ipv4_addr . inet_proto . inet_service : verdict }
//	map frontends6 { type ipv6_addr . inet_proto . inet_service : verdict }
//	    element: <addr> . <proto> . <port> : goto svc-<target id>
//	    or, for an externalTrafficPolicy Local frontend, goto ext-<target id>:
//	    ip saddr @cluster-cidrs4 goto svc-<PodTarget id>;
//	    fib saddr type local mark for masquerade, goto svc-<PodTarget id>;
//	    goto svc-<Target id>
//	    (NodePorts too: the key's address is the node address; a separate
//	    nodeports map keyed by `fib daddr type local . proto . port` is the
//	    alternative when node addresses change often)
//	map endpoints4 { type mark . mark : ipv4_addr . inet_service }   # target id . bucket
//	map endpoints6 { type mark . mark : ipv6_addr . inet_service }
//	set hairpin4 { type ipv4_addr . ipv4_addr }   # ep . ep, matched as ip saddr . ip daddr after DNAT
//	set cluster-cidrs4 { type ipv4_addr; flags interval }
//	chain nat-prerouting { type nat hook prerouting priority dstnat; jump services }
//	chain nat-output     { type nat hook output priority dstnat; jump services }
//	set masq-always4     { type ipv4_addr . inet_proto . inet_service }  # Masquerade always
//	set masq-offcluster4 { type ipv4_addr . inet_proto . inet_service }  # Masquerade offCluster
//	chain services       { ip daddr . meta l4proto . th dport @masq-always4 meta mark set mark or 0x4000
//	                       ip daddr . meta l4proto . th dport @masq-offcluster4 ip saddr != @cluster-cidrs4 meta mark set mark or 0x4000
//	                       ip daddr . meta l4proto . th dport vmap @frontends4 ... }
//	chain svc-<id>       { dnat ip to <id> . numgen random mod <Count> map @endpoints4 }
//	map no-endpoints4 { type ipv4_addr . inet_proto . inet_service : verdict }
//	    element: frontends of reject/drop targets : goto reject-chain | drop
//	chain filter-{input,forward,output} { ct state new ... vmap @no-endpoints4 }
//	    (reject is not valid in nat chains, hence filter hooks, as kube-proxy's
//	    service-endpoints-check)
//	chain nat-postrouting { type nat hook postrouting priority srcnat;
//	                        meta mark & 0x4000 != 0 masquerade; hairpin; natOutgoing }
//
// The masquerade decision is per frontend (a ClusterIP and a NodePort share
// a target but not a masquerade rule), hence the two frontend sets rather
// than rules in the target chain. NodePorts are never on loopback addresses
// (kube-proxy's nftables mode does not serve them there either).
//
// Per-target chains grow with Services, but chains are not sets: the
// kernel's per-set binding and lookup cost stays flat. Session affinity
// uses one shared dynamic map per family keyed by target id . client
// address with per-element timeouts. Target ids are assigned by the applier
// and kept stable across syncs, so one endpoint change rewrites only that
// target's endpoint elements and chain.
package services
