// Package policy compiles Kubernetes NetworkPolicy (networking.k8s.io/v1)
// into a backend-neutral model of one node's enforcement, shaped so that the
// nftables renderer maps it one to one onto sets, maps and a bounded number
// of rules.
//
// Compile is a pure function from a Snapshot (policies, pods, namespaces,
// the node's name) to a Model. The model has three kinds of sets and one
// entry per local pod:
//
//   - SelectorSets: one per distinct peer selector in the cluster's policies,
//     keyed by its canonical form (the policy's namespace or a
//     namespaceSelector, and a podSelector; requirements and values sorted) so
//     equal selectors in different policies share one set, named
//     "sel-<hash>". Members are the IPs of the live, non-host-network pods it
//     matches. In nftables: `set pol-sel-… { type ipv4_addr; }`, referenced
//     as `ip saddr @pol-sel-…` / `ip daddr @pol-sel-…` (IPv4 only for now:
//     the nft model has no IPv6 fields).
//   - BlockSets: one per distinct ipBlock, its CIDR minus its excepts as
//     sorted, non-overlapping ranges: `set cidr-… { type ipv4_addr; flags
//     interval; }`. An ipBlock matches by address only, so it matches pod IPs
//     and host-network pods' node IPs alike.
//   - PortSets: one per (protocol, port name) used by an egress rule. A named
//     port of an egress rule means a number per destination pod, so it
//     compiles to a `type ipv4_addr . inet_service` set of (pod IP . port)
//     matched as `ip daddr . th dport @np-…` together with the rule's peer
//     set: one rule, whatever each destination numbers the port. A named port
//     of an ingress rule is resolved against the target pod's own
//     containerPorts at compile time, because the rule lives in that pod's
//     chain anyway.
//   - Pods: each local pod (on the node, not host network, with an IP) with,
//     per direction, whether it is isolated (selected by some policy of that
//     direction), the isolating policies, and its ordered allow rules. Each
//     rule is (peer: any | selector set | block set) x (ports: empty for all,
//     else protocol + range or protocol + PortSet) and carries its policy's
//     namespace/name and rule index.
//
// The renderer, package policynft, builds a verdict map from a local pod's
// IP to its per-pod chains (`ip daddr vmap @pol-ingress`, `ip saddr vmap
// @pol-egress`), so a packet meets only its own pod's rules. A pod's chain
// holds one rule per allow rule (per peer and port), each counted and
// commented with the policy and rule index, and ends in a counted drop
// attributed to the isolating policies;
// pods that are not isolated get no map entry. Pod churn and relabelling
// change set elements only, never chains, unless a pod starts or stops being
// selected. Established and related traffic, and traffic from the node to
// its own pods (kubelet probes), are accepted before the map and are not in
// the model.
//
// Ingress is enforced on the destination pod's node, egress on the source
// pod's node: a node's model holds only its own pods, but its sets hold
// peers from the whole cluster. Model.Evaluate judges one packet as the
// rendered ruleset would on that node, and names the rules or policies that
// decided; the conjunction of every node's verdict equals Reference, a plain
// evaluator over the API objects that the fuzz test holds the compiler to.
//
// A policy that cannot be compiled (an invalid selector, CIDR, except, port
// or peer, an unknown policy type) is returned as a Problem and fails
// closed: it still isolates the pods it selects (every pod of its namespace
// if its own podSelector is invalid; both directions for an unknown type)
// but allows nothing, and no other policy is affected.
//
// Conventions where the API leaves room: host-network pods are not subject
// to policy and only ipBlocks match them; finished pods (Succeeded, Failed)
// are in no set because their IPs return to IPAM; a named port must match
// name and protocol; a rule whose named ports resolve to nothing on the
// target allows nothing; an ipBlock CIDR with host bits set means its
// network; excepts must be strict subsets of the CIDR.
package policy
