package cluster

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meridian-net/meridian/bgp"
)

func node(name, ip string, cidrs []string, ann map[string]string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	n.Spec.PodCIDRs = cidrs
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeHostName, Address: name},
			{Type: corev1.NodeInternalIP, Address: ip},
		}
	}
	return n
}

func TestFromNode(t *testing.T) {
	tests := []struct {
		name    string
		node    *corev1.Node
		want    NodeInfo
		wantErr []error
		errText string
	}{
		{
			name: "complete",
			node: node("n1", "198.18.0.11", []string{"10.244.1.0/24"}, nil),
			want: NodeInfo{Name: "n1", InternalIP: netip.MustParseAddr("198.18.0.11"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}},
		},
		{
			name: "dual stack keeps IPv4 only",
			node: node("n1", "198.18.0.11", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, nil),
			want: NodeInfo{Name: "n1", InternalIP: netip.MustParseAddr("198.18.0.11"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}},
		},
		{
			name: "legacy podCIDR only",
			node: func() *corev1.Node {
				n := node("n1", "198.18.0.11", nil, nil)
				n.Spec.PodCIDR = "10.244.3.0/24"
				return n
			}(),
			want: NodeInfo{Name: "n1", InternalIP: netip.MustParseAddr("198.18.0.11"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}},
		},
		{
			name:    "no pod CIDR yet",
			node:    node("n1", "198.18.0.11", nil, nil),
			want:    NodeInfo{Name: "n1", InternalIP: netip.MustParseAddr("198.18.0.11")},
			wantErr: []error{ErrNoPodCIDR},
		},
		{
			name:    "no address",
			node:    node("n1", "", []string{"10.244.1.0/24"}, nil),
			want:    NodeInfo{Name: "n1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}},
			wantErr: []error{ErrNoInternalIP},
		},
		{
			name:    "garbage CIDR",
			node:    node("n1", "198.18.0.11", []string{"10.244.1.0/33"}, nil),
			want:    NodeInfo{Name: "n1", InternalIP: netip.MustParseAddr("198.18.0.11")},
			wantErr: []error{ErrNoPodCIDR},
			errText: `pod CIDR "10.244.1.0/33"`,
		},
		{
			name: "ASN annotation",
			node: node("n1", "198.18.0.11", []string{"10.244.1.0/24"}, map[string]string{ASNAnnotation: "65001"}),
			want: NodeInfo{Name: "n1", InternalIP: netip.MustParseAddr("198.18.0.11"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, ASN: 65001},
		},
		{
			name:    "bad ASN annotation",
			node:    node("n1", "198.18.0.11", []string{"10.244.1.0/24"}, map[string]string{ASNAnnotation: "23456"}),
			want:    NodeInfo{Name: "n1", InternalIP: netip.MustParseAddr("198.18.0.11"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}},
			errText: "AS_TRANS",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FromNode(tc.node)
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("FromNode() mismatch (-want +got):\n%s", diff)
			}
			for _, want := range tc.wantErr {
				if !errors.Is(err, want) {
					t.Errorf("error %v does not wrap %v", err, want)
				}
			}
			if tc.errText != "" && (err == nil || !strings.Contains(err.Error(), tc.errText)) {
				t.Errorf("error %v does not mention %q", err, tc.errText)
			}
			if len(tc.wantErr) == 0 && tc.errText == "" && err != nil {
				t.Errorf("unexpected error %v", err)
			}
		})
	}
}

func TestParseASN(t *testing.T) {
	tests := []struct {
		in      string
		want    uint32
		wantErr bool
	}{
		{"64512", 64512, false},
		{" 65001 ", 65001, false},
		{"4200000000", 4200000000, false},
		{"1.10", 65546, false},
		{"0", 0, true},
		{"23456", 0, true},
		{"4294967295", 0, true},
		{"4294967296", 0, true},
		{"-1", 0, true},
		{"abc", 0, true},
		{"1.70000", 0, true},
		{"", 0, true},
	}
	for _, tc := range tests {
		got, err := ParseASN(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseASN(%q) = %d, %v; want %d, err=%v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestPeersAndAdvertisements(t *testing.T) {
	self := NodeInfo{Name: "n1", InternalIP: netip.MustParseAddr("198.18.0.11"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}
	nodes := []NodeInfo{
		self,
		{Name: "n3", InternalIP: netip.MustParseAddr("198.18.0.13"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}, ASN: 65003},
		{Name: "n2", InternalIP: netip.MustParseAddr("198.18.0.12")},
		{Name: "noaddr", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.9.0/24")}},
	}
	wantPeers := []bgp.Peer{
		{Name: "n2", Address: netip.MustParseAddr("198.18.0.12"), ASN: 64512},
		{Name: "n3", Address: netip.MustParseAddr("198.18.0.13"), ASN: 65003},
	}
	// From n2's side, n1 (lower address) dials and n3 is dialled.
	n2 := nodes[2]
	if got := Peers(n2, nodes, 64512); len(got) != 2 || !got[0].Passive || got[1].Passive {
		t.Errorf("Peers(n2) = %+v: want passive towards the lower address only", got)
	}
	if diff := cmp.Diff(wantPeers, Peers(self, nodes, 64512), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("Peers mismatch (-want +got):\n%s", diff)
	}
	ads := Advertisements(self)
	if len(ads) != 1 || ads[0].Prefix != self.PodCIDRs[0] || ads[0].NextHop != self.InternalIP {
		t.Errorf("Advertisements = %v", ads)
	}
	if got := Advertisements(NodeInfo{Name: "x", PodCIDRs: self.PodCIDRs}); got != nil {
		t.Errorf("Advertisements without address = %v, want none", got)
	}
	remote := RemotePodCIDRs(self, nodes)
	want := []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("10.244.9.0/24")}
	if diff := cmp.Diff(want, remote, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("RemotePodCIDRs mismatch (-want +got):\n%s", diff)
	}
}

func TestNetworkAvailable(t *testing.T) {
	n := node("n1", "198.18.0.11", nil, nil)
	if NetworkAvailable(n) {
		t.Fatal("node without condition reported available")
	}
	var patch struct {
		Status corev1.NodeStatus `json:"status"`
	}
	if err := json.Unmarshal(NetworkAvailablePatch(time.Unix(1700000000, 0)), &patch); err != nil {
		t.Fatal(err)
	}
	n.Status.Conditions = patch.Status.Conditions
	if !NetworkAvailable(n) {
		t.Fatalf("node with patched conditions %v not available", n.Status.Conditions)
	}
	n.Status.Conditions[0].Reason = "RouteCreated"
	if NetworkAvailable(n) {
		t.Fatal("condition set by someone else counted as Meridian's")
	}
}
