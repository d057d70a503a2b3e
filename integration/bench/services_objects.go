package bench

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The API objects of the Service benchmark. Everything lives in one
// namespace so that one delete removes it.
const (
	ServicesNamespace = "meridian-bench-svc"
	// EndpointsPerService is how many endpoints every generated Service has.
	EndpointsPerService = 10
	// servicePort is the ClusterIP port, endpointPort where endpoints listen.
	servicePort  = 80
	endpointPort = 8080
	portName     = "http"
	managedBy    = "meridian-bench"
	// benchLabel marks every object (Services, slices, Nodes) the benchmark
	// made.
	benchLabel = "meridian.io/bench"
)

// Endpoint addresses. Generated endpoints fill 10.244.0.0-10.244.239.255;
// the endpoint change uses 10.244.248.0/22; the real endpoints that answer
// the latency test are 10.244.250.1-10 and the client is 10.244.252.2, so
// none of them can be mistaken for another.
var (
	realEndpointNet = netip.MustParsePrefix("10.244.250.0/24")
	clientNet       = netip.MustParsePrefix("10.244.252.0/24")
	changedBase     = netip.MustParseAddr("10.244.248.0")
)

// generatedPool is the number of addresses generated endpoints cycle
// through (10.244.0.0 - 10.244.239.255): 10k Services x 10 endpoints reuse
// addresses, which neither proxy minds.
const generatedPool = 240 * 256

// ServiceName is the name of the i-th benchmark Service.
func ServiceName(i int) string { return fmt.Sprintf("bench-%05d", i) }

// ServiceIndex is the inverse of ServiceName.
func ServiceIndex(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, "bench-")
	if !ok || len(s) != 5 {
		return 0, false
	}
	i, err := strconv.Atoi(s)
	return i, err == nil && i >= 0
}

// BenchService is the i-th Service: ClusterIP, one TCP port, no selector.
// Without a selector the EndpointSlice controller leaves it alone (it would
// otherwise add an empty slice of its own per Service, doubling what the
// API server has to store at 10k); the benchmark writes the slices.
func BenchService(i int) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: ServiceName(i), Namespace: ServicesNamespace, Labels: map[string]string{benchLabel: "services"}},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{
				Name: portName, Protocol: corev1.ProtocolTCP, Port: servicePort, TargetPort: intstr.FromInt32(endpointPort),
			}},
		},
	}
}

// EndpointAddrs are the endpoints of the i-th Service. Service 0 is the
// one the latency test connects to: its endpoints are real listeners.
func EndpointAddrs(i int) []netip.Addr {
	out := make([]netip.Addr, EndpointsPerService)
	for j := range out {
		if i == 0 {
			out[j] = realEndpoint(j)
			continue
		}
		idx := (i*EndpointsPerService + j) % generatedPool
		out[j] = netip.AddrFrom4([4]byte{10, 244, byte(idx / 256), byte(idx % 256)})
	}
	return out
}

func realEndpoint(j int) netip.Addr {
	b := realEndpointNet.Addr().As4()
	b[3] = byte(1 + j)
	return netip.AddrFrom4(b)
}

// ChangedAddr is the fresh address the n-th endpoint change puts in, unique
// within a run so that its appearance in a table can only mean that change.
func ChangedAddr(n int) netip.Addr {
	b := changedBase.As4()
	v := int(b[2])<<8 + int(b[3]) + n%1024
	return netip.AddrFrom4([4]byte{b[0], b[1], byte(v >> 8), byte(v)})
}

// BenchSlice is the EndpointSlice of the i-th Service with the given
// endpoints, all ready.
func BenchSlice(i int, addrs []netip.Addr) *discoveryv1.EndpointSlice {
	ready := true
	eps := make([]discoveryv1.Endpoint, len(addrs))
	for j, a := range addrs {
		eps[j] = discoveryv1.Endpoint{
			Addresses:  []string{a.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &ready, Terminating: new(bool)},
		}
	}
	name, proto, port := portName, corev1.ProtocolTCP, int32(endpointPort)
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      ServiceName(i) + "-bench",
			Namespace: ServicesNamespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: ServiceName(i),
				discoveryv1.LabelManagedBy:   managedBy,
				benchLabel:                   "services",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
	}
}

// ParseSizes reads a --services flag: comma-separated Service counts.
// "" and "0" mean none. The result is sorted and without duplicates, since
// the benchmark adds Services on the way up.
func ParseSizes(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		mult := 1
		if rest, ok := strings.CutSuffix(strings.ToLower(f), "k"); ok {
			f, mult = rest, 1000
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%q is not a Service count", f)
		}
		if n*mult > 0 {
			out = append(out, n*mult)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Percentile is the nearest-rank p-quantile (0 < p <= 1) of d, which need
// not be sorted.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := int(math.Ceil(p * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// HistogramSumCount reads a Prometheus histogram's _sum and _count from
// the text exposition format (all label sets added up).
func HistogramSumCount(text, name string) (sum float64, count uint64, ok bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		metric, value, found := strings.Cut(line, " ")
		if !found {
			continue
		}
		base := metric
		if i := strings.IndexByte(metric, '{'); i >= 0 {
			base = metric[:i]
		}
		// A timestamp may follow the value.
		value, _, _ = strings.Cut(strings.TrimSpace(value), " ")
		switch base {
		case name + "_sum":
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				continue
			}
			sum += v
			ok = true
		case name + "_count":
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				continue
			}
			count += uint64(v)
			ok = true
		}
	}
	return sum, count, ok
}

// ParseVmHWM returns the peak resident set size in /proc/PID/status text.
func ParseVmHWM(status string) (uint64, error) {
	for line := range strings.SplitSeq(status, "\n") {
		rest, ok := strings.CutPrefix(line, "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("unexpected VmHWM line %q", line)
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmHWM %q: %w", f[0], err)
		}
		return kb * 1024, nil
	}
	return 0, errors.New("no VmHWM line (kernel thread or exited process)")
}

// ChainNamesEndpoint reports whether an nftables chain name names a chain
// for endpoint addr: kube-proxy spells it dotted
// ("endpoint-XXXX-ns/svc/tcp/http__10.244.248.1/8080"), Meridian with dashes
// ("ep-0123abcd-10-244-248-1-8080"). The address must end at a
// non-digit so 10.244.248.1 does not match 10.244.248.10.
func ChainNamesEndpoint(chain string, addr netip.Addr) bool {
	for _, spelled := range []string{addr.String(), strings.ReplaceAll(addr.String(), ".", "-")} {
		for rest := chain; ; {
			i := strings.Index(rest, spelled)
			if i < 0 {
				break
			}
			after := rest[i+len(spelled):]
			before := rest[:i]
			if (after == "" || after[0] < '0' || after[0] > '9') &&
				(before == "" || before[len(before)-1] < '0' || before[len(before)-1] > '9') {
				return true
			}
			rest = after
		}
	}
	return false
}
