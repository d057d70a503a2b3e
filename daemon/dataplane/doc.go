// Package dataplane keeps one node's packet filtering and load balancing in
// step with the API server: it watches Services, EndpointSlices, Pods,
// Namespaces, NetworkPolicies and Nodes, computes the desired Service model
// (daemon/services) and NetworkPolicy model (policy), renders both into the
// one nftables table Meridian owns, and hands it to an nft.Syncer, which
// sends only the difference in one transaction.
//
// Syncs are coalesced: a burst of API events costs one sync after
// MinSyncInterval, not one per event, as kube-proxy's bounded-frequency
// runner does. A failed sync is retried with backoff; the syncer then reads
// the kernel table back before planning again. Nothing is removed on the way
// out: a restarted meridiand computes the same table from the same state,
// finds it already in the kernel and sends nothing, so established
// connections keep their NAT mappings.
//
// After each applied change the UDP conntrack entries that point at removed
// endpoints (or at a port that rejected before it had endpoints) are deleted,
// so clients such as DNS resolvers recover at once instead of waiting for
// the entries to time out.
package dataplane
