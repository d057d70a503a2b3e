package lab

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestCNIConflist(t *testing.T) {
	b, err := cniConflist("/run/meridian-lab/nodes/node-1/state")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []map[string]any
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("conflist is not JSON: %v\n%s", err, b)
	}
	if got.CNIVersion != "1.0.0" || got.Name != "meridian" || len(got.Plugins) != 1 {
		t.Fatalf("conflist header: %+v", got)
	}
	p := got.Plugins[0]
	if p["type"] != "meridian-cni" || p["stateDir"] != "/run/meridian-lab/nodes/node-1/state" {
		t.Errorf("plugin config: %v", p)
	}
	// The pod MTU is meridiand's (node.json), not pinned here.
	if mtu, ok := p["mtu"]; ok {
		t.Errorf("conflist pins mtu %v", mtu)
	}
}

func TestTopology(t *testing.T) {
	if got := NodeIP(1); got != netip.MustParseAddr("198.18.0.11") {
		t.Errorf("NodeIP(1) = %s", got)
	}
	if !LabSubnet.Contains(NodeIP(maxNodes)) {
		t.Errorf("NodeIP(%d) = %s leaves %s", maxNodes, NodeIP(maxNodes), LabSubnet)
	}
	n := newNode(3)
	if n.Name != "node-3" || n.Netns != "mlab-node-3" || n.IP.String() != "198.18.0.13" {
		t.Errorf("newNode(3) = %+v", n)
	}
	if !strings.HasPrefix(n.Netns, NetnsPrefix) || !strings.HasPrefix(PodNetnsPrefix, NetnsPrefix) {
		t.Errorf("namespaces must share the prefix Down deletes")
	}
	if APIServerURL() != "https://198.18.0.2:6443" {
		t.Errorf("APIServerURL() = %s", APIServerURL())
	}
	if !ServiceCIDR.Contains(KubernetesServiceIP) {
		t.Errorf("%s not in %s", KubernetesServiceIP, ServiceCIDR)
	}
}

func TestProcessOrdering(t *testing.T) {
	names := []string{"node-10", "node-2", "node-1"}
	slices.SortFunc(names, compareNodeNames)
	if strings.Join(names, " ") != "node-1 node-2 node-10" {
		t.Errorf("sorted %v", names)
	}
	if nodeOfProc("meridiand-node-2") != "node-2" || nodeOfProc("agent-node-10") != "node-10" || nodeOfProc("etcd") != "" {
		t.Errorf("nodeOfProc maps process names wrongly")
	}
}

func TestCheckStateDir(t *testing.T) {
	for _, bad := range []string{"", "relative/dir", "/", "/run", "/run/"} {
		if checkStateDir(bad) == nil {
			t.Errorf("checkStateDir(%q) accepted a directory Down would wipe", bad)
		}
	}
	for _, ok := range []string{DefaultStateDir, "/tmp/x/lab"} {
		if err := checkStateDir(ok); err != nil {
			t.Errorf("checkStateDir(%q): %v", ok, err)
		}
	}
}
