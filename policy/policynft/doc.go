// Package policynft renders one node's compiled NetworkPolicy enforcement
// (policy.Model) into Meridian's nftables model (nft.Table). Render is pure
// and deterministic: every name comes from a stable hash of a selector,
// ipBlock, named port or pod key, so a restarted agent computes the same
// table and nft.Plan sends nothing.
//
// The table is a fragment of table inet meridian: every object it holds is
// named "pol…", and the dataplane merges it with the Services fragment and
// syncs both in one transaction. Layout:
//
//	set pol-sel-<h>   { type ipv4_addr; }                   // one per distinct peer selector
//	set pol-cidr-<h>  { type ipv4_addr; flags interval; }   // one per ipBlock, cidr minus excepts
//	set pol-np-<h>    { type ipv4_addr . inet_service; }    // egress named port: pod IP . its number
//	set pol-self      { type ipv4_addr . ipv4_addr; }       // local pod IP . itself (hairpin)
//	map pol-ingress   { type ipv4_addr : verdict; }         // isolated local pod IP : jump pol-in-<h>
//	map pol-egress    { type ipv4_addr : verdict; }         // isolated local pod IP : jump pol-out-<h>
//
//	chain pol-filter-forward { type filter hook forward priority filter; policy accept;
//		ct state established,related accept
//		ip saddr . ip daddr @pol-self accept
//		ip saddr vmap @pol-egress
//		ip daddr vmap @pol-ingress
//	}
//	chain pol-filter-input { type filter hook input priority filter; policy accept;
//		ct state established,related accept
//		ip saddr vmap @pol-egress
//	}
//	chain pol-in-<hash of ns/pod> {       // one per ingress-isolated local pod
//		ip saddr @pol-sel-… meta l4proto tcp th dport 80 counter return comment "ns/policy ingress[0]"
//		…
//		counter drop comment "ns/pod ingress drop: policy-a policy-b"
//	}
//	chain pol-out-<hash of ns/pod> { … ip daddr … meta l4proto tcp ip daddr . th dport @pol-np-… … }
//
// A packet meets a constant number of rules in the base chains and then
// only its own pods' chains, whatever the number of pods and policies. An
// allow rule returns, so the egress check of the source pod is followed by
// the ingress check of the destination pod (both local when two pods of one
// node talk); the pod chain's last rule drops what no rule allowed, counted
// and named after the pod and its isolating policies. Pod churn and
// relabelling change set and map elements only; chains are added or
// removed when a pod starts or stops being isolated, and rewritten when the
// policies that select it change.
//
// Forward is where pod-to-pod traffic is judged: routed across nodes and
// between two pods of this node alike. Service traffic is judged after DNAT:
// the filter forward hook (priority filter) runs after nat prerouting
// (priority dstnat), so the destination is already the chosen endpoint, as
// NetworkPolicy requires. Input sees a local pod reaching one of the node's
// own addresses, which is that pod's egress (only ipBlocks match node
// addresses). Output is not hooked: traffic from the node to its pods
// (kubelet probes) is not subject to policy, and replies to it are
// established. Host-network pods are not in the model.
//
// Accepting established and related traffic in our own base chain ends only
// this chain's evaluation: other base chains at the hook, Meridian's Services
// chain and other tables alike, still see the packet. There is no
// `ct state invalid drop`: a packet conntrack calls invalid (a TCP segment
// outside the window after an asymmetric reroute, a flow picked up after a
// conntrack flush) goes through the pod chains like a new one instead, so
// policy never drops what it would allow.
//
// Only IPv4 is rendered: the nft model has IPv4 fields only, so the IPv6
// addresses of dual-stack pods are left out of every set and map.
//
// Fail closed: the model already isolates the pods an uncompilable policy
// selects without allowing anything (policy.Problem). When the kernel
// refuses a transaction, which it does as a whole, the dataplane renders
// again with RenderOptions.FailClosed naming the pods whose chains changed
// since the last table it applied (Suspects): their chains become one
// counted drop, every other pod's chain stays exactly as applied, so
// nft.Plan does not touch it.
package policynft
