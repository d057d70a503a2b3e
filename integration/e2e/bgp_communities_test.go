package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
)

// frrPath is one path of `show ip bgp <prefix> json` as FRR prints it.
type frrPath struct {
	Community *struct {
		String string `json:"string"`
	} `json:"community"`
	LargeCommunity *struct {
		String string `json:"string"`
	} `json:"largeCommunity"`
	// LocPrf is only printed when the path carries LOCAL_PREF.
	LocPrf *uint32 `json:"locPrf"`
	Peer   struct {
		PeerID string `json:"peerId"`
	} `json:"peer"`
}

func (p frrPath) communities() (std, large string) {
	if p.Community != nil {
		std = p.Community.String
	}
	if p.LargeCommunity != nil {
		large = p.LargeCommunity.String
	}
	return std, large
}

// BGPConfiguration's communities reach a top-of-rack FRR on every node's
// pod CIDR, its localPreference reaches the other nodes (iBGP) but not
// FRR (eBGP, RFC 4271 section 5.1.5), and editing the communities
// re-announces the paths without a session flap.
func TestBGPCommunities(t *testing.T) {
	l := needLab(t)
	if _, err := os.Stat(frrBgpd); err != nil {
		t.Skipf("%s not installed: %v", frrBgpd, err)
	}
	c := client(t, l)
	nodes := l.Nodes()
	if len(nodes) < 2 {
		t.Skipf("needs two nodes, the lab has %d", len(nodes))
	}
	waitMesh(t, c, nodes)
	cidrs := cidrsOf(t, c, nodes)
	dyn := bgpAPI(t, l)

	torIP := netip.MustParseAddr("198.18.0.207")
	tor := newRouterNetns(t, "torc", torIP)
	tor.startFRR(t, torASN, nodes, nil)
	lp := int64(300)
	createObject(t, dyn, &v1alpha1.BGPConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec: v1alpha1.BGPConfigurationSpec{
			Communities:     []v1alpha1.Community{"65000:100", "64512:7:8"},
			LocalPreference: &lp,
		},
	})
	createObject(t, dyn, bgpPeer("torc", torIP, torASN))
	t.Cleanup(func() {
		_ = dyn.Resource(bgpPeersGVR).Delete(context.Background(), "torc", metav1.DeleteOptions{})
		_ = dyn.Resource(bgpConfigsGVR).Delete(context.Background(), "default", metav1.DeleteOptions{})
	})

	// pathsAt reads FRR's paths for a node's pod CIDR, from that node.
	pathsAt := func(prefix netip.Prefix, node netip.Addr) ([]frrPath, error) {
		out, err := tor.vtysh(fmt.Sprintf("show ip bgp %s json", prefix))
		if err != nil {
			return nil, err
		}
		var res struct {
			Paths []frrPath `json:"paths"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			return nil, fmt.Errorf("decode %s: %w", out, err)
		}
		var mine []frrPath
		for _, p := range res.Paths {
			if p.Peer.PeerID == node.String() {
				mine = append(mine, p)
			}
		}
		if len(mine) == 0 {
			return nil, fmt.Errorf("no path from %s in %s", node, out)
		}
		return mine, nil
	}
	wantAtFRR := func(std, large string) {
		t.Helper()
		for _, n := range nodes {
			prefix := cidrs[n.Name]
			eventually(t, 90*time.Second, fmt.Sprintf("FRR has %s from %s with %q %q", prefix, n.Name, std, large), func() error {
				ps, err := pathsAt(prefix, n.IP)
				if err != nil {
					return err
				}
				for _, p := range ps {
					gotStd, gotLarge := p.communities()
					if gotStd != std || gotLarge != large {
						return fmt.Errorf("communities %q, large %q", gotStd, gotLarge)
					}
					if p.LocPrf != nil && *p.LocPrf == 300 {
						return fmt.Errorf("eBGP path carries the iBGP LOCAL_PREF 300")
					}
				}
				return nil
			})
		}
	}
	wantAtFRR("65000:100", "64512:7:8")
	out, _ := tor.vtysh(fmt.Sprintf("show ip bgp %s", cidrs[nodes[0].Name]))
	t.Logf("FRR:\n%s", out)

	// The other nodes learn node-1's pod CIDR over iBGP with LOCAL_PREF 300
	// and the same communities (their RIB as the API reports it).
	for _, n := range nodes[1:] {
		api := apiConn(t, l, n.Name)
		eventually(t, 60*time.Second, n.Name+" has "+nodes[0].Name+"'s pod CIDR with LOCAL_PREF 300", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			rows, err := listAll(api.ListRoutes(ctx, &meridianv1.ListRoutesRequest{Source: meridianv1.Route_SOURCE_RIB}))
			if err != nil {
				return err
			}
			var seen []string
			for _, row := range rows {
				r := row.GetRoute()
				if r.GetPrefix() != cidrs[nodes[0].Name].String() || r.GetPeer() != nodes[0].IP.String() {
					continue
				}
				if r.GetLocalPref() == 300 {
					return nil
				}
				seen = append(seen, fmt.Sprintf("%s from %s lp %d", r.GetPrefix(), r.GetPeer(), r.GetLocalPref()))
			}
			return fmt.Errorf("paths: %v", seen)
		})
	}

	before, err := tor.frrPeers()
	if err != nil {
		t.Fatal(err)
	}
	// A new community list re-announces every path; no session restarts.
	u, err := dyn.Resource(bgpConfigsGVR).Get(context.Background(), "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.Object["spec"].(map[string]any)["communities"] = []any{"65000:200"}
	if _, err := dyn.Resource(bgpConfigsGVR).Update(context.Background(), u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantAtFRR("65000:200", "")
	after, err := tor.frrPeers()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		a, b := after[n.IP.String()], before[n.IP.String()]
		if a.State != "Established" || a.Established != b.Established {
			t.Errorf("%s: session %+v before the edit, %+v after: it flapped", n.Name, b, a)
		}
	}

	// A community the schema refuses never reaches the nodes.
	u, err = dyn.Resource(bgpConfigsGVR).Get(context.Background(), "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.Object["spec"].(map[string]any)["communities"] = []any{"4200000000:1"}
	_, err = dyn.Resource(bgpConfigsGVR).Update(context.Background(), u, metav1.UpdateOptions{})
	if err == nil || !strings.Contains(err.Error(), "standard community") {
		t.Errorf("the API server took a standard community with a 4-octet ASN: %v", err)
	}
}
