package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
)

// NetnsExecCommand is the hidden meridian-lab subcommand the lab re-executes
// itself with to start a daemon inside a namespace:
//
//	meridian-lab netns-exec NAME -- CMD ARGS...
const NetnsExecCommand = "netns-exec"

// NetnsExec switches the calling thread into the named network namespace
// and replaces the process with argv. It returns only on error. execve keeps
// the calling thread's namespaces, so argv runs in the namespace from its
// first instruction; the mount namespace stays the host's, so named
// namespaces a daemon creates (pod netns) are visible to everyone.
func NetnsExec(name string, argv []string) error {
	if len(argv) == 0 {
		return fmt.Errorf("netns-exec %s: no command", name)
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("netns-exec %s: %w", name, err)
	}
	// Never unlocked: if Exec fails the process exits anyway.
	runtime.LockOSThread()
	h, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("netns-exec: open netns %s: %w", name, err)
	}
	if err := netns.Set(h); err != nil {
		return fmt.Errorf("netns-exec: enter netns %s: %w", name, err)
	}
	h.Close()
	if err := syscall.Exec(path, argv, os.Environ()); err != nil {
		return fmt.Errorf("netns-exec %s: exec %s: %w", name, path, err)
	}
	return nil
}

// IPNetnsExecArgv is the command line that runs argv in a named namespace the
// way users expect from `ip netns exec`: besides the network namespace it
// gives argv a /sys of that namespace and bind-mounts /etc/netns/NAME/* over
// /etc (resolv.conf for pods).
func IPNetnsExecArgv(name string, argv ...string) []string {
	return append([]string{"ip", "netns", "exec", name}, argv...)
}

// execIn runs argv in the named namespace and returns its combined output.
func execIn(ctx context.Context, name string, argv []string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("exec in %s: no command", name)
	}
	if !netnsExists(name) {
		return nil, fmt.Errorf("exec in %s: netns does not exist", name)
	}
	full := IPNetnsExecArgv(name, argv...)
	out, err := exec.CommandContext(ctx, full[0], full[1:]...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("exec %q in %s: %w", argv, name, err)
	}
	return out, nil
}
