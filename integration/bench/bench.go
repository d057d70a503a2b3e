// Package bench measures what issue #3 promises about the data path and pod
// start-up, each figure side by side with what it is compared against in the
// same run: Meridian's CNI ADD against Debian's ptp+host-local, pod-to-pod
// throughput against node-to-node throughput on the same links.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/meridian-net/meridian/cni-plugin/cnibench"
	"github.com/meridian-net/meridian/integration/lab"
)

// Options for Run.
type Options struct {
	BinDir string
	Pods   int           // pods for the start-up figure (50)
	Iperf  time.Duration // length of each iperf3 run
	Rounds int           // iperf3 rounds of each kind, interleaved
	Out    io.Writer
}

// Figure is one measured number with what it was measured against.
type Figure struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Against  string  `json:"against,omitempty"`
	Baseline float64 `json:"baseline,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"`
	Note     string  `json:"note,omitempty"`
}

// Results is what make bench writes to bench/results.json.
type Results struct {
	When    time.Time `json:"when"`
	Nodes   int       `json:"nodes"`
	Figures []Figure  `json:"figures"`
}

// Run measures on a running lab.
func Run(ctx context.Context, l *lab.Lab, opts Options) (*Results, error) {
	if opts.Pods == 0 {
		opts.Pods = 50
	}
	if opts.Iperf == 0 {
		opts.Iperf = 5 * time.Second
	}
	if opts.Rounds == 0 {
		opts.Rounds = 3
	}
	res := &Results{When: time.Now().UTC(), Nodes: len(l.Nodes())}
	add := func(f Figure) {
		res.Figures = append(res.Figures, f)
		line := fmt.Sprintf("%-48s %10.2f %s", f.Name, f.Value, f.Unit)
		if f.Against != "" {
			line += fmt.Sprintf("   vs %s %.2f %s (ratio %.2f)", f.Against, f.Baseline, f.Unit, f.Ratio)
		}
		if f.Note != "" {
			line += "   " + f.Note
		}
		fmt.Fprintln(opts.Out, line)
	}

	fmt.Fprintf(opts.Out, "# pod start-up: %d pods, creation to reachable from a pod on another node\n", opts.Pods)
	ready, err := podStartup(ctx, l, opts.Pods)
	if err != nil {
		return nil, fmt.Errorf("pod start-up: %w", err)
	}
	med, p99 := cnibench.Summarize(ready)
	add(Figure{Name: "pod reachable from another node, median", Value: ms(med), Unit: "ms", Note: fmt.Sprintf("n=%d", len(ready))})
	add(Figure{Name: "pod reachable from another node, p99", Value: ms(p99), Unit: "ms", Note: fmt.Sprintf("n=%d", len(ready))})

	fmt.Fprintf(opts.Out, "# CNI ADD latency, %d sequential ADDs each, same node namespace setup\n", opts.Pods)
	cr, err := cnibench.Run(ctx, cnibench.Options{MeridianPath: filepath.Join(opts.BinDir, "meridian-cni"), N: opts.Pods})
	if err != nil {
		return nil, fmt.Errorf("CNI ADD latency: %w", err)
	}
	ref := cr.Reference.Plugin
	add(Figure{Name: "CNI ADD median (meridian-cni)", Value: ms(cr.Meridian.Median), Unit: "ms", Against: ref, Baseline: ms(cr.Reference.Median), Ratio: ratio(ms(cr.Meridian.Median), ms(cr.Reference.Median))})
	add(Figure{Name: "CNI ADD p99 (meridian-cni)", Value: ms(cr.Meridian.P99), Unit: "ms", Against: ref, Baseline: ms(cr.Reference.P99), Ratio: ratio(ms(cr.Meridian.P99), ms(cr.Reference.P99))})

	fmt.Fprintf(opts.Out, "# TCP throughput across nodes, iperf3 %s x %d rounds each, interleaved\n", opts.Iperf, opts.Rounds)
	pod, node, err := throughput(ctx, l, opts)
	if err != nil {
		return nil, fmt.Errorf("throughput: %w", err)
	}
	add(Figure{Name: "pod-to-pod TCP throughput across nodes", Value: pod, Unit: "Gbit/s", Against: "node-to-node on the same links", Baseline: node, Ratio: ratio(pod, node), Note: "goal: ratio >= 0.95 (no overlay)"})
	return res, nil
}

// Write stores the results as indented JSON.
func (r *Results) Write(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func podSpec(name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"meridian-bench": "startup"}},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "web", Image: "nginx"}},
		},
	}
}

func waitPodIP(ctx context.Context, c kubernetes.Interface, name string) (string, error) {
	var ip string
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		ip = p.Status.PodIP
		return ip != "", nil
	})
	return ip, err
}

func deleteBenchPods(ctx context.Context, c kubernetes.Interface) {
	_ = c.CoreV1().Pods("default").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "meridian-bench"})
	_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := c.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "meridian-bench"})
		return err == nil && len(l.Items) == 0, nil
	})
}

// podStartup creates n pods on the nodes other than the first and measures,
// for each, the time from the Create call to the first TCP connection to
// its port 80 from a probe pod on the first node: API server, scheduler
// (bypassed: nodeName is set), node agent, CNI and routing all count.
func podStartup(ctx context.Context, l *lab.Lab, n int) ([]time.Duration, error) {
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	nodes := l.Nodes()
	if len(nodes) < 2 {
		return nil, errors.New("need at least 2 nodes")
	}
	deleteBenchPods(ctx, c)
	defer deleteBenchPods(context.WithoutCancel(ctx), c)
	probe := podSpec("bench-probe", nodes[0].Name)
	probe.Labels["meridian-bench"] = "probe"
	if _, err := c.CoreV1().Pods("default").Create(ctx, probe, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	if _, err := waitPodIP(ctx, c, probe.Name); err != nil {
		return nil, fmt.Errorf("probe pod: %w", err)
	}
	probeNS, err := l.PodNetns(ctx, "default", probe.Name)
	if err != nil {
		return nil, err
	}
	netnsPath := probeNS
	if !filepath.IsAbs(netnsPath) {
		netnsPath = filepath.Join("/var/run/netns", probeNS)
	}

	// One watch reports every pod's IP as soon as the agent posts it;
	// polling 50 pods with GETs would load the API server we measure.
	ips := newIPWatch()
	w, err := c.CoreV1().Pods("default").Watch(ctx, metav1.ListOptions{LabelSelector: "meridian-bench=startup"})
	if err != nil {
		return nil, fmt.Errorf("watch pods: %w", err)
	}
	defer w.Stop()
	go ips.run(w.ResultChan())

	var mu sync.Mutex
	var out []time.Duration
	var errs []error
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("bench-%02d", i)
			node := nodes[1+i%(len(nodes)-1)].Name
			start := time.Now()
			var ip string
			_, err := c.CoreV1().Pods("default").Create(ctx, podSpec(name, node), metav1.CreateOptions{})
			if err == nil {
				ip, err = ips.wait(ctx, name, 3*time.Minute)
			}
			if err == nil {
				err = waitReachable(ctx, netnsPath, net.JoinHostPort(ip, "80"))
			}
			d := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				return
			}
			out = append(out, d)
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return out, errors.Join(errs...)
	}
	slices.Sort(out)
	return out, nil
}

// ipWatch turns a pod watch into "wait until this pod has an IP".
type ipWatch struct {
	mu   sync.Mutex
	ips  map[string]string
	wake chan struct{}
}

func newIPWatch() *ipWatch { return &ipWatch{ips: map[string]string{}, wake: make(chan struct{})} }

func (w *ipWatch) run(events <-chan watch.Event) {
	for ev := range events {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok || p.Status.PodIP == "" {
			continue
		}
		w.mu.Lock()
		if w.ips[p.Name] == "" {
			w.ips[p.Name] = p.Status.PodIP
			close(w.wake)
			w.wake = make(chan struct{})
		}
		w.mu.Unlock()
	}
}

func (w *ipWatch) wait(ctx context.Context, name string, timeout time.Duration) (string, error) {
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		ip, wake := w.ips[name], w.wake
		w.mu.Unlock()
		if ip != "" {
			return ip, nil
		}
		select {
		case <-wake:
		case <-deadline:
			return "", fmt.Errorf("no IP after %s", timeout)
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

func waitReachable(ctx context.Context, netnsPath, addr string) error {
	target, err := ns.GetNS(netnsPath)
	if err != nil {
		return err
	}
	defer target.Close()
	return wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
		ok := false
		_ = target.Do(func(ns.NetNS) error {
			conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
			if err == nil {
				conn.Close()
				ok = true
			}
			return nil
		})
		return ok, nil
	})
}

// throughput runs iperf3 between two pods on different nodes and between
// the two nodes themselves, interleaved so both see the same machine load.
func throughput(ctx context.Context, l *lab.Lab, opts Options) (pod, node float64, err error) {
	c, err := l.Client()
	if err != nil {
		return 0, 0, err
	}
	nodes := l.Nodes()
	if len(nodes) < 2 {
		return 0, 0, errors.New("need at least 2 nodes")
	}
	deleteBenchPods(ctx, c)
	defer deleteBenchPods(context.WithoutCancel(ctx), c)
	var podNS [2]string
	var podIP [2]string
	for i := 0; i < 2; i++ {
		p := podSpec(fmt.Sprintf("bench-iperf-%d", i), nodes[i].Name)
		p.Labels["meridian-bench"] = "iperf"
		if _, err := c.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return 0, 0, err
		}
		if podIP[i], err = waitPodIP(ctx, c, p.Name); err != nil {
			return 0, 0, err
		}
		if podNS[i], err = l.PodNetns(ctx, "default", p.Name); err != nil {
			return 0, 0, err
		}
	}
	var pods, nodesT []float64
	for r := 0; r < opts.Rounds; r++ {
		v, err := iperf(ctx, nodes[1].Netns, nodes[0].Netns, nodes[1].IP.String(), opts.Iperf)
		if err != nil {
			return 0, 0, fmt.Errorf("node-to-node iperf3: %w", err)
		}
		nodesT = append(nodesT, v)
		v, err = iperf(ctx, filepath.Base(podNS[1]), filepath.Base(podNS[0]), podIP[1], opts.Iperf)
		if err != nil {
			return 0, 0, fmt.Errorf("pod-to-pod iperf3: %w", err)
		}
		pods = append(pods, v)
	}
	return median(pods), median(nodesT), nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	sort.Float64s(s)
	return s[len(s)/2]
}

// iperf runs an iperf3 server in serverNS and a client in clientNS and
// returns the received rate in Gbit/s.
func iperf(ctx context.Context, serverNS, clientNS, serverIP string, d time.Duration) (float64, error) {
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", serverNS, "iperf3", "-s", "-1", "-p", "5201")
	if err := srv.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	var out []byte
	var err error
	for try := 0; try < 50; try++ {
		time.Sleep(100 * time.Millisecond)
		out, err = exec.CommandContext(ctx, "ip", "netns", "exec", clientNS, "iperf3", "-c", serverIP, "-p", "5201", "-J", "-t", fmt.Sprint(int(d.Seconds()))).Output()
		if err == nil {
			break
		}
	}
	if err != nil {
		return 0, fmt.Errorf("iperf3 client: %w: %s", err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, fmt.Errorf("parse iperf3 output: %w", err)
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}
