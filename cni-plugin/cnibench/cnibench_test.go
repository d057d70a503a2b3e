package cnibench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	tests := []struct {
		in          []time.Duration
		median, p99 time.Duration
	}{
		{nil, 0, 0},
		{ms(7), 7 * time.Millisecond, 7 * time.Millisecond},
		{ms(9, 1, 5), 5 * time.Millisecond, 9 * time.Millisecond},
		{ms(4, 1, 3, 2), 2500 * time.Microsecond, 4 * time.Millisecond},
	}
	for _, tc := range tests {
		m, p := Summarize(tc.in)
		if m != tc.median || p != tc.p99 {
			t.Errorf("Summarize(%v) = %v, %v; want %v, %v", tc.in, m, p, tc.median, tc.p99)
		}
	}
	// Nearest rank: of 200 samples the 198th is the p99.
	var d []time.Duration
	for i := 200; i >= 1; i-- {
		d = append(d, time.Duration(i))
	}
	if _, p := Summarize(d); p != 198 {
		t.Errorf("p99 of 1..200 = %d, want 198", p)
	}
}

func TestRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	if _, err := os.Stat("/usr/lib/cni/ptp"); err != nil {
		t.Skip("reference plugins not installed: ", err)
	}
	bin := filepath.Join(t.TempDir(), "meridian-cni")
	build := exec.Command("go", "build", "-o", bin, "../cmd/meridian-cni")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("build plugin: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{MeridianPath: bin, N: 5})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []PluginResult{res.Meridian, res.Reference} {
		if r.Failures != 0 {
			t.Errorf("%s: %d failures: %v", r.Plugin, r.Failures, r.Errors)
		}
		if r.Samples != 5 || len(r.ADDs) != 5 {
			t.Errorf("%s: %d samples, want 5", r.Plugin, r.Samples)
		}
		if r.Median <= 0 || r.P99 < r.Median {
			t.Errorf("%s: median %v p99 %v", r.Plugin, r.Median, r.P99)
		}
		t.Logf("%s: median %v p99 %v over %d ADDs", r.Plugin, r.Median, r.P99, r.Samples)
	}
}
