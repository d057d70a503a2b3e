package apiserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
	"github.com/meridian-net/meridian/daemon/apiserver/apitest"
	"github.com/meridian-net/meridian/daemon/dataplane"
	"github.com/meridian-net/meridian/daemon/nft"
	"github.com/meridian-net/meridian/daemon/routes"
)

func dataplaneSources() Sources {
	src := testSources()
	st := apitest.Status()
	src.Dataplane = apitest.Dataplane{St: st}
	src.Counters = apitest.CountersFor(st.Policy, map[string]uint64{"default/locked egress": 7, "default/web-1 ingress": 3}, 2)
	return src
}

func recv[T any](t *testing.T, stream interface{ Recv() (*T, error) }) ([]*T, error) {
	t.Helper()
	var out []*T
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

func TestListServices(t *testing.T) {
	_, conn := start(t, dataplaneSources())
	c := meridianv1.NewMeridianClient(conn)
	for _, tc := range []struct {
		name string
		req  *meridianv1.ListServicesRequest
		want []string
	}{{
		name: "all",
		req:  &meridianv1.ListServicesRequest{},
		want: []string{
			"default/empty 80/TCP clusterIP 10.96.0.30:80 masq=offCluster -> cluster reject(noEndpoints) []",
			"default/web 80/TCP clusterIP 10.96.0.20:80 masq=offCluster -> cluster dnat() [10.244.1.5:8080@node-a(local,ready) 10.244.2.7:8080@node-b(ready)]",
			"kube-system/kube-dns 53/UDP clusterIP 10.96.0.10:53 masq=offCluster -> cluster dnat() [10.244.2.9:53@node-b(ready)]",
			"kube-system/kube-dns 53/TCP clusterIP 10.96.0.10:53 masq=offCluster -> cluster dnat() [10.244.2.9:53@node-b(ready)]",
		},
	}, {
		name: "namespace",
		req:  &meridianv1.ListServicesRequest{Namespace: "kube-system"},
		want: []string{
			"kube-system/kube-dns 53/UDP clusterIP 10.96.0.10:53 masq=offCluster -> cluster dnat() [10.244.2.9:53@node-b(ready)]",
			"kube-system/kube-dns 53/TCP clusterIP 10.96.0.10:53 masq=offCluster -> cluster dnat() [10.244.2.9:53@node-b(ready)]",
		},
	}, {
		name: "name",
		req:  &meridianv1.ListServicesRequest{Namespace: "default", Name: "empty"},
		want: []string{"default/empty 80/TCP clusterIP 10.96.0.30:80 masq=offCluster -> cluster reject(noEndpoints) []"},
	}, {
		name: "no match",
		req:  &meridianv1.ListServicesRequest{Name: "nope"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := c.ListServices(context.Background(), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			msgs, err := recv(t, stream)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range msgs {
				s := m.GetService()
				for _, p := range s.GetPorts() {
					for _, f := range p.GetFrontends() {
						for _, tg := range p.GetTargets() {
							var eps []string
							for _, e := range tg.GetEndpoints() {
								flags := []string{}
								if e.GetLocal() {
									flags = append(flags, "local")
								}
								if e.GetReady() {
									flags = append(flags, "ready")
								}
								eps = append(eps, fmt.Sprintf("%s:%d@%s(%s)", e.GetAddress(), e.GetPort(), e.GetNode(), strings.Join(flags, ",")))
							}
							got = append(got, fmt.Sprintf("%s/%s %d/%s %s %s:%d masq=%s -> %s %s(%s) %v", s.GetNamespace(), s.GetName(), p.GetPort(), p.GetProtocol(),
								f.GetKind(), f.GetAddress(), f.GetPort(), f.GetMasquerade(), tg.GetScope(), tg.GetVerdict(), tg.GetReason(), eps))
						}
					}
				}
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("ListServices(%v):\n got %s\nwant %s", tc.req, strings.Join(got, "\n     "), strings.Join(tc.want, "\n     "))
			}
		})
	}
}

func TestListPolicies(t *testing.T) {
	_, conn := start(t, dataplaneSources())
	c := meridianv1.NewMeridianClient(conn)
	brief := func(p *meridianv1.PodPolicy) string {
		dir := func(name string, d *meridianv1.PolicyDirection) string {
			if !d.GetIsolated() {
				return name + ":open"
			}
			var rules []string
			for _, r := range d.GetRules() {
				rules = append(rules, fmt.Sprintf("%s#%d %s(%s) %v", r.GetPolicy(), r.GetIndex(), r.GetPeerKind(), r.GetPeer(), r.GetPorts()))
			}
			s := fmt.Sprintf("%s:%v rules=%v", name, d.GetPolicies(), rules)
			if cs := d.GetCounters(); cs != nil {
				s += fmt.Sprintf(" dropped=%d/%dB", cs.GetDroppedPackets(), cs.GetDroppedBytes())
				for _, h := range cs.GetAllowed() {
					s += fmt.Sprintf(" hit(%s#%d)=%d", h.GetPolicy(), h.GetIndex(), h.GetPackets())
				}
			}
			return s
		}
		return fmt.Sprintf("%s/%s %v %s %s", p.GetNamespace(), p.GetName(), p.GetIps(), dir("in", p.GetIngress()), dir("out", p.GetEgress()))
	}
	for _, tc := range []struct {
		name string
		req  *meridianv1.ListPoliciesRequest
		want []string
	}{{
		name: "all",
		req:  &meridianv1.ListPoliciesRequest{},
		want: []string{
			"default/client [10.244.1.6] in:open out:open",
			"default/locked [10.244.1.7] in:open out:[default/deny-egress] rules=[] dropped=7/700B",
			"default/web-1 [10.244.1.5] in:[default/web-allow-client] rules=[default/web-allow-client#0 selector(ns=default pod=app=client) [TCP/8080]] dropped=3/300B hit(default/web-allow-client#0)=2 out:open",
		},
	}, {
		name: "one pod",
		req:  &meridianv1.ListPoliciesRequest{Namespace: "default", Pod: "locked"},
		want: []string{"default/locked [10.244.1.7] in:open out:[default/deny-egress] rules=[] dropped=7/700B"},
	}, {
		name: "other namespace",
		req:  &meridianv1.ListPoliciesRequest{Namespace: "kube-system"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := c.ListPolicies(context.Background(), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			msgs, err := recv(t, stream)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range msgs {
				got = append(got, brief(m.GetPod()))
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("ListPolicies(%v):\n got %s\nwant %s", tc.req, strings.Join(got, "\n     "), strings.Join(tc.want, "\n     "))
			}
		})
	}
}

type failingCounters struct{}

func (failingCounters) Counters() ([]nft.RuleCounter, error) {
	return nil, errors.New("netlink: permission denied")
}

// Without counters the view still answers, with counters unset rather
// than zero: zero would claim nothing was dropped.
func TestListPoliciesWithoutCounters(t *testing.T) {
	for name, c := range map[string]Counters{"nil": nil, "failing": failingCounters{}} {
		t.Run(name, func(t *testing.T) {
			src := dataplaneSources()
			src.Counters = c
			_, conn := start(t, src)
			stream, err := meridianv1.NewMeridianClient(conn).ListPolicies(context.Background(), &meridianv1.ListPoliciesRequest{Pod: "locked"})
			if err != nil {
				t.Fatal(err)
			}
			msgs, err := recv(t, stream)
			if err != nil || len(msgs) != 1 {
				t.Fatalf("ListPolicies = %d rows, %v; want the one pod", len(msgs), err)
			}
			if eg := msgs[0].GetPod().GetEgress(); !eg.GetIsolated() || eg.GetCounters() != nil {
				t.Errorf("egress = %v; want isolated without counters", eg)
			}
		})
	}
}

func TestEvaluate(t *testing.T) {
	_, conn := start(t, dataplaneSources())
	c := meridianv1.NewMeridianClient(conn)
	verdict := func(d *meridianv1.DirectionVerdict) string {
		if d == nil {
			return "-"
		}
		var rules []string
		for _, r := range d.GetRules() {
			rules = append(rules, fmt.Sprintf("%s#%d", r.GetPolicy(), r.GetIndex()))
		}
		return fmt.Sprintf("%s %t %s rules=%v policies=%v", d.GetPod(), d.GetAllowed(), d.GetReason(), rules, d.GetPolicies())
	}
	for _, tc := range []struct {
		name                 string
		req                  *meridianv1.EvaluateRequest
		allowed              bool
		egress, ingress, svc string
	}{{
		name:    "client to web on the allowed port",
		req:     &meridianv1.EvaluateRequest{Source: "10.244.1.6", Destination: "10.244.1.5", Protocol: "TCP", Port: 8080},
		allowed: true,
		egress:  "default/client true notIsolated rules=[] policies=[]",
		ingress: "default/web-1 true allowedByRule rules=[default/web-allow-client#0] policies=[]",
	}, {
		name:    "client to web on another port",
		req:     &meridianv1.EvaluateRequest{Source: "10.244.1.6", Destination: "10.244.1.5", Protocol: "tcp", Port: 9090},
		egress:  "default/client true notIsolated rules=[] policies=[]",
		ingress: "default/web-1 false defaultDeny rules=[] policies=[default/web-allow-client]",
	}, {
		name:    "locked pod to DNS on another node: egress only",
		req:     &meridianv1.EvaluateRequest{Source: "10.244.1.7", Destination: "10.244.2.9", Protocol: "UDP", Port: 53},
		egress:  "default/locked false defaultDeny rules=[] policies=[default/deny-egress]",
		ingress: "-",
	}, {
		name:    "remote pod to remote pod is not this node's to judge",
		req:     &meridianv1.EvaluateRequest{Source: "10.244.2.7", Destination: "10.244.2.9", Protocol: "ICMP"},
		allowed: true, egress: "-", ingress: "-",
	}, {
		name:    "ClusterIP destination is named",
		req:     &meridianv1.EvaluateRequest{Source: "10.244.1.6", Destination: "10.96.0.20", Protocol: "TCP", Port: 80},
		allowed: true,
		egress:  "default/client true notIsolated rules=[] policies=[]",
		ingress: "-",
		svc:     "default/web",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.Evaluate(context.Background(), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetAllowed() != tc.allowed || verdict(resp.GetEgress()) != tc.egress || verdict(resp.GetIngress()) != tc.ingress ||
				resp.GetServiceFrontend() != tc.svc || resp.GetNode() != apitest.Node {
				t.Errorf("Evaluate(%v) = allowed %t node %s svc %q\n egress  %s\n ingress %s\nwant allowed %t svc %q\n egress  %s\n ingress %s",
					tc.req, resp.GetAllowed(), resp.GetNode(), resp.GetServiceFrontend(), verdict(resp.GetEgress()), verdict(resp.GetIngress()),
					tc.allowed, tc.svc, tc.egress, tc.ingress)
			}
		})
	}
}

func TestEvaluateInvalidArgument(t *testing.T) {
	_, conn := start(t, dataplaneSources())
	c := meridianv1.NewMeridianClient(conn)
	for _, tc := range []struct {
		req  *meridianv1.EvaluateRequest
		want string
	}{
		{&meridianv1.EvaluateRequest{Destination: "10.0.0.1", Protocol: "TCP", Port: 80}, "source is required"},
		{&meridianv1.EvaluateRequest{Source: "10.0.0", Destination: "10.0.0.1", Protocol: "TCP", Port: 80}, `source "10.0.0" is not an IP address`},
		{&meridianv1.EvaluateRequest{Source: "10.0.0.1", Destination: "10.0.0.1/32", Protocol: "TCP", Port: 80}, `destination "10.0.0.1/32" is not an IP address`},
		{&meridianv1.EvaluateRequest{Source: "fe80::1%eth0", Destination: "fe80::2", Protocol: "TCP", Port: 80}, "zoned"},
		{&meridianv1.EvaluateRequest{Source: "10.0.0.1", Destination: "fd00::1", Protocol: "TCP", Port: 80}, "different IP families"},
		{&meridianv1.EvaluateRequest{Source: "10.0.0.1", Destination: "10.0.0.2", Protocol: "TCP"}, "port 0 out of range"},
		{&meridianv1.EvaluateRequest{Source: "10.0.0.1", Destination: "10.0.0.2", Protocol: "UDP", Port: 70000}, "port 70000 out of range"},
		{&meridianv1.EvaluateRequest{Source: "10.0.0.1", Destination: "10.0.0.2", Protocol: "ICMP", Port: 8}, "ICMP, which has no ports"},
		{&meridianv1.EvaluateRequest{Source: "10.0.0.1", Destination: "10.0.0.2", Protocol: "GRE", Port: 1}, `protocol "GRE" is not`},
		{&meridianv1.EvaluateRequest{Source: "10.0.0.1", Destination: "10.0.0.2", Port: 1}, "protocol is required"},
	} {
		_, err := c.Evaluate(context.Background(), tc.req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
			t.Errorf("Evaluate(%v) = %v; want InvalidArgument containing %q", tc.req, err, tc.want)
		}
	}
	// A bad contains filter is refused the same way.
	stream, err := c.ListRoutes(context.Background(), &meridianv1.ListRoutesRequest{Contains: "fd00::1"})
	if err == nil {
		_, err = recv(t, stream)
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "only IPv4") {
		t.Errorf("ListRoutes(contains=fd00::1) = %v; want InvalidArgument", err)
	}
}

// Before the first sync there is no model to answer from: Unavailable, so
// a client retries instead of reading an empty cluster.
func TestDataplaneNotSynced(t *testing.T) {
	for name, dp := range map[string]Dataplane{"no source": nil, "not synced": apitest.Dataplane{St: dataplane.Status{LastError: errors.New("nft: EPERM")}}} {
		t.Run(name, func(t *testing.T) {
			src := testSources()
			src.Dataplane = dp
			_, conn := start(t, src)
			c := meridianv1.NewMeridianClient(conn)
			stream, err := c.ListServices(context.Background(), &meridianv1.ListServicesRequest{})
			if err == nil {
				_, err = recv(t, stream)
			}
			if status.Code(err) != codes.Unavailable {
				t.Errorf("ListServices = %v; want Unavailable", err)
			}
			if _, err := c.Evaluate(context.Background(), &meridianv1.EvaluateRequest{Source: "10.0.0.1", Destination: "10.0.0.2", Protocol: "TCP", Port: 1}); status.Code(err) != codes.Unavailable {
				t.Errorf("Evaluate = %v; want Unavailable", err)
			}
			st, err := c.GetDataplaneStatus(context.Background(), &meridianv1.GetDataplaneStatusRequest{})
			switch {
			case dp == nil && status.Code(err) != codes.Unavailable:
				t.Errorf("GetDataplaneStatus without source = %v; want Unavailable", err)
			case dp != nil && (err != nil || st.GetSynced() || st.GetLastError() != "nft: EPERM"):
				t.Errorf("GetDataplaneStatus = %v, %v; want not synced with the last error", st, err)
			}
		})
	}
}

func TestGetDataplaneStatus(t *testing.T) {
	_, conn := start(t, dataplaneSources())
	st, err := meridianv1.NewMeridianClient(conn).GetDataplaneStatus(context.Background(), &meridianv1.GetDataplaneStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("synced=%t node=%s at=%s err=%q services=%d pods=%d cidrs=%v np=%v", st.GetSynced(), st.GetNode(), st.GetSyncedAt(), st.GetLastError(),
		st.GetServices(), st.GetPolicyPods(), st.GetClusterCidrs(), st.GetNodePortAddresses())
	want := `synced=true node=node-a at=2026-11-25T12:00:00Z err="" services=3 pods=3 cidrs=[10.244.0.0/16] np=[198.18.0.11]`
	if got != want {
		t.Errorf("status:\n got %s\nwant %s", got, want)
	}
	if ps := st.GetServiceProblems(); len(ps) != 1 || ps[0].GetSubject() != "default/empty" || ps[0].GetReason() != "noEndpoints" {
		t.Errorf("service problems = %v; want default/empty noEndpoints", ps)
	}
}

// mutableKernel is a kernel route table a test edits while a watch runs.
type mutableKernel struct {
	mu sync.Mutex
	rs []routes.Route
}

func (k *mutableKernel) Current() ([]routes.Route, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]routes.Route(nil), k.rs...), nil
}

func (k *mutableKernel) set(rs ...routes.Route) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.rs = rs
}

func TestWatchRoutes(t *testing.T) {
	k := &mutableKernel{}
	k.set(
		routes.Route{Dst: pfx("10.244.2.0/24"), NextHops: []netip.Addr{addr("198.18.0.12")}},
		routes.Route{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{addr("198.18.0.13")}},
		routes.Route{Dst: pfx("192.0.2.0/24"), NextHops: []netip.Addr{addr("198.18.0.13")}},
	)
	srv := New(Sources{Kernel: k}, nil)
	srv.WatchInterval = 10 * time.Millisecond
	srv.StopTimeout = time.Minute
	path := filepath.Join(t.TempDir(), "meridian.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, path) }()
	waitSocket(t, path, done)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	stream, err := meridianv1.NewMeridianClient(conn).WatchRoutes(wctx, &meridianv1.WatchRoutesRequest{Prefix: "10.244.0.0/16", Source: meridianv1.Route_SOURCE_KERNEL})
	if err != nil {
		t.Fatal(err)
	}
	next := func() string {
		t.Helper()
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if m.GetType() == meridianv1.WatchRoutesResponse_EVENT_TYPE_SYNCED {
			return "SYNCED"
		}
		return fmt.Sprintf("%s %s %v", m.GetType(), m.GetRoute().GetPrefix(), m.GetRoute().GetNextHops())
	}
	for _, want := range []string{
		"EVENT_TYPE_ADDED 10.244.2.0/24 [198.18.0.12]",
		"EVENT_TYPE_ADDED 10.244.3.0/24 [198.18.0.13]",
		"SYNCED",
	} {
		if got := next(); got != want {
			t.Fatalf("event %q; want %q", got, want)
		}
	}
	// 10.244.3.0/24 moves to another next hop, 10.244.2.0/24 goes away,
	// 10.244.4.0/24 appears; 192.0.2.0/24 is outside the filter.
	k.set(
		routes.Route{Dst: pfx("10.244.3.0/24"), NextHops: []netip.Addr{addr("198.18.0.14")}},
		routes.Route{Dst: pfx("10.244.4.0/24"), NextHops: []netip.Addr{addr("198.18.0.14")}},
		routes.Route{Dst: pfx("192.0.2.0/24")},
	)
	for _, want := range []string{
		"EVENT_TYPE_REMOVED 10.244.2.0/24 [198.18.0.12]",
		"EVENT_TYPE_REMOVED 10.244.3.0/24 [198.18.0.13]",
		"EVENT_TYPE_ADDED 10.244.3.0/24 [198.18.0.14]",
		"EVENT_TYPE_ADDED 10.244.4.0/24 [198.18.0.14]",
	} {
		if got := next(); got != want {
			t.Fatalf("event %q; want %q", got, want)
		}
	}
	// Stopping the server ends the watch at once rather than after
	// StopTimeout.
	start := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Serve took %v to stop with a watch open", d)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("watch after stop: %v; want Unavailable", err)
	}
}

func TestWatchRoutesInvalidFilter(t *testing.T) {
	_, conn := start(t, testSources())
	stream, err := meridianv1.NewMeridianClient(conn).WatchRoutes(context.Background(), &meridianv1.WatchRoutesRequest{Prefix: "10.244.1.1/16"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "did you mean 10.244.0.0/16") {
		t.Errorf("WatchRoutes(bad prefix) = %v; want InvalidArgument", err)
	}
}

func TestListRoutesContains(t *testing.T) {
	_, conn := start(t, testSources())
	got, err := listRoutes(t, conn, &meridianv1.ListRoutesRequest{Contains: "10.244.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, r := range got {
		lines = append(lines, brief(r))
	}
	want := []string{
		"SOURCE_KERNEL 10.244.2.0/24 KIND_BGP [198.18.0.12]",
		"SOURCE_RIB 10.244.2.0/24 KIND_BGP [198.18.0.12] peer=198.18.0.12 as=[] lp=100 best=true stale=false",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("contains 10.244.2.7:\n got %s\nwant %s", strings.Join(lines, "\n     "), strings.Join(want, "\n     "))
	}
}
