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
package nodeagent
