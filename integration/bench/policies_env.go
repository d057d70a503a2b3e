package bench

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"

	"github.com/meridian-net/meridian/integration/lab"
)

// policyAgent is one NetworkPolicy agent under test, run as the measured
// bench Node in the bench namespaces.
type policyAgent struct {
	name string
	// bin is the program's file in the bin directory; label names it in
	// the output and in the figures (it says which build ran).
	bin, label string
	table      nftables.Table
	argv       func(binDir, node, kubeconfig, work string) []string
	env        []string
	// base is a chain whose presence says the agent has programmed its
	// table once.
	base string
	// sets are the sets whose elements must cover want: a function of the
	// expected isolation.
	sets func(iso Isolation) map[string]map[netip.Addr]bool
	// how says what "programmed" and "enforced" mean for this agent.
	how string
	// metric is the agent's sync duration histogram, served at metricsURL
	// in its namespace ("": none).
	metric, metricsURL string
	// diagnose, given the end of the agent's log when it made no working
	// table, returns a known cause (nil: none recognised).
	diagnose func(log string) error
}

func meridianPolicyAgent() *policyAgent {
	return &policyAgent{
		name: AgentMeridian, bin: "meridiand", label: AgentMeridian,
		table: nftables.Table{Family: nftables.TableFamilyINet, Name: "meridian"},
		base:  "pol-filter-forward",
		// Services and policy together: one table, one sync.
		metric: "meridian_nftables_sync_duration_seconds", metricsURL: "http://127.0.0.1:9091/metrics",
		argv: func(binDir, node, kubeconfig, work string) []string {
			return []string{
				filepath.Join(binDir, "meridiand"), "--node-name=" + node,
				"--kubeconfig=" + kubeconfig, "--state-dir=" + filepath.Join(work, "meridiand-state"),
				"--api-socket=", "--metrics-addr=127.0.0.1:9091",
				"--cluster-cidr=" + lab.ClusterCIDR.String(),
			}
		},
		sets: func(iso Isolation) map[string]map[netip.Addr]bool {
			return map[string]map[netip.Addr]bool{"pol-ingress": iso.Ingress, "pol-egress": iso.Egress}
		},
		how: "pol-ingress and pol-egress hold every isolated local pod (one transaction carries chains, sets and maps)",
	}
}

// knpRelease and knpXTQueue are the kube-network-policies programs
// hack/build-tools.sh builds: the release as it is, and the same release
// patched to queue through the xtables NFQUEUE target
// (integration/tools/kube-network-policies/xtqueue.patch).
const (
	knpRelease = "kube-network-policies"
	knpXTQueue = "kube-network-policies-xtqueue"
)

// errNoNFTQueue says the kernel refused kube-network-policies' table for
// want of the nftables queue expression: the xtqueue build can run there.
var errNoNFTQueue = errors.New("its table uses the nftables queue expression, which this kernel lacks (CONFIG_NFT_QUEUE is not set)")

// knpPolicyAgent runs bin (knpRelease or knpXTQueue) from binDir.
func knpPolicyAgent(env []string, binDir, bin string) *policyAgent {
	return &policyAgent{
		name:  AgentKNP,
		bin:   bin,
		label: KNPLabel(bin, moduleVersion(filepath.Join(binDir, bin), "sigs.k8s.io/kube-network-policies")),
		table: nftables.Table{Family: nftables.TableFamilyINet, Name: "kube-network-policies"},
		base:  "postrouting",
		env:   env,
		argv: func(binDir, node, _, _ string) []string {
			// It reads only in-cluster credentials, at fixed paths under
			// /var/run/secrets: a private mount namespace gets its own
			// /run with them, so the host's /run is left alone.
			script := `set -e
mount -t tmpfs bench-run /run
mkdir -p /run/secrets/kubernetes.io/serviceaccount
cp "$BENCH_SA_DIR/token" "$BENCH_SA_DIR/ca.crt" /run/secrets/kubernetes.io/serviceaccount/
exec "$@"`
			return []string{
				"unshare", "--mount", "--propagation", "private", "sh", "-c", script, bin,
				filepath.Join(binDir, bin),
				"--hostname-override=" + node, "--disable-nri",
				"--metrics-bind-address=127.0.0.1:9080",
				// Kernel 6.12 and later do not need the DNS workaround.
				"--netfilter-bug-1766-fix=false",
				"--v=2",
			}
		},
		sets: func(iso Isolation) map[string]map[netip.Addr]bool {
			return map[string]map[netip.Addr]bool{"podips-v4": iso.Either()}
		},
		how: "podips-v4 holds every local pod some policy selects (new connections to and from them are judged in userspace over NFQUEUE)",
		diagnose: func(log string) error {
			// v0.8.0 sends its whole table in one batch; the kernel refuses
			// all of it when the `queue` expression is missing.
			if strings.Contains(log, "syncing nftables rules") && strings.Contains(log, "no such file or directory") {
				return errNoNFTQueue
			}
			return nil
		},
	}
}

// KNPLabel names a kube-network-policies build in the output and the
// figures: the release by its module version, the xtqueue build as such.
func KNPLabel(bin, version string) string {
	l := AgentKNP
	if version != "" {
		l += " " + version
	}
	if bin == knpXTQueue {
		l += " (xt NFQUEUE build: this kernel lacks nft queue)"
	}
	return l
}

// moduleVersion is the version of module that the Go program at path was
// built from ("" when unknown). A `replace` (the xtqueue build) keeps the
// version it replaced.
func moduleVersion(path, module string) string {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, m := range append([]*debug.Module{&bi.Main}, bi.Deps...) {
		if m.Path == module {
			return m.Version
		}
	}
	return ""
}

// programmed counts the wanted addresses present in the agent's sets.
func (a *policyAgent) programmed(netnsName string, iso Isolation) (got, want int, err error) {
	for set, addrs := range a.sets(iso) {
		ref := tableRef{family: a.table.Family, table: a.table.Name, frontends: set}
		n, err := countFrontends(netnsName, ref, addrs)
		if err != nil {
			return 0, 0, err
		}
		got += n
		want += len(addrs)
	}
	return got, want, nil
}

// hasChain reports whether the agent's table has the named chain.
func hasChain(netnsName string, t nftables.Table, chain string) (bool, error) {
	c, done, err := nftIn(netnsName)
	if err != nil {
		return false, err
	}
	defer done()
	chains, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return false, fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name == t.Name && ch.Name == chain {
			return true, nil
		}
	}
	return false, nil
}

// NftObjects counts what a table holds, for the memory figure's context.
type NftObjects struct {
	Chains   int `json:"chains"`
	Rules    int `json:"rules"`
	Sets     int `json:"sets"`
	Elements int `json:"elements"`
}

func countObjects(netnsName string, t nftables.Table) (NftObjects, error) {
	var o NftObjects
	c, done, err := nftIn(netnsName)
	if err != nil {
		return o, err
	}
	defer done()
	chains, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return o, fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != t.Name {
			continue
		}
		o.Chains++
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return o, fmt.Errorf("rules of %s: %w", ch.Name, err)
		}
		o.Rules += len(rules)
	}
	sets, err := c.GetSets(&t)
	if err != nil {
		return o, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		o.Sets++
		els, err := c.GetSetElements(s)
		if err != nil {
			return o, fmt.Errorf("elements of %s: %w", s.Name, err)
		}
		o.Elements += len(els)
	}
	return o, nil
}

// kernelMemFields are the /proc/meminfo lines nftables objects land in:
// rules, chains, sets and elements are kmalloc'ed (unreclaimable slab),
// large hash tables may be vmalloc'ed, and every `counter` is per-CPU.
var kernelMemFields = []string{"SUnreclaim", "VmallocUsed", "Percpu"}

// KernelMemKiB sums kernelMemFields in /proc/meminfo text.
func KernelMemKiB(meminfo string) (int64, error) {
	var sum int64
	found := 0
	sc := bufio.NewScanner(strings.NewReader(meminfo))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || !slices.Contains(kernelMemFields, key) {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("unexpected meminfo line %q", sc.Text())
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("meminfo %s: %w", key, err)
		}
		sum += v
		found++
	}
	if found != len(kernelMemFields) {
		return 0, fmt.Errorf("meminfo lacks some of %v", kernelMemFields)
	}
	return sum, nil
}

func sampleKernelMem(n int) (int64, error) {
	var v []float64
	for i := range n {
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		b, err := os.ReadFile("/proc/meminfo")
		if err != nil {
			return 0, err
		}
		k, err := KernelMemKiB(string(b))
		if err != nil {
			return 0, err
		}
		v = append(v, float64(k))
	}
	return int64(median(v)), nil
}

// tableKernelMem deletes the table (its agent stopped) and returns how
// much kernel memory that freed: the median of a few /proc/meminfo
// readings before against after, the deletion's deferred frees (after an
// RCU grace period) given time to run. Other work on the host moves these
// counters too; the tables measured here are megabytes, the noise of an
// idle moment tens of kilobytes.
func tableKernelMem(netnsName string, t nftables.Table) (float64, error) {
	before, err := sampleKernelMem(7)
	if err != nil {
		return 0, err
	}
	if err := removeTables(netnsName, tableRef{family: t.Family, table: t.Name}); err != nil {
		return 0, err
	}
	time.Sleep(2 * time.Second)
	after, err := sampleKernelMem(7)
	if err != nil {
		return 0, err
	}
	return float64(before - after), nil
}

func readVmRSS(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	return statusKB(string(b), "VmRSS")
}

func statusKB(status, field string) (uint64, error) {
	for line := range strings.SplitSeq(status, "\n") {
		rest, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("unexpected %s line %q", field, line)
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, err
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("no %s line", field)
}

// kill ends the agent at once, leaving its table in the kernel to be
// counted: neither agent removes it on SIGKILL.
func (p *proc) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// ensurePolicyNode creates a bench Node that looks alive: Ready, with an
// InternalIP, and its Lease renewed by renewLeases, so the node lifecycle
// controller neither taints it nor marks its pods NotReady (2k pod
// updates in the middle of a measurement).
func ensurePolicyNode(ctx context.Context, c kubernetes.Interface, name string, addr netip.Addr) error {
	if err := ensureBenchNode(ctx, c, name, addr); err != nil {
		return err
	}
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		n.Status.Conditions = []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "MeridianBench",
			Message: "benchmark node, no kubelet", LastHeartbeatTime: now, LastTransitionTime: now,
		}}
		_, err = c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
}

// renewLeases keeps the bench Nodes' Leases fresh until ctx ends.
func renewLeases(ctx context.Context, c kubernetes.Interface, nodes []string) {
	beat := func() {
		for _, n := range nodes {
			now := metav1.NewMicroTime(time.Now())
			spec := coordinationv1.LeaseSpec{HolderIdentity: new(n), LeaseDurationSeconds: new(int32(40)), RenewTime: &now}
			leases := c.CoordinationV1().Leases(corev1.NamespaceNodeLease)
			_ = retry.RetryOnConflict(retry.DefaultRetry, func() error {
				l, err := leases.Get(ctx, n, metav1.GetOptions{})
				if apierrors.IsNotFound(err) {
					_, err = leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: n, Namespace: corev1.NamespaceNodeLease}, Spec: spec}, metav1.CreateOptions{})
					return err
				}
				if err != nil {
					return err
				}
				l.Spec = spec
				_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
				return err
			})
		}
	}
	beat()
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			beat()
		}
	}
}

const knpAccount = "meridian-bench-knp"

// knpCredentials gives kube-network-policies what rest.InClusterConfig
// reads: a ServiceAccount token (bound to the "view" ClusterRole: it
// only lists and watches pods, namespaces and policies), the CA, and the
// API server's address in the environment. It returns the environment
// and a cleanup.
func knpCredentials(ctx context.Context, c kubernetes.Interface, kubeconfig, work string) ([]string, func(), error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", kubeconfig, err)
	}
	ns := PolicyNamespace(0)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: knpAccount, Namespace: ns}}
	if _, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, nil, fmt.Errorf("create service account: %w", err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: knpAccount, Labels: map[string]string{benchLabel: policyLabel}},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: knpAccount, Namespace: ns}},
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, nil, fmt.Errorf("create cluster role binding: %w", err)
	}
	cleanup := func() {
		_ = c.RbacV1().ClusterRoleBindings().Delete(context.Background(), knpAccount, metav1.DeleteOptions{})
	}
	tok, err := c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, knpAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(4 * 3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("token for %s: %w", knpAccount, err)
	}
	dir := filepath.Join(work, "knp-sa")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		cleanup()
		return nil, nil, err
	}
	ca := cfg.CAData
	if len(ca) == 0 && cfg.CAFile != "" {
		if ca, err = os.ReadFile(cfg.CAFile); err != nil {
			cleanup()
			return nil, nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(tok.Status.Token), 0o600); err != nil {
		cleanup()
		return nil, nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca, 0o600); err != nil {
		cleanup()
		return nil, nil, err
	}
	host, port, err := net.SplitHostPort(strings.TrimPrefix(cfg.Host, "https://"))
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("API server address %q: %w", cfg.Host, err)
	}
	return []string{"BENCH_SA_DIR=" + dir, "KUBERNETES_SERVICE_HOST=" + host, "KUBERNETES_SERVICE_PORT=" + port}, cleanup, nil
}

// addClientAddr gives the client namespace ProbeSource beside its own
// address.
func addClientAddr(clientNS string) error {
	h, err := netns.GetFromName(clientNS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", clientNS, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return err
	}
	defer nh.Close()
	l, err := nh.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("%s: find eth0: %w", clientNS, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ProbeSource.AsSlice(), Mask: net.CIDRMask(clientAddr.Bits(), 32)}}
	if err := nh.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%s: address %s: %w", clientNS, ProbeSource, err)
	}
	return nil
}

// dialFrom connects from src (in the client namespace) to dst once.
func dialFrom(clientNS string, src netip.Addr, dst netip.AddrPort, timeout time.Duration) error {
	return inNetns(clientNS, func() error {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		c, err := d.Dial("tcp", dst.String())
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// Attempt is one probe connect: when it started and whether it connected.
type Attempt struct {
	At time.Time
	OK bool
}

// EnforcedAt is when enforcement began in a series of attempts: the start
// of the first failed attempt of the final run of at least streak
// failures, if that run ends the series.
func EnforcedAt(attempts []Attempt, streak int) (time.Time, bool) {
	i := len(attempts)
	for i > 0 && !attempts[i-1].OK {
		i--
	}
	if len(attempts)-i < streak || i == len(attempts) {
		return time.Time{}, false
	}
	return attempts[i].At, true
}

// probeUntilDropped connects from ProbeSource to dst over and over until
// streak consecutive connects time out, and returns every attempt.
func probeUntilDropped(ctx context.Context, clientNS string, dst netip.AddrPort, streak int, limit time.Duration, started chan<- struct{}) ([]Attempt, error) {
	var out []Attempt
	err := inNetns(clientNS, func() error {
		d := net.Dialer{Timeout: 50 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: ProbeSource.AsSlice()}}
		deadline := time.Now().Add(limit)
		fails := 0
		for fails < streak {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s still reachable from %s after %s", dst, ProbeSource, limit)
			}
			t0 := time.Now()
			c, err := d.DialContext(ctx, "tcp", dst.String())
			out = append(out, Attempt{At: t0, OK: err == nil})
			if len(out) == 1 {
				close(started)
			}
			if err == nil {
				c.Close()
				fails = 0
				// Spaced out: each connect leaves a TIME_WAIT socket.
				time.Sleep(2 * time.Millisecond)
				continue
			}
			fails++
		}
		return nil
	})
	return out, err
}
