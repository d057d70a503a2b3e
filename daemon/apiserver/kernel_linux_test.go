package apiserver

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"github.com/containernetworking/plugins/pkg/testutils"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
	"github.com/meridian-net/meridian/daemon/apiserver/apitest"
	"github.com/meridian-net/meridian/daemon/nft"
	nftkernel "github.com/meridian-net/meridian/daemon/nft/kernel"
	"github.com/meridian-net/meridian/policy/policynft"
)

// The policy view reads the counters the way meridiand wires it: a
// kernel.Conn dumping table inet meridian, here programmed with the
// fixture's policy in a throw-away network namespace. Chain names and rule
// comments must survive the kernel round trip for the pods to get their
// counters.
func TestListPoliciesKernelCounters(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace and nftables")
	}
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() {
		_ = n.Close()
		_ = testutils.UnmountNS(n)
	})
	log := slog.New(slog.DiscardHandler)
	st := apitest.Status()
	if _, err := nft.NewSyncer(nftkernel.New(int(n.Fd()), log), log).Sync(policynft.Render(st.Policy)); err != nil {
		t.Fatalf("program the policy table: %v", err)
	}
	src := testSources()
	src.Dataplane = apitest.Dataplane{St: st}
	src.Counters = nftkernel.New(int(n.Fd()), log)
	_, conn := start(t, src)
	stream, err := meridianv1.NewMeridianClient(conn).ListPolicies(context.Background(), &meridianv1.ListPoliciesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := recv(t, stream)
	if err != nil {
		t.Fatal(err)
	}
	counted := map[string]bool{}
	for _, m := range msgs {
		p := m.GetPod()
		for dir, d := range map[string]*meridianv1.PolicyDirection{"ingress": p.GetIngress(), "egress": p.GetEgress()} {
			if cs := d.GetCounters(); cs != nil {
				counted[p.GetNamespace()+"/"+p.GetName()+" "+dir] = true
				if cs.GetDroppedPackets() != 0 || cs.GetFailedClosed() {
					t.Errorf("%s/%s %s: %v; want zero drops in a namespace no packet crossed", p.GetNamespace(), p.GetName(), dir, cs)
				}
			}
		}
	}
	want := map[string]bool{"default/locked egress": true, "default/web-1 ingress": true}
	if len(counted) != len(want) || !counted["default/locked egress"] || !counted["default/web-1 ingress"] {
		t.Errorf("directions with kernel counters: %v; want %v", counted, want)
	}
}
