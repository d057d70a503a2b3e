package bench

import (
	"math"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	discoveryv1 "k8s.io/api/discovery/v1"
)

func TestParseSizes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
		err  bool
	}{
		{in: "1000,5000,10000", want: []int{1000, 5000, 10000}},
		{in: "10k, 1k,5k", want: []int{1000, 5000, 10000}},
		{in: "5000,1000,5000", want: []int{1000, 5000}},
		{in: "", want: nil},
		{in: "0", want: nil},
		{in: "1000,x", err: true},
		{in: "-5", err: true},
	} {
		got, err := ParseSizes(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("ParseSizes(%q) error %v, want error %v", tc.in, err, tc.err)
			continue
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("ParseSizes(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{
		{0.5, 50 * time.Millisecond},
		{0.99, 99 * time.Millisecond},
		{1, 100 * time.Millisecond},
		{0.001, 1 * time.Millisecond},
	} {
		if got := Percentile(d, tc.p); got != tc.want {
			t.Errorf("Percentile(1..100ms, %v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if d[0] != 100*time.Millisecond {
		t.Error("Percentile sorted its argument in place")
	}
	if got := Percentile(nil, 0.5); got != 0 {
		t.Errorf("Percentile(nil) = %v", got)
	}
	if got := Percentile([]time.Duration{7}, 0.99); got != 7 {
		t.Errorf("Percentile of one = %v", got)
	}
}

const kubeProxyMetrics = `# HELP kubeproxy_sync_full_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds for full resyncs
# TYPE kubeproxy_sync_full_proxy_rules_duration_seconds histogram
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.001"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} 1
kubeproxy_sync_full_proxy_rules_duration_seconds_sum{ip_family="IPv4"} 4.25
kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1
kubeproxy_sync_full_proxy_rules_duration_seconds_sum{ip_family="IPv6"} 0.25
kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv6"} 1
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"} 99
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 7
`

func TestHistogramSumCount(t *testing.T) {
	sum, count, ok := HistogramSumCount(kubeProxyMetrics, "kubeproxy_sync_full_proxy_rules_duration_seconds")
	if !ok || math.Abs(sum-4.5) > 1e-9 || count != 2 {
		t.Errorf("kube-proxy full sync: sum %v count %d ok %v, want 4.5 2 true", sum, count, ok)
	}
	sum, count, ok = HistogramSumCount("meridian_nftables_sync_duration_seconds_sum 1.5e-01 1700000000000\nmeridian_nftables_sync_duration_seconds_count 3\n", "meridian_nftables_sync_duration_seconds")
	if !ok || math.Abs(sum-0.15) > 1e-9 || count != 3 {
		t.Errorf("meridiand: sum %v count %d ok %v, want 0.15 3 true", sum, count, ok)
	}
	if _, _, ok := HistogramSumCount(kubeProxyMetrics, "meridian_nftables_sync_duration_seconds"); ok {
		t.Error("found a histogram that is not there")
	}
}

func TestParseVmHWM(t *testing.T) {
	status := "Name:\tkube-proxy\nVmPeak:\t 1300000 kB\nVmHWM:\t  250880 kB\nVmRSS:\t  120000 kB\n"
	got, err := ParseVmHWM(status)
	if err != nil || got != 250880*1024 {
		t.Errorf("ParseVmHWM = %d, %v; want %d", got, err, 250880*1024)
	}
	if _, err := ParseVmHWM("Name:\tkthreadd\n"); err == nil {
		t.Error("no error without a VmHWM line")
	}
	if _, err := ParseVmHWM("VmHWM:\t 12 MB\n"); err == nil {
		t.Error("no error for a unit other than kB")
	}
}

func TestChainNamesEndpoint(t *testing.T) {
	a := netip.MustParseAddr("10.244.248.1")
	for _, tc := range []struct {
		chain string
		want  bool
	}{
		{"endpoint-ABCDEFGH-meridian-bench-svc/bench-00009/tcp/http__10.244.248.1/8080", true},
		{"ep-0123abcd-10-244-248-1-8080", true},
		{"endpoint-ABCDEFGH-meridian-bench-svc/bench-00009/tcp/http__10.244.248.10/8080", false},
		{"ep-0123abcd-10-244-248-12-8080", false},
		{"endpoint-X-ns/svc/tcp/http__110.244.248.1/8080", false},
		{"service-ABCDEFGH-meridian-bench-svc/bench-00009/tcp/http", false},
	} {
		if got := ChainNamesEndpoint(tc.chain, a); got != tc.want {
			t.Errorf("ChainNamesEndpoint(%q, %s) = %v, want %v", tc.chain, a, got, tc.want)
		}
	}
}

func TestGeneratedObjects(t *testing.T) {
	const n = 10000
	real := map[netip.Addr]bool{}
	for j := range EndpointsPerService {
		real[realEndpoint(j)] = true
	}
	for _, i := range []int{0, 1, 9, 6143, 6144, n - 1} {
		addrs := EndpointAddrs(i)
		if len(addrs) != EndpointsPerService {
			t.Fatalf("Service %d: %d endpoints", i, len(addrs))
		}
		seen := map[netip.Addr]bool{}
		for _, a := range addrs {
			if seen[a] {
				t.Errorf("Service %d: %s twice", i, a)
			}
			seen[a] = true
			if !clusterCIDRContains(a) {
				t.Errorf("Service %d: endpoint %s outside 10.244.0.0/16", i, a)
			}
			if i != 0 && (real[a] || realEndpointNet.Contains(a) || clientNet.Contains(a)) {
				t.Errorf("Service %d: generated endpoint %s collides with the latency setup", i, a)
			}
			if i == 0 && !real[a] {
				t.Errorf("Service 0: endpoint %s is not a real listener", a)
			}
		}
		s := BenchSlice(i, addrs)
		if s.Labels[discoveryv1.LabelServiceName] != ServiceName(i) || s.Namespace != ServicesNamespace {
			t.Errorf("slice %s does not belong to %s", s.Name, ServiceName(i))
		}
		if s.Labels[discoveryv1.LabelManagedBy] == "endpointslice-controller.k8s.io" {
			t.Error("slice claims to be the EndpointSlice controller's")
		}
		if len(s.Endpoints) != EndpointsPerService || s.Endpoints[0].Conditions.Ready == nil || !*s.Endpoints[0].Conditions.Ready {
			t.Errorf("slice %s: endpoints not all ready", s.Name)
		}
		svc := BenchService(i)
		if svc.Spec.Selector != nil {
			t.Errorf("Service %d has a selector: the EndpointSlice controller would add its own slices", i)
		}
		if got, ok := ServiceIndex(svc.Name); !ok || got != i {
			t.Errorf("ServiceIndex(%q) = %d, %v", svc.Name, got, ok)
		}
	}
	if _, ok := ServiceIndex("kube-dns"); ok {
		t.Error("ServiceIndex accepted a name that is not a bench Service")
	}
	// Changed endpoints are fresh: unique and never generated.
	generated := map[netip.Addr]bool{}
	for i := 1; i < n; i++ {
		for _, a := range EndpointAddrs(i) {
			generated[a] = true
		}
	}
	changed := map[netip.Addr]bool{}
	for c := 1; c <= 200; c++ {
		a := ChangedAddr(c)
		if changed[a] || generated[a] || real[a] {
			t.Errorf("ChangedAddr(%d) = %s is not fresh", c, a)
		}
		changed[a] = true
	}
}

func clusterCIDRContains(a netip.Addr) bool {
	return netip.MustParsePrefix("10.244.0.0/16").Contains(a)
}

func TestServiceFigures(t *testing.T) {
	runs := []ServiceRun{
		{Proxy: "kube-proxy", Services: 10, FullSync: 1, EndpointChange: []float64{100, 300, 200}, PeakRSS: 50, ConnectMedian: 0.1, ConnectP99: 0.2},
		{Proxy: "meridiand", Services: 10, FullSync: 0.5, EndpointChange: []float64{50}, PeakRSS: 60, ConnectMedian: 0.1, ConnectP99: 0.2},
		{Proxy: "kube-proxy", Services: 1000, FullSync: 4, EndpointChange: []float64{400}, PeakRSS: 100, ChildPeakRSS: 80, ConnectMedian: 0.1, ConnectP99: 0.3},
		{Proxy: "meridiand", Services: 1000, FullSync: 1, EndpointChange: []float64{100}, PeakRSS: 50, ConnectMedian: 0.12, ConnectP99: 0.2},
	}
	figs := ServiceFigures(runs)
	find := func(name string) Figure {
		t.Helper()
		for _, f := range figs {
			if f.Name == name {
				return f
			}
		}
		t.Fatalf("no figure %q in %v", name, figs)
		return Figure{}
	}
	if f := find("full sync from start, 1000 Services (meridiand)"); f.Value != 1 || f.Baseline != 4 || f.Ratio != 0.25 {
		t.Errorf("full sync figure %+v", f)
	}
	if f := find("one endpoint change, median, 10 Services (meridiand)"); f.Baseline != 200 || f.Ratio != 0.25 {
		t.Errorf("endpoint change figure %+v: want kube-proxy median 200 and ratio 0.25", f)
	}
	if f := find("kube-proxy nft child peak RSS, 1000 Services"); f.Value != 80 {
		t.Errorf("child RSS figure %+v", f)
	}
	if f := find("meridiand TCP connect median, 1000 Services"); math.Abs(f.Ratio-1.2) > 1e-9 || f.Against != "10 Services" {
		t.Errorf("flatness figure %+v", f)
	}
	if f := find("kube-proxy TCP connect p99, 1000 Services"); math.Abs(f.Ratio-1.5) > 1e-9 {
		t.Errorf("flatness figure %+v", f)
	}
}

func TestEventShowsEndpoint(t *testing.T) {
	a := netip.MustParseAddr("10.244.248.1")
	for _, tc := range []struct {
		name string
		ev   nftables.MonitorEvent
		want bool
	}{
		{"meridiand endpoint chain", nftables.MonitorEvent{Type: nftables.MonitorEventTypeNewChain, Data: &nftables.Chain{Name: "ep-0123abcd-10-244-248-1-8080"}}, true},
		{"deleted chain", nftables.MonitorEvent{Type: nftables.MonitorEventTypeDelChain, Data: &nftables.Chain{Name: "ep-0123abcd-10-244-248-1-8080"}}, false},
		// As the kernel reports `numgen random mod 2 map { 0 : 10.244.248.1 . 8080, ... }`.
		{"kube-proxy dnat map element", nftables.MonitorEvent{Type: nftables.MonitorEventTypeNewSetElem, Data: []nftables.SetElement{
			{Key: []byte{0, 0, 0, 0}, Val: []byte{0x0a, 0x00, 0x00, 0x01, 0x00, 0x50, 0, 0}},
			{Key: []byte{1, 0, 0, 0}, Val: []byte{0x0a, 0xf4, 0xf8, 0x01, 0x1f, 0x90, 0, 0}},
		}}, true},
		{"other endpoints", nftables.MonitorEvent{Type: nftables.MonitorEventTypeNewSetElem, Data: []nftables.SetElement{
			{Key: []byte{0, 0, 0, 0}, Val: []byte{0x0a, 0xf4, 0xf8, 0x0a, 0x1f, 0x90, 0, 0}},
		}}, false},
		{"rule", nftables.MonitorEvent{Type: nftables.MonitorEventTypeNewRule, Data: &nftables.Rule{}}, false},
	} {
		if got := EventShowsEndpoint(&tc.ev, a); got != tc.want {
			t.Errorf("%s: EventShowsEndpoint = %v, want %v", tc.name, got, tc.want)
		}
	}
}
