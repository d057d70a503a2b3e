package nodeagent

import (
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

const (
	// podNetnsPrefix starts the name of every pod netns the agent creates.
	podNetnsPrefix = "mlab-pod-"
	// netnsDir is where iproute2 (and netns.NewNamed) bind-mount named
	// namespaces; /var/run is a symlink to /run on every distribution we run on.
	netnsDir = "/var/run/netns"
	// podIfName is the pod-side interface CNI creates, as the kubelet asks.
	podIfName = "eth0"
)

// PodNetnsName is the name of the named network namespace that holds the
// pod with this UID: "mlab-pod-" plus the first 12 characters of the UID
// without dashes. 48 bits of a random UUID are plenty to keep the pods of
// one lab apart, and the name stays short enough to read in `ip netns`.
func PodNetnsName(uid types.UID) string {
	s := strings.ReplaceAll(string(uid), "-", "")
	if len(s) > 12 {
		s = s[:12]
	}
	return podNetnsPrefix + s
}

// podNetnsPath is the path handed to CNI as CNI_NETNS.
func podNetnsPath(name string) string {
	return filepath.Join(netnsDir, name)
}
