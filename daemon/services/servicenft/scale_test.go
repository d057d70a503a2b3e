package servicenft

import (
	"fmt"
	"testing"
	"time"

	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/services"
)

// scaleSnapshot is n ClusterIP Services with eps endpoints each.
func scaleSnapshot(n, eps int) services.Snapshot {
	s := services.Snapshot{Config: services.DefaultConfig(), Node: testNode()}
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		s.Services = append(s.Services, svc("scale", name, fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)))
		var es []ep
		for j := range eps {
			k := i*eps + j
			es = append(es, ep{addr: fmt.Sprintf("10.%d.%d.%d", 128+k>>16, k>>8&0xff, k&0xff), node: "node-b"})
		}
		s.EndpointSlices = append(s.EndpointSlices, v4slice("scale", name, name+"-1", 8080, es...))
	}
	return s
}

// TestScaleOneEndpointChange: at 10k Services × 10 endpoints the number of
// sets and maps is the fixed layout's, and one endpoint change plans a
// handful of element operations on that Service's objects only, none
// with a goto.
func TestScaleOneEndpointChange(t *testing.T) {
	if testing.Short() {
		t.Skip("10k Services")
	}
	const n, eps = 10000, 10
	snap := scaleSnapshot(n, eps)
	m1, _ := services.Desired(snap)
	start := time.Now()
	t1 := Render(m1, DefaultConfig())
	renderTime := time.Since(start)

	wantEq(t, "sets", len(t1.Sets), 5)
	wantEq(t, "maps", len(t1.Maps), 2+EndpointShards)
	wantEq(t, "chains", len(t1.Chains), 7+n)
	full := nft.Full(t1, false)

	// Service 4711's last endpoint moves to a new address (same bucket).
	sl := snap.EndpointSlices[4711].DeepCopy()
	old := sl.Endpoints[eps-1].Addresses[0]
	sl.Endpoints[eps-1].Addresses = []string{"10.250.0.1"}
	snap.EndpointSlices[4711] = sl
	m2, _ := services.Desired(snap)
	start = time.Now()
	t2 := Render(m2, DefaultConfig())
	render2 := time.Since(start)
	start = time.Now()
	tx := nft.Plan(t1, t2)
	planTime := time.Since(start)

	onlyService(t, m2, tx, "scale/svc-4711:", "10.250.0.1 . 10.250.0.1", old+" . "+old)
	noGoto(t, tx)
	// The bucket's element replaced (2), the hairpin pairs of the old and
	// new addresses (2): no chain.
	if ops, want := tx.Ops(), 4; ops != want {
		t.Errorf("one endpoint change: %d ops, want %d:\n%s", ops, want, tx)
	}
	t.Logf("10k Services × 10 endpoints: full table %d ops; render %v, re-render %v, plan %v; one endpoint change %d ops:\n%s",
		full.Ops(), renderTime, render2, planTime, tx.Ops(), tx)
}
