package services

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// TestCompilerMatchesDesired: one Compiler fed a sequence of snapshots that
// share unchanged objects (as informer listers hand them out) returns what a
// fresh Desired returns at every step, through endpoint changes, frontend
// conflicts won and lost, node address changes and config changes.
func TestCompilerMatchesDesired(t *testing.T) {
	a := svc("default", "a", "10.96.0.10")
	b := svc("default", "b", "10.96.0.11")
	// c wants a's ClusterIP: it loses while a exists.
	c := svc("default", "c", "10.96.0.10")
	np := svc("default", "np", "10.96.0.12", nodePortType(30080))
	sa := v4slice("default", "a", "a-1", 8080, ep{addr: "10.244.1.1", node: thisNode}, ep{addr: "10.244.2.1", node: "other"})
	sb := v4slice("default", "b", "b-1", 8080, ep{addr: "10.244.1.2", node: thisNode})
	sc := v4slice("default", "c", "c-1", 8080, ep{addr: "10.244.1.3", node: thisNode})
	snp := v4slice("default", "np", "np-1", 8080, ep{addr: "10.244.3.1", node: "other"})
	base := Snapshot{
		Services:       []*corev1.Service{a, b, c, np},
		EndpointSlices: []*discoveryv1.EndpointSlice{sa, sb, sc, snp},
		Node:           testNode(),
		Config:         DefaultConfig(),
	}
	steps := []struct {
		name   string
		change func(s *Snapshot)
	}{
		{"first", func(*Snapshot) {}},
		{"same objects", func(*Snapshot) {}},
		{"endpoint of b replaced", func(s *Snapshot) {
			s.EndpointSlices[1] = v4slice("default", "b", "b-1", 8080, ep{addr: "10.244.1.9", node: thisNode})
		}},
		{"a deleted: c wins its ClusterIP", func(s *Snapshot) {
			s.Services = []*corev1.Service{b, c, np}
		}},
		{"a back: c loses again", func(s *Snapshot) {
			s.Services = []*corev1.Service{a, b, c, np}
		}},
		{"a second slice for a", func(s *Snapshot) {
			s.EndpointSlices = append(s.EndpointSlices, v4slice("default", "a", "a-2", 8080, ep{addr: "10.244.1.4", node: thisNode}))
		}},
		{"node address changed", func(s *Snapshot) {
			s.Node.Addresses = []netip.Addr{netip.MustParseAddr("192.168.1.20")}
		}},
		{"nodePortAddresses narrowed", func(s *Snapshot) {
			s.Config.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		}},
		{"b gets a new object with a second port", func(s *Snapshot) {
			b2 := b.DeepCopy()
			b2.Spec.Ports = append(b2.Spec.Ports, sport("dns", corev1.ProtocolUDP, 53, 0))
			s.Services = []*corev1.Service{a, b2, c, np}
		}},
		{"everything gone", func(s *Snapshot) { s.Services, s.EndpointSlices = nil, nil }},
		{"everything back", func(s *Snapshot) { *s = base }},
	}
	cc := NewCompiler()
	var prev *Model
	snap := base
	snap.EndpointSlices = append([]*discoveryv1.EndpointSlice(nil), base.EndpointSlices...)
	for _, st := range steps {
		st.change(&snap)
		got, gotPs := cc.Desired(snap)
		want, wantPs := Desired(snap)
		if got.String() != want.String() {
			t.Fatalf("%s: model differs:\n%s\nwant:\n%s", st.name, got, want)
		}
		if !reflect.DeepEqual(gotPs, wantPs) {
			t.Fatalf("%s: problems differ:\n%v\nwant:\n%v", st.name, gotPs, wantPs)
		}
		if st.name == "same objects" {
			// Reused, not recompiled: the ports are the same memory.
			for i := range got.Services {
				if &got.Services[i].Ports[0] != &prev.Services[i].Ports[0] {
					t.Errorf("same objects: %s compiled again", got.Services[i].Name)
				}
			}
		}
		prev = got
	}
	// a, b and np; c lost its ClusterIP to a and is never remembered.
	if n := len(cc.entries); n != 3 {
		t.Errorf("memo holds %d Services after the last step, want 3", n)
	}
}
