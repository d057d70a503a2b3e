package servicenft

import (
	"fmt"
	"testing"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/services"
)

// BenchmarkEndpointChange is the userspace half of one endpoint change at
// n Services × 10 endpoints: compute the model, render the table and plan
// against the previous one, with the memory meridiand's sync loop keeps.
func BenchmarkEndpointChange(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			snap := scaleSnapshot(n, 10)
			cc := services.NewCompiler()
			m, _ := cc.Desired(snap)
			r := NewRenderer(DefaultConfig())
			prev := r.Render(m)
			b.ResetTimer()
			for i := range b.N {
				sl := snap.EndpointSlices[n/2].DeepCopy()
				sl.Endpoints[9].Addresses = []string{fmt.Sprintf("10.250.%d.%d", i>>8&0xff, i&0xff)}
				snap.EndpointSlices[n/2] = sl
				m, _ := cc.Desired(snap)
				next := r.Render(m)
				if tx := nft.Plan(prev, next); tx.Empty() {
					b.Fatal("no change planned")
				}
				prev = next
			}
		})
	}
}

// TestRendererMatchesRender: a Renderer reused across changes (endpoints
// replaced, moved, added and removed, Services going away and coming
// back, hairpin addresses shared between Services) renders exactly what a
// fresh Render does, and plans the same transaction from the last table.
func TestRendererMatchesRender(t *testing.T) {
	snap := scaleSnapshot(50, 4)
	steps := []struct {
		name   string
		change func(s *services.Snapshot)
	}{
		{"unchanged", func(*services.Snapshot) {}},
		{"endpoint replaced", func(s *services.Snapshot) {
			sl := s.EndpointSlices[7].DeepCopy()
			sl.Endpoints[3].Addresses = []string{"10.250.0.1"}
			s.EndpointSlices[7] = sl
		}},
		{"address shared by two Services", func(s *services.Snapshot) {
			sl := s.EndpointSlices[8].DeepCopy()
			sl.Endpoints[0].Addresses = []string{"10.250.0.1"}
			s.EndpointSlices[8] = sl
		}},
		{"endpoint removed", func(s *services.Snapshot) {
			sl := s.EndpointSlices[7].DeepCopy()
			sl.Endpoints = sl.Endpoints[:2]
			s.EndpointSlices[7] = sl
		}},
		{"Services removed", func(s *services.Snapshot) {
			s.Services = s.Services[:40]
			s.EndpointSlices = s.EndpointSlices[:40]
		}},
		{"Services back", func(s *services.Snapshot) { *s = scaleSnapshot(50, 4) }},
		{"all endpoints gone", func(s *services.Snapshot) { s.EndpointSlices = nil }},
		{"all back", func(s *services.Snapshot) { *s = scaleSnapshot(50, 4) }},
	}
	r := NewRenderer(DefaultConfig())
	var prev nft.Table
	for _, st := range steps {
		st.change(&snap)
		m, _ := services.Desired(snap)
		got, want := r.Render(m), Render(m, DefaultConfig())
		if got.String() != want.String() {
			t.Fatalf("%s: Renderer and Render differ:\n%s\nwant:\n%s", st.name, got, want)
		}
		if a, b := nft.Plan(prev, got).String(), nft.Plan(prev, want).String(); a != b {
			t.Fatalf("%s: plans differ:\n%s\nwant:\n%s", st.name, a, b)
		}
		prev = got
	}
}
