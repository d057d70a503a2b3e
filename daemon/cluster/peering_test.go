package cluster

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	"github.com/meridian-net/meridian/bgp"
)

func ptr[T any](v T) *T { return &v }

func testNodes() []NodeInfo {
	return []NodeInfo{
		{Name: "n1", InternalIP: netip.MustParseAddr("198.18.0.11"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, Labels: map[string]string{"rack": "a"}},
		{Name: "n2", InternalIP: netip.MustParseAddr("198.18.0.12"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}, Labels: map[string]string{"rack": "b"}, RouteReflector: true},
		{Name: "n3", InternalIP: netip.MustParseAddr("198.18.0.13"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}, Labels: map[string]string{"rack": "b"}},
	}
}

func peerNames(ps []bgp.Peer) string {
	var b []string
	for _, p := range ps {
		s := p.Name
		if p.RouteReflectorClient {
			s += "(client)"
		}
		b = append(b, s)
	}
	return strings.Join(b, ",")
}

func TestDesiredSessions(t *testing.T) {
	nodes := testNodes()
	tor := func(name, ip string, sel *metav1.LabelSelector, node string) PeerSpec {
		ps, err := PeerSpecFrom(&v1alpha1.BGPPeer{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       v1alpha1.BGPPeerSpec{PeerIP: v1alpha1.IPv4(ip), ASNumber: 65100, NodeSelector: sel, Node: node},
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	rackB := &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "b"}}
	peers := []PeerSpec{
		tor("tor-b", "198.18.0.202", rackB, ""),
		tor("tor-all", "198.18.0.201", nil, ""),
		tor("tor-n1", "198.18.0.203", nil, "n1"),
		tor("a-dup", "198.18.0.201", nil, ""),
		tor("is-node", "198.18.0.13", nil, ""),
	}
	mesh := DefaultSettings(64512)
	noMesh := Settings{ASN: 64512, ClusterID: netip.MustParseAddr("1.2.3.4")}
	tests := []struct {
		name     string
		self     int
		settings Settings
		want     string
	}{
		{"mesh n1", 0, mesh, "n2,n3,bgppeer/a-dup,bgppeer/tor-n1"},
		{"mesh n3", 2, mesh, "n1,n2,bgppeer/a-dup,bgppeer/tor-b"},
		{"reflector n2", 1, noMesh, "n1(client),n3(client),bgppeer/a-dup,bgppeer/tor-b"},
		{"client n1", 0, noMesh, "n2,bgppeer/a-dup,bgppeer/tor-n1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan := Desired(nodes[tc.self], nodes, tc.settings, peers, nil)
			if got := peerNames(plan.Peers); got != tc.want {
				t.Errorf("peers = %s, want %s", got, tc.want)
			}
			// BGPPeers get only this node's own routes; other nodes (mesh
			// or reflector sessions) get everything.
			// The import policy lets exactly the BGPPeers be next hop of
			// another node's pod CIDR.
			var fabric []netip.Addr
			for _, p := range plan.Peers {
				if isNode := strings.HasPrefix(p.Name, "n"); p.External == isNode {
					t.Errorf("session %s: External = %v", p.Name, p.External)
				}
				if p.External {
					fabric = append(fabric, p.Address)
				}
			}
			if !slices.Equal(plan.Policy.FabricPeers, fabric) || len(fabric) == 0 {
				t.Errorf("policy fabric peers %v, want the BGPPeers %v", plan.Policy.FabricPeers, fabric)
			}
			skips := map[string]string{}
			for _, s := range plan.Skipped {
				skips[s.Name] = s.Reason
			}
			if skips["tor-all"] != SkipDuplicateAddress || skips["is-node"] != SkipAddressIsNode {
				t.Errorf("skipped = %v", plan.Skipped)
			}
			for _, p := range plan.Peers {
				if p.RouteReflectorClient && p.RouteReflectorClusterID != tc.settings.ClusterID {
					t.Errorf("client %s cluster ID %s", p.Name, p.RouteReflectorClusterID)
				}
			}
		})
	}

	// The allowed set: the BGPConfiguration, else the cluster CIDR, else
	// the nodes' pod CIDRs.
	cidr := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	if got := Desired(nodes[0], nodes, mesh, nil, cidr).Policy.Allowed; len(got) != 1 || got[0] != cidr[0] {
		t.Errorf("allowed with a cluster CIDR = %v", got)
	}
	if got := Desired(nodes[0], nodes, mesh, nil, nil).Policy.Allowed; len(got) != 3 {
		t.Errorf("allowed without a cluster CIDR = %v, want the 3 pod CIDRs", got)
	}
	s := mesh
	s.AcceptedPrefixes = []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16")}
	pol := Desired(nodes[0], nodes, s, nil, cidr).Policy
	if len(pol.Allowed) != 1 || pol.Allowed[0] != s.AcceptedPrefixes[0] || len(pol.NodeAddresses) != 3 || len(pol.OwnPodCIDRs) != 1 {
		t.Errorf("policy = %+v", pol)
	}
	// A per-node ASN is the node's own.
	n := nodes[0]
	n.ASN = 65001
	if got := Desired(n, nodes, mesh, nil, nil).ASN; got != 65001 {
		t.Errorf("ASN = %d, want the annotation's 65001", got)
	}
}

func TestPeerSpecFrom(t *testing.T) {
	secrets := Secrets{{Namespace: "kube-system", Name: "bgp"}: {"pw": []byte("s3cret")}}
	base := func() *v1alpha1.BGPPeer {
		return &v1alpha1.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: "tor"}, Spec: v1alpha1.BGPPeerSpec{PeerIP: "198.18.0.201", ASNumber: 65100}}
	}
	full := base()
	full.Spec.SourceAddress = "198.18.0.11"
	full.Spec.EBGPMultihop = ptr[int32](3)
	full.Spec.Password = &v1alpha1.SecretKeySelector{Namespace: "kube-system", Name: "bgp", Key: "pw"}
	full.Spec.HoldTime = &metav1.Duration{Duration: 9 * time.Second}
	full.Spec.KeepaliveTime = &metav1.Duration{Duration: 3 * time.Second}
	full.Spec.GracefulRestart = &v1alpha1.GracefulRestart{RestartTime: &metav1.Duration{Duration: 30 * time.Second}}
	full.Spec.Passive = true
	full.Spec.MaxPrefixes = &v1alpha1.MaxPrefixes{Limit: 100, Action: v1alpha1.MaxPrefixDrop}
	ps, err := PeerSpecFrom(full, secrets)
	if err != nil {
		t.Fatal(err)
	}
	want := bgp.Peer{
		Name: "bgppeer/tor", Address: netip.MustParseAddr("198.18.0.201"), ASN: 65100, Passive: true,
		LocalAddress: netip.MustParseAddr("198.18.0.11"), EBGPMultihopTTL: 3, Password: "s3cret",
		HoldTime: 9 * time.Second, KeepaliveTime: 3 * time.Second,
		GracefulRestart: &bgp.GracefulRestart{Enabled: true, RestartTime: 30 * time.Second},
		MaxPrefixes:     100, MaxPrefixAction: bgp.MaxPrefixDrop,
	}
	got := ps.Peer
	if *got.GracefulRestart != *want.GracefulRestart {
		t.Errorf("graceful restart = %+v", got.GracefulRestart)
	}
	got.GracefulRestart, want.GracefulRestart = nil, nil
	if got != want {
		t.Errorf("peer = %+v\nwant %+v", got, want)
	}
	if ps, _ := PeerSpecFrom(base(), nil); ps.Peer.GracefulRestart == nil || !ps.Peer.GracefulRestart.Enabled || ps.Peer.GracefulRestart.RestartTime != 120*time.Second {
		t.Errorf("default graceful restart = %+v, want on with 120s", ps.Peer.GracefulRestart)
	}

	bad := []struct {
		name   string
		mutate func(*v1alpha1.BGPPeer)
		reason string
	}{
		{"missing secret", func(p *v1alpha1.BGPPeer) {
			p.Spec.Password = &v1alpha1.SecretKeySelector{Namespace: "x", Name: "nope", Key: "pw"}
		}, ReasonSecretNotFound},
		{"missing key", func(p *v1alpha1.BGPPeer) {
			p.Spec.Password = &v1alpha1.SecretKeySelector{Namespace: "kube-system", Name: "bgp", Key: "other"}
		}, ReasonSecretKeyNotFound},
		{"bad selector", func(p *v1alpha1.BGPPeer) {
			p.Spec.NodeSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "rack", Operator: "Near"}}}
		}, ReasonInvalid},
		{"AS_TRANS", func(p *v1alpha1.BGPPeer) { p.Spec.ASNumber = 23456 }, ReasonInvalid},
		{"IPv6", func(p *v1alpha1.BGPPeer) { p.Spec.PeerIP = "fd00::1" }, ReasonInvalid},
	}
	for _, tc := range bad {
		p := base()
		tc.mutate(p)
		_, err := PeerSpecFrom(p, secrets)
		oe, ok := IsObjectError(err)
		if !ok || oe.Reason != tc.reason {
			t.Errorf("%s: err = %v, want reason %s", tc.name, err, tc.reason)
		}
	}
	if refs := SecretRefs(full); len(refs) != 1 || refs[0] != (types.NamespacedName{Namespace: "kube-system", Name: "bgp"}) {
		t.Errorf("SecretRefs = %v", refs)
	}
}

func TestSettingsFrom(t *testing.T) {
	nodes := testNodes()
	cfg := func(mut func(*v1alpha1.BGPConfigurationSpec)) *v1alpha1.BGPConfiguration {
		c := &v1alpha1.BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
		mut(&c.Spec)
		return c
	}
	s, err := SettingsFrom(cfg(func(s *v1alpha1.BGPConfigurationSpec) {
		s.ASNumber = 65000
		s.NodeToNodeMesh = ptr(false)
		s.RouteReflectorClusterID = "1.2.3.4"
		s.AcceptedPrefixes = []v1alpha1.CIDR{"10.244.0.0/16"}
	}), nodes, 64512)
	if err != nil || s.ASN != 65000 || s.NodeToNodeMesh || s.ClusterID != netip.MustParseAddr("1.2.3.4") || len(s.AcceptedPrefixes) != 1 {
		t.Errorf("SettingsFrom = %+v, %v", s, err)
	}
	s, err = SettingsFrom(cfg(func(s *v1alpha1.BGPConfigurationSpec) {
		s.Communities = []v1alpha1.Community{"65000:200", "64512:1:2", "65000:100"}
		s.LocalPreference = ptr[int64](0)
	}), nodes, 64512)
	wantComms := []bgp.Community{{A: 65000, B: 100}, {A: 65000, B: 200}, {Large: true, A: 64512, B: 1, C: 2}}
	if err != nil || !slices.Equal(s.Communities, wantComms) || s.LocalPref == nil || *s.LocalPref != 0 {
		t.Errorf("SettingsFrom with communities = %+v, %v", s, err)
	}
	if s, err := SettingsFrom(nil, nodes, 64512); err != nil || s.ASN != 64512 || !s.NodeToNodeMesh || s.Communities != nil || s.LocalPref != nil {
		t.Errorf("SettingsFrom(nil) = %+v, %v", s, err)
	}
	for name, c := range map[string]*v1alpha1.BGPConfiguration{
		"default route": cfg(func(s *v1alpha1.BGPConfigurationSpec) { s.AcceptedPrefixes = []v1alpha1.CIDR{"0.0.0.0/0"} }),
		"covers a node": cfg(func(s *v1alpha1.BGPConfigurationSpec) { s.AcceptedPrefixes = []v1alpha1.CIDR{"198.18.0.0/16"} }),
		"reserved ASN":  cfg(func(s *v1alpha1.BGPConfigurationSpec) { s.ASNumber = 23456 }),
		"wrong name":    {ObjectMeta: metav1.ObjectMeta{Name: "other"}},
		// What the schema refuses, should an object get past it.
		"community half above 16 bits": cfg(func(s *v1alpha1.BGPConfigurationSpec) { s.Communities = []v1alpha1.Community{"65536:1"} }),
		"community not numeric":        cfg(func(s *v1alpha1.BGPConfigurationSpec) { s.Communities = []v1alpha1.Community{"no-export"} }),
		"large community part":         cfg(func(s *v1alpha1.BGPConfigurationSpec) { s.Communities = []v1alpha1.Community{"1:2:4294967296"} }),
		"negative local preference":    cfg(func(s *v1alpha1.BGPConfigurationSpec) { s.LocalPreference = ptr[int64](-1) }),
		"local preference above 2^32":  cfg(func(s *v1alpha1.BGPConfigurationSpec) { s.LocalPreference = ptr[int64](1 << 32) }),
	} {
		if _, err := SettingsFrom(c, nodes, 64512); err == nil {
			t.Errorf("%s: accepted", name)
		} else if _, ok := IsObjectError(err); !ok {
			t.Errorf("%s: error %v is not an ObjectError", name, err)
		}
	}
}

func TestWithAttributes(t *testing.T) {
	ads := []bgp.Advertisement{
		{Prefix: netip.MustParsePrefix("10.244.1.0/24"), NextHop: netip.MustParseAddr("198.18.0.11")},
		{Prefix: netip.MustParsePrefix("10.96.0.0/12"), NextHop: netip.MustParseAddr("198.18.0.11"), Communities: []bgp.Community{{A: 9, B: 9}}},
	}
	lp := uint32(150)
	s := Settings{Communities: []bgp.Community{{A: 65000, B: 100}}, LocalPref: &lp}
	got := s.WithAttributes(ads)
	for _, a := range got {
		if !slices.Equal(a.Communities, s.Communities) || a.LocalPref == nil || *a.LocalPref != 150 {
			t.Errorf("%s: communities %v local pref %v", a.Prefix, a.Communities, a.LocalPref)
		}
	}
	// The result shares nothing with the settings.
	got[0].Communities[0] = bgp.Community{A: 1, B: 1}
	*got[0].LocalPref = 1
	if s.Communities[0] != (bgp.Community{A: 65000, B: 100}) || lp != 150 {
		t.Error("WithAttributes aliases the settings")
	}
	// Default settings: no attributes, whatever the input carried.
	for _, a := range DefaultSettings(64512).WithAttributes(ads) {
		if a.Communities != nil || a.LocalPref != nil {
			t.Errorf("%s: default settings left %v / %v", a.Prefix, a.Communities, a.LocalPref)
		}
	}
}
