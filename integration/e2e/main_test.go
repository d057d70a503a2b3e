// Package e2e runs Meridian in the lab: a real kube-apiserver, controller
// manager and scheduler, three nodes in network namespaces, each with
// meridiand and the node agent, and checks what users will try first.
package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-net/meridian/integration/lab"
)

// theLab is shared by the tests of this package: bringing a cluster up costs
// tens of seconds, and each test leaves it as it found it. It is brought up
// on first use (needLab), so a run of tests with labs of their own (racks)
// does not pay for it; such a test takes the host from it (ownLab) and the
// next needLab brings it back.
var (
	theLab      *lab.Lab
	labStateDir string
	// labBinDir is where the labs take their binaries from; empty when lab
	// tests skip.
	labBinDir string
	// labUpErr is the shared lab's failed Up: later tests fail at once.
	labUpErr error
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	binDir := os.Getenv("MERIDIAN_BIN_DIR")
	require := os.Getenv("MERIDIAN_REQUIRE_LAB") == "1"
	skip := func(why string) int {
		if require {
			fmt.Fprintf(os.Stderr, "e2e: MERIDIAN_REQUIRE_LAB=1 but %s\n", why)
			return 1
		}
		fmt.Fprintf(os.Stderr, "e2e: skipping lab tests: %s\n", why)
		return m.Run() // every test skips itself when theLab is nil
	}
	if os.Geteuid() != 0 {
		return skip("not root")
	}
	if binDir == "" {
		return skip("MERIDIAN_BIN_DIR is not set (make integration-test sets it)")
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "helm", "meridiand", "meridianctl", "meridian-cni", "meridian-install-cni", "meridian-lab"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return skip(fmt.Sprintf("missing %s: run make build", b))
		}
	}
	labBinDir = binDir
	code := m.Run()
	if labUpErr != nil {
		code = 1
	}
	if theLab == nil {
		return code
	}
	// Whatever the tests made meridiand do, the chart's RBAC must have
	// allowed it.
	if err := chartRBACRefusals(theLab); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		code = 1
	}
	if code != 0 {
		dumpLogs(labStateDir)
	}
	if err := lab.Down(context.Background(), labStateDir); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: lab down: %v\n", err)
		return 1
	}
	return code
}

// upSharedLab brings up the shared three-node flat lab.
func upSharedLab() (*lab.Lab, string, error) {
	stateDir, err := os.MkdirTemp("", "meridian-e2e-")
	if err != nil {
		return nil, "", err
	}
	// Other test binaries may hold the host for a while: wait for them
	// before the clock of Up starts. Up keeps its own hold until Down.
	unlock, err := lab.LockHost(context.Background())
	if err != nil {
		return nil, "", err
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	start := time.Now()
	l, err := lab.Up(ctx, lab.Options{Nodes: 3, BinDir: labBinDir, StateDir: stateDir, Log: log})
	if err != nil {
		dumpLogs(stateDir)
		_ = lab.Down(context.Background(), stateDir)
		return nil, "", fmt.Errorf("lab up: %w", err)
	}
	fmt.Fprintf(os.Stderr, "e2e: lab up in %s\n", time.Since(start).Round(time.Millisecond))
	return l, stateDir, nil
}

// dropSharedLab removes the shared lab, if it runs, so a test can bring
// up a lab of another shape (the host has room for one).
func dropSharedLab(t *testing.T) {
	t.Helper()
	if theLab == nil {
		return
	}
	if err := lab.Down(context.Background(), labStateDir); err != nil {
		t.Fatalf("remove the shared lab: %v", err)
	}
	theLab, labStateDir = nil, ""
}

// dumpLogs prints the tail of every daemon's log, which is what a developer
// needs to see when CI fails.
func dumpLogs(stateDir string) {
	files, _ := filepath.Glob(filepath.Join(stateDir, "logs", "*.log"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		fmt.Fprintf(os.Stderr, "===== %s (tail) =====\n%s\n", f, b)
	}
}

func needLab(t *testing.T) *lab.Lab {
	t.Helper()
	if labBinDir == "" {
		t.Skip("lab not running (needs root and MERIDIAN_BIN_DIR)")
	}
	if labUpErr != nil {
		t.Fatalf("shared lab: %v", labUpErr)
	}
	if theLab == nil {
		theLab, labStateDir, labUpErr = upSharedLab()
		if labUpErr != nil {
			t.Fatalf("shared lab: %v", labUpErr)
		}
	}
	return theLab
}

// expectedRefusals are the API requests a test made the chart's RBAC
// refuse on purpose (TestChartRBACRefusalIsCaught); every other refusal
// fails the run.
var expectedRefusals = struct {
	sync.Mutex
	match []func(lab.Request) bool
}{}

// chartRBACRefusals reads the lab's audit log for requests of meridiand's
// service account that the API server refused (403), which mean the
// chart's ClusterRole or Roles lack a permission meridiand uses.
func chartRBACRefusals(l *lab.Lab) error {
	reqs, err := l.ForbiddenRequests(lab.MeridianUser)
	if err != nil {
		return fmt.Errorf("chart RBAC: %w", err)
	}
	expectedRefusals.Lock()
	defer expectedRefusals.Unlock()
	var bad []string
	for _, r := range reqs {
		if !slices.ContainsFunc(expectedRefusals.match, func(f func(lab.Request) bool) bool { return f(r) }) {
			bad = append(bad, r.String())
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("the chart's RBAC refused meridiand %d requests (grant them in charts/meridian/templates):\n  %s",
			len(bad), strings.Join(bad, "\n  "))
	}
	return nil
}
