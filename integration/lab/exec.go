package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/integration/nodeagent/container"
)

// NetnsExecCommand is the hidden meridian-lab subcommand the lab re-executes
// itself with to start a daemon inside a namespace:
//
//	meridian-lab netns-exec [--bind SRC:DST]... NAME -- CMD ARGS...
const NetnsExecCommand = "netns-exec"

// Bind is a directory of the host bound over another in a node's own view
// of the file system (see NetnsExec).
type Bind struct{ Source, Target string }

// ParseBind reads SRC:DST.
func ParseBind(s string) (Bind, error) {
	src, dst, ok := strings.Cut(s, ":")
	if !ok || !filepath.IsAbs(src) || !filepath.IsAbs(dst) {
		return Bind{}, fmt.Errorf("bind %q: want SRC:DST, both absolute", s)
	}
	return Bind{Source: filepath.Clean(src), Target: filepath.Clean(dst)}, nil
}

func (b Bind) String() string { return b.Source + ":" + b.Target }

// NetnsExec switches the calling thread into the named network namespace
// and replaces the process with argv. It returns only on error. execve keeps
// the calling thread's namespaces, so argv runs in the namespace from its
// first instruction.
//
// Without binds the mount namespace stays the host's. With binds argv gets a
// mount namespace of its own, the node's view of the disk: every bind's
// source is mounted over its target there and nowhere else, which is how
// lab nodes sharing one host each get their own /var/lib/meridian, CNI
// directories and API socket (the chart's hostPath volumes). Only
// /run/netns stays shared with the host, both ways, so the pod netns a node
// agent mounts are everyone's, as they are with one mount namespace.
func NetnsExec(name string, binds []Bind, argv []string) error {
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
	if len(binds) > 0 {
		if err := enterNodeMountNS(binds); err != nil {
			return fmt.Errorf("netns-exec %s: %w", name, err)
		}
	}
	if err := syscall.Exec(path, argv, os.Environ()); err != nil {
		return fmt.Errorf("netns-exec %s: exec %s: %w", name, path, err)
	}
	return nil
}

// enterNodeMountNS gives the calling (locked) thread a mount namespace of
// its own with binds applied. Mounts are copied from the host's with their
// propagation: every one but /run/netns and what lies under it is made
// private first, so the binds never reach the host, while pod netns mounts
// under /run/netns travel both ways.
func enterNodeMountNS(binds []Bind) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	mounts, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	for _, mp := range mountPoints(string(mounts)) {
		if mp == netnsRunDir || strings.HasPrefix(mp, netnsRunDir+"/") {
			continue
		}
		// Shadowed mount points cannot be addressed by path; EINVAL and
		// ENOENT for those are harmless, since the binds below land on
		// mounts that can.
		if err := unix.Mount("", mp, "", unix.MS_PRIVATE, ""); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("make %s private: %w", mp, err)
		}
	}
	for _, b := range binds {
		if err := unix.Mount(b.Source, b.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s over %s: %w", b.Source, b.Target, err)
		}
	}
	return nil
}

// netnsRunDir is where named network namespaces are mounted.
const netnsRunDir = "/run/netns"

// mountPoints lists the mount points (field 5) of a mountinfo, unescaping
// the octal escapes the kernel writes for spaces and the like.
func mountPoints(mountinfo string) []string {
	var out []string
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		out = append(out, container.UnescapeMountinfo(f[4]))
	}
	return out
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
