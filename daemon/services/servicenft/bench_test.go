package servicenft

import (
	"fmt"
	"testing"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/services"
)

// BenchmarkEndpointChange is the userspace half of one endpoint change at
// n Services × 10 endpoints: compute the model, render the table and plan
// against the previous one, as each dataplane sync does.
func BenchmarkEndpointChange(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			snap := scaleSnapshot(n, 10)
			m, _ := services.Desired(snap)
			prev := Render(m, DefaultConfig())
			b.ResetTimer()
			for i := range b.N {
				sl := snap.EndpointSlices[n/2].DeepCopy()
				sl.Endpoints[9].Addresses = []string{fmt.Sprintf("10.250.%d.%d", i>>8&0xff, i&0xff)}
				snap.EndpointSlices[n/2] = sl
				m, _ := services.Desired(snap)
				next := Render(m, DefaultConfig())
				if tx := nft.Plan(prev, next); tx.Empty() {
					b.Fatal("no change planned")
				}
				prev = next
			}
		})
	}
}
