// Package cnibench measures pod ADD latency of meridian-cni against the
// reference ptp + host-local plugins, each in a throw-away node netns, so a
// benchmark run never touches the host's own network namespace.
package cnibench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/meridian-net/meridian/cni-plugin/ipam"
)

// Options configures Run. Zero fields take the defaults.
type Options struct {
	// MeridianPath is the built meridian-cni binary (required).
	MeridianPath string
	// ReferenceDir holds the reference ptp and host-local plugins
	// (default /usr/lib/cni, Debian's containernetworking-plugins).
	ReferenceDir string
	// N is the number of pods per plugin (default 50).
	N int
	// PodCIDR is the node's pod CIDR, the same for both plugins
	// (default 10.244.1.0/24).
	PodCIDR netip.Prefix
	// MTU is configured on both plugins (default 1500).
	MTU int
}

// PluginResult is one plugin's measurements.
type PluginResult struct {
	Plugin string
	// ADDs holds the wall time of every successful ADD, in order.
	ADDs []time.Duration
	// Samples is len(ADDs).
	Samples int
	// Failures counts ADDs and DELs that failed; Errors holds them.
	Failures int
	Errors   []error
	Median   time.Duration
	P99      time.Duration
}

// Result holds both plugins' measurements.
type Result struct {
	Meridian  PluginResult
	Reference PluginResult
}

// cniVersion is the newest version Debian's ptp speaks.
const cniVersion = "1.0.0"

// Run performs opts.N sequential ADDs, each into a fresh pod netns, and then
// the matching DELs, first for meridian-cni, then for ptp + host-local, each
// under its own new node netns and state directory. It times every ADD's
// exec of the plugin. Failed ADDs and DELs are counted in the result; an
// error is returned only when the run itself cannot be set up or ctx ends.
func Run(ctx context.Context, opts Options) (Result, error) {
	opts = withDefaults(opts)
	if opts.MeridianPath == "" {
		return Result{}, errors.New("cnibench: MeridianPath is required")
	}
	for _, p := range []string{opts.MeridianPath, filepath.Join(opts.ReferenceDir, "ptp"), filepath.Join(opts.ReferenceDir, "host-local")} {
		if _, err := os.Stat(p); err != nil {
			return Result{}, fmt.Errorf("cnibench: plugin: %w", err)
		}
	}
	work, err := os.MkdirTemp("", "meridian-cnibench-")
	if err != nil {
		return Result{}, fmt.Errorf("cnibench: %w", err)
	}
	defer os.RemoveAll(work)

	meridianState := filepath.Join(work, "meridian")
	st := ipam.NodeState{NodeName: "bench-node", PodCIDRs: []netip.Prefix{opts.PodCIDR}}
	if err := st.Write(meridianState); err != nil {
		return Result{}, fmt.Errorf("cnibench: %w", err)
	}
	meridian := plugin{
		name:    "meridian-cni",
		path:    opts.MeridianPath,
		cniPath: filepath.Dir(opts.MeridianPath),
		conf: mustJSON(map[string]any{
			"cniVersion": cniVersion, "name": "bench-meridian", "type": "meridian-cni",
			"stateDir": meridianState, "mtu": opts.MTU,
		}),
	}
	reference := plugin{
		name:    "ptp+host-local",
		path:    filepath.Join(opts.ReferenceDir, "ptp"),
		cniPath: opts.ReferenceDir,
		conf: mustJSON(map[string]any{
			"cniVersion": cniVersion, "name": "bench-ptp", "type": "ptp", "mtu": opts.MTU,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": opts.PodCIDR.String()}}},
				"dataDir": filepath.Join(work, "host-local"),
			},
		}),
	}

	var res Result
	if res.Meridian, err = runPlugin(ctx, meridian, opts.N); err != nil {
		return res, err
	}
	if res.Reference, err = runPlugin(ctx, reference, opts.N); err != nil {
		return res, err
	}
	return res, nil
}

func withDefaults(o Options) Options {
	if o.ReferenceDir == "" {
		o.ReferenceDir = "/usr/lib/cni"
	}
	if o.N <= 0 {
		o.N = 50
	}
	if !o.PodCIDR.IsValid() {
		o.PodCIDR = netip.MustParsePrefix("10.244.1.0/24")
	}
	if o.MTU == 0 {
		o.MTU = 1500
	}
	return o
}

type plugin struct {
	name, path, cniPath string
	conf                []byte
}

func runPlugin(ctx context.Context, p plugin, n int) (PluginResult, error) {
	r := PluginResult{Plugin: p.name}
	node, err := testutils.NewNS()
	if err != nil {
		return r, fmt.Errorf("cnibench: node netns: %w", err)
	}
	defer closeNS(node)

	pods := make([]ns.NetNS, 0, n)
	defer func() {
		for _, pod := range pods {
			closeNS(pod)
		}
	}()
	for i := range n {
		if err := ctx.Err(); err != nil {
			return r, err
		}
		pod, err := testutils.NewNS()
		if err != nil {
			return r, fmt.Errorf("cnibench: pod netns: %w", err)
		}
		pods = append(pods, pod)
		start := time.Now()
		err = exec1(ctx, node, p, "ADD", containerID(i), pod.Path())
		took := time.Since(start)
		if err != nil {
			r.Failures++
			r.Errors = append(r.Errors, fmt.Errorf("ADD %d: %w", i, err))
			continue
		}
		r.ADDs = append(r.ADDs, took)
	}
	for i, pod := range pods {
		if err := exec1(ctx, node, p, "DEL", containerID(i), pod.Path()); err != nil {
			r.Failures++
			r.Errors = append(r.Errors, fmt.Errorf("DEL %d: %w", i, err))
		}
	}
	r.Samples = len(r.ADDs)
	r.Median, r.P99 = Summarize(r.ADDs)
	return r, nil
}

func containerID(i int) string { return fmt.Sprintf("cnibench-%04d", i) }

// exec1 runs one plugin command inside the node netns: the child is forked
// from the thread ns.Do switched, so the plugin sees the node netns as its
// host namespace.
func exec1(ctx context.Context, node ns.NetNS, p plugin, cmd, id, podPath string) error {
	var stdout, stderr bytes.Buffer
	var runErr error
	if err := node.Do(func(ns.NetNS) error {
		c := exec.CommandContext(ctx, p.path)
		c.Env = []string{
			"CNI_COMMAND=" + cmd,
			"CNI_CONTAINERID=" + id,
			"CNI_NETNS=" + podPath,
			"CNI_IFNAME=eth0",
			"CNI_PATH=" + p.cniPath,
		}
		c.Stdin = bytes.NewReader(p.conf)
		c.Stdout, c.Stderr = &stdout, &stderr
		runErr = c.Run()
		return nil
	}); err != nil {
		return err
	}
	if runErr != nil {
		return fmt.Errorf("%s %s: %w: %s%s", p.name, cmd, runErr, stdout.Bytes(), stderr.Bytes())
	}
	return nil
}

func closeNS(n ns.NetNS) {
	n.Close()
	_ = testutils.UnmountNS(n)
}

// Summarize returns the median and the nearest-rank 99th percentile.
func Summarize(d []time.Duration) (median, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s)%2 == 1 {
		median = s[len(s)/2]
	} else {
		median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	rank := int(math.Ceil(0.99 * float64(len(s))))
	return median, s[rank-1]
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // static maps of strings and ints
	}
	return b
}
