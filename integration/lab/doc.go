// Package lab runs a whole Kubernetes cluster in network namespaces on one
// Linux host, from real parts: etcd, kube-apiserver, kube-controller-manager
// and kube-scheduler in one namespace (mlab-cp, 198.18.0.2), and per node a
// node agent (the lab's stand-in for the kubelet, package nodeagent) and
// meridiand in the node's namespace (mlab-node-N, 198.18.0.(10+N)). All of
// them hang off one bridge (br0 in mlab-fabric); the host gets a single
// veth into it, mlab0 at 198.18.0.1/24, so kubectl on the host reaches the
// API server at https://198.18.0.2:6443 and nothing else on the host
// changes.
//
// That is the flat topology. With Options.Topology TopologyRacks the nodes
// sit on two rack subnets (198.18.1.0/24, 198.18.2.0/24) behind router
// namespaces mlab-tor1 and mlab-tor2, which share br0 (the core segment)
// with the control plane and the host and run FRR, BIRD or only static
// routes (Options.ToR); see racks.go and tor.go.
//
// Use from Go (root):
//
//	l, err := lab.Up(ctx, lab.Options{Nodes: 3, BinDir: "bin"})
//	if err != nil { ... } // Up has cleaned up after itself
//	defer lab.Down(context.Background(), l.StateDir())
//	err = l.WaitNodesReady(ctx)
//	cs, err := l.Client()
//	out, err := l.ExecPod(ctx, "default", "web-0", "ip", "route")
//
// or from the shell: meridian-lab up / status / exec / down.
//
// Daemons are started detached through `meridian-lab netns-exec`, log to
// <state>/logs/<name>.log and are recorded in <state>/pids/<name>.pid, so a
// lab outlives `meridian-lab up`. The state directory also holds the PKI
// (pki/), kubeconfigs (kubeconfig is the admin's), etcd's data, each node's
// CNI configuration and state (nodes/<node>/), and lab.json, from which Load
// reattaches.
//
// Names are fixed (mlab-*, mlab0, 198.18.0.0/24), so there is one lab per
// host. A process holds the host from Up until Down (see hostLockAddr):
// other processes' Up and Down wait meanwhile, so test binaries of several
// packages take turns instead of replacing each other's labs. The
// meridian-lab CLI exits after up and holds nothing, so the next Up
// replaces a lab started from the shell. Down removes everything a lab may
// have made, also after a failed Up or when the state directory is gone.
package lab
