package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestExitCodes checks the CLI's contract for scripts: usage errors exit 2,
// a missing lab exits 3. None of these cases touches the host.
func TestExitCodes(t *testing.T) {
	noLab := filepath.Join(t.TempDir(), "no-lab")
	// Usage output goes to stderr; keep the test log readable.
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	stderr := os.Stderr
	os.Stderr = devnull
	defer func() { os.Stderr = stderr }()

	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, exitUsage},
		{[]string{"bogus"}, exitUsage},
		{[]string{"--no-such-flag", "status"}, exitUsage},
		{[]string{"up", "--nodes", "0"}, exitUsage},
		{[]string{"up", "extra"}, exitUsage},
		{[]string{"down", "extra"}, exitUsage},
		{[]string{"exec", "node-1"}, exitUsage},
		{[]string{"exec", "node-1", "ip"}, exitUsage},
		{[]string{"netns-exec", "mlab-cp"}, exitUsage},
		{[]string{"agent", "--node", "node-1", "--node-ip", "not-an-ip"}, exitUsage},
		{[]string{"--state-dir", noLab, "status"}, exitNoLab},
		{[]string{"status", "--state-dir", noLab}, exitNoLab},
		{[]string{"--state-dir", noLab, "kubeconfig"}, exitNoLab},
		{[]string{"--state-dir", noLab, "exec", "node-1", "--", "true"}, exitNoLab},
		{[]string{"help"}, exitOK},
	} {
		if got := run(tc.args); got != tc.want {
			t.Errorf("meridian-lab %q exited %d, want %d", tc.args, got, tc.want)
		}
	}
}
