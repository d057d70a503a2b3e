package bench

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestBenchPoliciesDeterministicAndValid(t *testing.T) {
	a, b := BenchPolicies(1000), BenchPolicies(1000)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("BenchPolicies(1000) differs between two calls")
	}
	if len(a) != 1000 {
		t.Fatalf("got %d policies, want 1000", len(a))
	}
	names := map[string]bool{}
	shapes := map[string]bool{}
	for _, np := range a {
		key := np.Namespace + "/" + np.Name
		if names[key] {
			t.Errorf("duplicate policy %s", key)
		}
		names[key] = true
		if len(np.Spec.PolicyTypes) == 0 {
			t.Errorf("%s: policyTypes not explicit", key)
		}
		if _, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector); err != nil {
			t.Errorf("%s: podSelector: %v", key, err)
		}
		var sig []string
		for _, r := range np.Spec.Ingress {
			for _, p := range r.From {
				switch {
				case p.IPBlock != nil:
					sig = append(sig, "in-ipblock")
				case p.NamespaceSelector != nil:
					sig = append(sig, "in-ns+pod")
				case len(p.PodSelector.MatchExpressions) > 0:
					sig = append(sig, "in-expr")
				default:
					sig = append(sig, "in-pod")
				}
			}
		}
		for _, r := range np.Spec.Egress {
			for _, p := range r.To {
				if p.IPBlock != nil {
					sig = append(sig, "out-ipblock")
				} else {
					sig = append(sig, "out-pod")
				}
			}
		}
		shapes[strings.Join(sig, ",")] = true
	}
	for _, want := range []string{"in-pod", "in-ns+pod", "in-ipblock,out-pod,out-ipblock", "in-expr", "out-pod"} {
		if !shapes[want] {
			t.Errorf("no policy of shape %q among %v", want, shapes)
		}
	}
	// The first two allow exactly client -> server.
	if got := a[0].Spec.PodSelector.MatchLabels["app"]; got != serverApp {
		t.Errorf("policy 0 selects app=%q, want %q", got, serverApp)
	}
	if got := a[1].Spec.PodSelector.MatchLabels["app"]; got != clientApp {
		t.Errorf("policy 1 selects app=%q, want %q", got, clientApp)
	}
}

func TestBenchPodsSpreadAndAddresses(t *testing.T) {
	const n = 2000
	perNode := map[string]int{}
	perNS := map[string]int{}
	seen := map[netip.Addr]bool{}
	for i := range n {
		p := BenchPod(i)
		if !reflect.DeepEqual(p, BenchPod(i)) {
			t.Fatalf("BenchPod(%d) differs between two calls", i)
		}
		perNode[p.Spec.NodeName]++
		perNS[p.Namespace]++
		ip := GeneratedPodAddr(i)
		if seen[ip] {
			t.Fatalf("pod %d: address %s given twice", i, ip)
		}
		seen[ip] = true
		if b := ip.As4(); b[3] == 0 || b[3] == 255 {
			t.Errorf("pod %d: address %s ends in .0 or .255", i, ip)
		}
	}
	if len(perNode) != PolicyNodes || len(perNS) != PolicyNamespaces {
		t.Fatalf("pods on %d nodes in %d namespaces, want %d and %d", len(perNode), len(perNS), PolicyNodes, PolicyNamespaces)
	}
	for node, c := range perNode {
		if c < n/PolicyNodes || c > n/PolicyNodes+1 {
			t.Errorf("node %s hosts %d pods, want about %d", node, c, n/PolicyNodes)
		}
	}
	for _, a := range []netip.Addr{ServerAddr, ClientAddr, ProbeSource} {
		if seen[a] {
			t.Errorf("real address %s is also a generated pod's", a)
		}
	}
	for k := range maxProbes {
		if a := ProbeAddr(k); seen[a] || a == ServerAddr {
			t.Errorf("probe address %s collides", a)
		}
	}
	if GeneratedPodAddr(MaxPolicyPods - 1).As4()[2] >= realEndpointNet.Addr().As4()[2] {
		t.Errorf("the last generated address %s reaches the real pods' range", GeneratedPodAddr(MaxPolicyPods-1))
	}
}

func TestExpectedIsolation(t *testing.T) {
	const n = 2000
	var pods []*corev1.Pod
	for i := range n {
		pods = append(pods, BenchPod(i))
	}
	pods = append(pods, RealPods()...)
	ips := PolicyPodAddrs(n)
	node := PolicyNodeName(0)

	none, err := ExpectedIsolation(pods, ips, nil, node)
	if err != nil {
		t.Fatal(err)
	}
	if len(none.Ingress)+len(none.Egress) != 0 {
		t.Errorf("no policies isolate %d+%d addresses, want none", len(none.Ingress), len(none.Egress))
	}

	iso, err := ExpectedIsolation(pods, ips, BenchPolicies(1000), node)
	if err != nil {
		t.Fatal(err)
	}
	if !iso.Ingress[ServerAddr] || iso.Egress[ServerAddr] {
		t.Errorf("server: ingress %v egress %v, want isolated for ingress only", iso.Ingress[ServerAddr], iso.Egress[ServerAddr])
	}
	if iso.Ingress[ClientAddr] || !iso.Egress[ClientAddr] {
		t.Errorf("client: ingress %v egress %v, want isolated for egress only", iso.Ingress[ClientAddr], iso.Egress[ClientAddr])
	}
	local := 0
	for _, p := range pods {
		if p.Spec.NodeName == node {
			local++
		}
	}
	// Every app of every namespace is selected by an ingress policy at
	// 1000 policies (48 per namespace over 25 apps): every local pod is
	// isolated for ingress but the client.
	if len(iso.Ingress) != local-1 {
		t.Errorf("%d local pods isolated for ingress, want %d", len(iso.Ingress), local-1)
	}
	if len(iso.Egress) == 0 || len(iso.Egress) >= local {
		t.Errorf("%d of %d local pods isolated for egress, want some", len(iso.Egress), local)
	}
	if got := len(iso.Either()); got != local {
		t.Errorf("Either holds %d, want every local pod (%d)", got, local)
	}
	for a := range iso.Either() {
		found := false
		for key, ip := range ips {
			if ip == a {
				ns, name, _ := strings.Cut(key, "/")
				for _, p := range pods {
					if p.Namespace == ns && p.Name == name && p.Spec.NodeName != node {
						t.Errorf("%s is on %s, not %s", key, p.Spec.NodeName, node)
					}
				}
				found = true
			}
		}
		if !found {
			t.Errorf("isolated address %s is no pod's", a)
		}
	}
}

func TestEnforcedAt(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	seq := func(oks ...bool) []Attempt {
		var out []Attempt
		for i, ok := range oks {
			out = append(out, Attempt{At: at(i * 10), OK: ok})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		in   []Attempt
		want time.Time
		ok   bool
	}{
		{"dropped after three connects", seq(true, true, true, false, false, false), at(30), true},
		{"a lost connect before is not enforcement", seq(true, false, true, false, false, false), at(30), true},
		{"streak too short", seq(true, true, false, false), time.Time{}, false},
		{"never dropped", seq(true, true, true), time.Time{}, false},
		{"dropped from the start", seq(false, false, false), at(0), true},
		{"empty", nil, time.Time{}, false},
	} {
		got, ok := EnforcedAt(tc.in, 3)
		if ok != tc.ok || !got.Equal(tc.want) {
			t.Errorf("%s: EnforcedAt = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func TestKernelMemKiB(t *testing.T) {
	const meminfo = `MemTotal:       24575132 kB
Slab:             812340 kB
SReclaimable:     500000 kB
SUnreclaim:       312340 kB
VmallocUsed:       40960 kB
Percpu:             8192 kB
`
	got, err := KernelMemKiB(meminfo)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(312340 + 40960 + 8192); got != want {
		t.Errorf("KernelMemKiB = %d, want %d", got, want)
	}
	if _, err := KernelMemKiB("SUnreclaim: 1 kB\n"); err == nil {
		t.Error("KernelMemKiB accepted meminfo without VmallocUsed and Percpu")
	}
	if v, err := statusKB("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS"); err != nil || v != 2048*1024 {
		t.Errorf("statusKB VmRSS = %d, %v; want %d", v, err, 2048*1024)
	}
}

func TestPolicyFigures(t *testing.T) {
	runs := []PolicyRun{
		{Agent: AgentKNP, Policies: 1000, Pods: 2000, LocalPods: 668, Elements: 668, ProgramAll: 2, Enforce: []float64{100, 300, 200},
			KernelKiB: 100, RSS: 80, PeakRSS: 90, ConnectMedian: 0.4, ConnectP99: 1, Connect0Median: 0.1, Connect0P99: 0.2},
		{Agent: AgentMeridian, Policies: 1000, Pods: 2000, LocalPods: 668, Elements: 990, ProgramAll: 4, Enforce: []float64{50, 150, 100},
			KernelKiB: 4000, RSS: 60, PeakRSS: 70, ConnectMedian: 0.11, ConnectP99: 0.25, Connect0Median: 0.1, Connect0P99: 0.2},
	}
	figs := PolicyFigures(runs)
	byName := map[string]Figure{}
	for _, f := range figs {
		byName[f.Name] = f
	}
	for name, want := range map[string]struct{ value, base, ratio float64 }{
		"policy program all from start, 1000 policies, 2000 pods (meridiand)":                {4, 2, 2},
		"pod IP to policy enforced, median, 1000 policies, 2000 pods (meridiand)":            {100, 200, 0.5},
		"policy table kernel memory, 1000 policies, 2000 pods (meridiand)":                   {4000, 100, 40},
		"policy agent RSS, 1000 policies, 2000 pods (meridiand)":                             {60, 80, 0.75},
		"pod-to-pod TCP connect with policies, median, 1000 policies, 2000 pods (meridiand)": {0.11, 0.4, 0.275},
		"meridiand TCP connect median, 1000 policies":                                        {0.11, 0.1, 1.1},
		"kube-network-policies TCP connect median, 1000 policies":                            {0.4, 0.1, 4},
	} {
		f, ok := byName[name]
		if !ok {
			t.Errorf("no figure %q", name)
			continue
		}
		if !near(f.Value, want.value) || !near(f.Baseline, want.base) || !near(f.Ratio, want.ratio) {
			t.Errorf("%s = %v vs %v (ratio %v), want %v vs %v (ratio %v)", name, f.Value, f.Baseline, f.Ratio, want.value, want.base, want.ratio)
		}
	}
	if f := byName["policy program all from start, 1000 policies, 2000 pods (meridiand)"]; f.Against != AgentKNP {
		t.Errorf("program all compared against %q, want %q", f.Against, AgentKNP)
	}
	if got := PolicyFigures(runs[:1]); got != nil {
		t.Errorf("the peer's run alone gave %d figures, want none", len(got))
	}
	// A peer that could not run leaves Meridian's figures, unpaired.
	failed := []PolicyRun{{Agent: AgentKNP, Error: "no table"}, runs[1]}
	figs = PolicyFigures(failed)
	if len(figs) == 0 {
		t.Fatal("no figures when the peer failed")
	}
	for _, f := range figs {
		if f.Against == AgentKNP {
			t.Errorf("%s compared against the peer (ratio %v) though it failed", f.Name, f.Ratio)
		}
		if strings.HasPrefix(f.Name, AgentKNP) {
			t.Errorf("figure %q of the failed peer", f.Name)
		}
	}
}

func TestPolicyFiguresNameTheXTQueueBuild(t *testing.T) {
	xt := KNPLabel(knpXTQueue, "v0.8.0")
	if want := "kube-network-policies v0.8.0 (xt NFQUEUE build: this kernel lacks nft queue)"; xt != want {
		t.Errorf("KNPLabel(xtqueue) = %q, want %q", xt, want)
	}
	if got := KNPLabel(knpRelease, "v0.8.0"); got != "kube-network-policies v0.8.0" {
		t.Errorf("KNPLabel(release) = %q", got)
	}
	if got := KNPLabel(knpRelease, ""); got != AgentKNP {
		t.Errorf("KNPLabel(release, unknown version) = %q, want %q", got, AgentKNP)
	}
	runs := []PolicyRun{
		{Agent: AgentMeridian, Label: AgentMeridian, Policies: 1000, Pods: 2000, ProgramAll: 4, ConnectMedian: 0.11, Connect0Median: 0.1},
		{Agent: AgentKNP, Label: xt, Policies: 1000, Pods: 2000, ProgramAll: 2, ConnectMedian: 0.4, Connect0Median: 0.1},
	}
	peerFigs := 0
	for _, f := range PolicyFigures(runs) {
		switch {
		case strings.HasSuffix(f.Name, "(meridiand)"):
			if f.Against != xt {
				t.Errorf("%s against %q, want the xtqueue build's label", f.Name, f.Against)
			}
		case strings.HasPrefix(f.Name, AgentKNP+" "):
			peerFigs++
			if !strings.Contains(f.Note, "xt NFQUEUE build") {
				t.Errorf("%s: note %q does not say which build ran", f.Name, f.Note)
			}
		}
	}
	if peerFigs != 2 {
		t.Errorf("%d figures of the peer's own connect latency, want 2", peerFigs)
	}
}

func TestKNPDiagnosesMissingNFTQueue(t *testing.T) {
	a := knpPolicyAgent(nil, t.TempDir(), knpRelease)
	// What v0.8.0 logs, every sync, when the kernel refuses its table.
	refused := `E1125 23:02:11.123456  1 controller.go:540] "syncing nftables rules" err="netlink receive: no such file or directory"`
	if err := a.diagnose(refused); !errors.Is(err, errNoNFTQueue) {
		t.Errorf("diagnose(refused table) = %v, want errNoNFTQueue", err)
	}
	if err := a.diagnose(`I1125 "Waiting for informer caches to sync"`); err != nil {
		t.Errorf("diagnose(unrelated log) = %v, want nil", err)
	}
	if a.label != AgentKNP {
		t.Errorf("label of a missing binary = %q, want %q", a.label, AgentKNP)
	}
}

func TestModuleVersion(t *testing.T) {
	// The built kube-network-policies programs (hack/build-tools.sh), from
	// MERIDIAN_BIN_DIR or the repository's bin/: `go test` binaries carry
	// no module list to read instead.
	dir := os.Getenv("MERIDIAN_BIN_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "bin")
	}
	tested := 0
	for _, bin := range []string{knpRelease, knpXTQueue} {
		path := filepath.Join(dir, bin)
		if _, err := os.Stat(path); err != nil {
			continue
		}
		tested++
		// The xtqueue build replaces the module with a patched copy and
		// must still report the version it patched.
		if v := moduleVersion(path, "sigs.k8s.io/kube-network-policies"); !strings.HasPrefix(v, "v0.") {
			t.Errorf("moduleVersion(%s) = %q, want the pinned v0.x release", path, v)
		}
		if v := moduleVersion(path, "example.com/not-a-dependency"); v != "" {
			t.Errorf("moduleVersion(%s) of a module not linked = %q, want empty", path, v)
		}
	}
	if v := moduleVersion(filepath.Join(t.TempDir(), "absent"), "sigs.k8s.io/kube-network-policies"); v != "" {
		t.Errorf("moduleVersion of a missing file = %q, want empty", v)
	}
	if tested == 0 {
		t.Skipf("no %s or %s in %s (hack/build-tools.sh builds them)", knpRelease, knpXTQueue, dir)
	}
}

func near(a, b float64) bool {
	d := a - b
	return d < 1e-9 && d > -1e-9
}
