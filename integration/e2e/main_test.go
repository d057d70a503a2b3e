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
	"testing"
	"time"

	"github.com/meridian-net/meridian/integration/lab"
)

// theLab is shared by the tests of this package: bringing a cluster up costs
// tens of seconds, and each test leaves it as it found it.
var (
	theLab      *lab.Lab
	labStateDir string
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
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "meridiand", "meridian-cni", "meridian-lab"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return skip(fmt.Sprintf("missing %s: run make build", b))
		}
	}
	stateDir, err := os.MkdirTemp("", "meridian-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	start := time.Now()
	l, err := lab.Up(ctx, lab.Options{Nodes: 3, BinDir: binDir, StateDir: stateDir, Log: log})
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: lab up: %v\n", err)
		dumpLogs(stateDir)
		_ = lab.Down(context.Background(), stateDir)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: lab up in %s\n", time.Since(start).Round(time.Millisecond))
	theLab, labStateDir = l, stateDir
	code := m.Run()
	if code != 0 {
		dumpLogs(stateDir)
	}
	if err := lab.Down(context.Background(), stateDir); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: lab down: %v\n", err)
		return 1
	}
	return code
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
	if theLab == nil {
		t.Skip("lab not running (needs root and MERIDIAN_BIN_DIR)")
	}
	return theLab
}
