// Package nodeagent is the lab's stand-in for the networking half of the
// kubelet. One agent runs inside each lab node's network namespace: it
// registers the Node and keeps its Lease and Ready condition fresh, wires
// every Pod bound to the node through the real CNI plugin (named netns +
// libcni ADD/CHECK/DEL), stands in for the Pod's containers with small
// in-process servers listening inside the Pod's netns, and reports Pod status
// the way the kubelet does, so that Services, EndpointSlices and network
// policy see ordinary, running Pods.
//
// No container image is pulled or run: the Pod's containers are "running"
// when the servers on their declared ports listen.
//
// Ownership. All lab nodes share the host's /run/netns, so a pod netns is
// never attributed to a node by its name alone: the agent acts only on the
// netns recorded in its own StateDir (pods/<uid>.json, written before the
// netns is made, and libcni's cache in cni-cache/). On start it adopts the
// recorded sandboxes whose pods still exist (CNI CHECK against the cached
// result; DEL and ADD if that fails) and tears down the others.
//
// The agent must run in the host's mount namespace (the lab's netns-exec
// keeps it): netns bind mounts made under `ip netns exec` stay private to the
// agent.
package nodeagent
