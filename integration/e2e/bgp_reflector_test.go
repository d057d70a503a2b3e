package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	"github.com/meridian-net/meridian/daemon/cluster"
	"github.com/meridian-net/meridian/integration/lab"
)

// bgpSessions lists the addresses a node has established BGP sessions with.
func bgpSessions(t *testing.T, l *lab.Lab, node lab.Node) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := l.ExecNode(ctx, node.Name, "ss", "-Htn", "state", "established", "( sport = :179 or dport = :179 )")
	if err != nil {
		return nil, fmt.Errorf("ss on %s: %w: %s", node.Name, err, out)
	}
	var peers []netip.Addr
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		ap, err := netip.ParseAddrPort(f[3])
		if err != nil {
			return nil, fmt.Errorf("parse %q: %w", line, err)
		}
		peers = append(peers, ap.Addr())
	}
	slices.SortFunc(peers, netip.Addr.Compare)
	return slices.Compact(peers), nil
}

// With the node mesh off and node-1 labelled as route reflector, the other
// nodes peer with node-1 only and still learn every pod CIDR with its
// owner as next hop; turning the mesh back on restores the full mesh.
func TestBGPRouteReflector(t *testing.T) {
	l := needLab(t)
	c := client(t, l)
	nodes := l.Nodes()
	if len(nodes) < 3 {
		t.Fatalf("lab has %d nodes, want 3", len(nodes))
	}
	waitMesh(t, c, nodes)
	cidrs := cidrsOf(t, c, nodes)
	dyn := bgpAPI(t, l)
	ctx := context.Background()
	rr := nodes[0]

	label := func(value *string) {
		t.Helper()
		v := "null"
		if value != nil {
			v = `"` + *value + `"`
		}
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, cluster.RouteReflectorLabel, v)
		if _, err := c.CoreV1().Nodes().Patch(ctx, rr.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatalf("label %s: %v", rr.Name, err)
		}
	}
	yes := "true"
	label(&yes)
	t.Cleanup(func() {
		label(nil)
		_ = dyn.Resource(bgpConfigsGVR).Delete(ctx, "default", metav1.DeleteOptions{})
		for _, n := range nodes {
			eventually(t, 90*time.Second, "full mesh back on "+n.Name, func() error {
				got, err := bgpSessions(t, l, n)
				if err != nil {
					return err
				}
				if len(got) != len(nodes)-1 {
					return fmt.Errorf("%s has sessions with %v", n.Name, got)
				}
				return checkMeshRoutes(t, n, cidrs, nodes)
			})
		}
	})
	mesh := false
	createObject(t, dyn, &v1alpha1.BGPConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec:       v1alpha1.BGPConfigurationSpec{NodeToNodeMesh: &mesh, RouteReflectorClusterID: "198.18.0.11"},
	})

	for _, n := range nodes {
		want := []netip.Addr{rr.IP}
		if n.Name == rr.Name {
			want = nil
			for _, o := range nodes[1:] {
				want = append(want, o.IP)
			}
		}
		eventually(t, 90*time.Second, n.Name+" peers through the reflector", func() error {
			got, err := bgpSessions(t, l, n)
			if err != nil {
				return err
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("%s has sessions with %v, want %v", n.Name, got, want)
			}
			// Reflected paths keep the owner as next hop.
			return checkMeshRoutes(t, n, cidrs, nodes)
		})
	}
}
