package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/integration/nodeagent/container"
)

// procSpec is a daemon to start inside a namespace.
type procSpec struct {
	// Name keys the log file (logs/<Name>.log) and pid file (pids/<Name>.pid).
	Name  string
	Netns string
	Argv  []string
	Env   []string
	// Binds give the process the node's view of the disk (see NetnsExec).
	Binds []Bind
}

// execArgs are the arguments of meridian-lab that start p: netns-exec with
// p's binds.
func (p procSpec) execArgs() []string {
	argv := []string{NetnsExecCommand}
	for _, b := range p.Binds {
		argv = append(argv, "--bind", b.String())
	}
	return append(append(argv, p.Netns, "--"), p.Argv...)
}

// procInfo is a daemon as recorded in its pid file. Start is the kernel's
// start time (clock ticks since boot) and guards against pid reuse: a pid
// whose start time differs is someone else's process.
type procInfo struct {
	Name  string
	PID   int
	Start uint64
	Log   string
	Alive bool
}

// launcher starts daemons through the meridian-lab binary's netns-exec
// subcommand so each one runs in its namespace from its first instruction.
type launcher struct {
	labBin string
	logDir string
	pidDir string
}

func (l launcher) logPath(name string) string { return filepath.Join(l.logDir, name+".log") }
func (l launcher) pidPath(name string) string { return filepath.Join(l.pidDir, name+".pid") }

// start launches p detached (own session, output to its log) so it outlives
// the process that started it, and records it in its pid file.
func (l launcher) start(p procSpec) (procInfo, error) {
	if info, err := l.read(p.Name); err == nil && info.Alive {
		return info, fmt.Errorf("%s already runs as pid %d", p.Name, info.PID)
	}
	for _, d := range []string{l.logDir, l.pidDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return procInfo{}, fmt.Errorf("create %s: %w", d, err)
		}
	}
	logf, err := os.OpenFile(l.logPath(p.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return procInfo{}, fmt.Errorf("open log for %s: %w", p.Name, err)
	}
	defer logf.Close()
	cmd := exec.Command(l.labBin, p.execArgs()...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	fmt.Fprintf(logf, "--- %s meridian-lab starts %s in %s: %s\n",
		time.Now().Format(time.RFC3339), p.Name, p.Netns, strings.Join(p.Argv, " "))
	if err := cmd.Start(); err != nil {
		return procInfo{}, fmt.Errorf("start %s: %w", p.Name, err)
	}
	// Reap the child if it exits while this process lives; otherwise it
	// would linger as a zombie. When this process exits first, init
	// inherits and reaps it.
	go func() { _ = cmd.Wait() }()
	st, err := container.ReadProcStat(cmd.Process.Pid)
	if err != nil {
		// Exited and already reaped: record it anyway so the caller's
		// readiness check reports the log.
		st = container.ProcStat{}
	}
	info := procInfo{Name: p.Name, PID: cmd.Process.Pid, Start: st.Start, Log: l.logPath(p.Name), Alive: st.Start != 0}
	rec := fmt.Sprintf("%d %d\n", info.PID, info.Start)
	if err := os.WriteFile(l.pidPath(p.Name), []byte(rec), 0o644); err != nil {
		_ = unix.Kill(info.PID, unix.SIGKILL)
		return procInfo{}, fmt.Errorf("write pid file for %s: %w", p.Name, err)
	}
	return info, nil
}

// read returns the recorded process for name and whether it still runs.
func (l launcher) read(name string) (procInfo, error) {
	b, err := os.ReadFile(l.pidPath(name))
	if err != nil {
		return procInfo{Name: name, Log: l.logPath(name)}, err
	}
	var info procInfo
	if _, err := fmt.Sscanf(string(b), "%d %d", &info.PID, &info.Start); err != nil {
		return procInfo{Name: name, Log: l.logPath(name)}, fmt.Errorf("parse pid file for %s: %w", name, err)
	}
	info.Name = name
	info.Log = l.logPath(name)
	info.Alive = container.Alive(info.PID, info.Start)
	return info, nil
}

// list returns every recorded process, sorted by name.
func (l launcher) list() ([]procInfo, error) {
	entries, err := os.ReadDir(l.pidDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list pid files: %w", err)
	}
	var out []procInfo
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".pid")
		if !ok {
			continue
		}
		info, err := l.read(name)
		if err != nil {
			continue
		}
		out = append(out, info)
	}
	return out, nil
}

// signal delivers sig to the recorded process for name, if it runs.
func (l launcher) signal(name string, sig syscall.Signal) (procInfo, error) {
	info, err := l.read(name)
	if err != nil {
		return info, fmt.Errorf("%s: %w", name, err)
	}
	if !info.Alive {
		return info, fmt.Errorf("%s (pid %d) is not running", name, info.PID)
	}
	if err := unix.Kill(info.PID, sig); err != nil {
		return info, fmt.Errorf("signal %s (pid %d): %w", name, info.PID, err)
	}
	return info, nil
}

// stop ends the named processes (in parallel) with SIGTERM, then SIGKILL
// after grace, waits until they are gone and removes their pid files. Absent
// or already dead processes are fine.
func (l launcher) stop(ctx context.Context, grace time.Duration, names ...string) error {
	var procs []procInfo
	for _, n := range names {
		info, err := l.read(n)
		if err == nil && info.Alive {
			procs = append(procs, info)
		}
	}
	err := terminate(ctx, grace, procs)
	for _, n := range names {
		if info, rerr := l.read(n); rerr == nil && info.Alive {
			continue
		}
		_ = os.Remove(l.pidPath(n))
	}
	return err
}

// terminate sends SIGTERM to procs, SIGKILL to those still running after
// grace, and waits for all of them to be gone.
func terminate(ctx context.Context, grace time.Duration, procs []procInfo) error {
	if len(procs) == 0 {
		return nil
	}
	for _, p := range procs {
		_ = unix.Kill(p.PID, unix.SIGTERM)
	}
	if waitGone(ctx, grace, procs) {
		return nil
	}
	for _, p := range procs {
		if container.Alive(p.PID, p.Start) {
			_ = unix.Kill(p.PID, unix.SIGKILL)
		}
	}
	// A killed process is gone only when the kernel has torn down its
	// address space, which for a control-plane binary on a loaded 2-core
	// machine has been seen to take more than 10 s.
	if waitGone(ctx, 30*time.Second, procs) {
		return nil
	}
	var left []string
	for _, p := range procs {
		if container.Alive(p.PID, p.Start) {
			left = append(left, fmt.Sprintf("%s (pid %d)", p.Name, p.PID))
		}
	}
	return fmt.Errorf("processes still running after SIGKILL: %s", strings.Join(left, ", "))
}

func waitGone(ctx context.Context, d time.Duration, procs []procInfo) bool {
	deadline := time.Now().Add(d)
	for {
		running := false
		for _, p := range procs {
			if container.Alive(p.PID, p.Start) {
				running = true
				break
			}
		}
		if !running {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// procsInNetns finds every process whose network namespace is one of ids,
// whatever started it. It is how Down finds what pid files do not know
// about: pod processes, exec sessions, daemons of a lab whose state is lost.
func procsInNetns(ids map[nsID]string) ([]procInfo, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	self := os.Getpid()
	var out []procInfo
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		id, err := statNS(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			continue // exited, or a kernel thread
		}
		ns, ok := ids[id]
		if !ok {
			continue
		}
		st, err := container.ReadProcStat(pid)
		if err != nil || st.State == 'Z' {
			continue
		}
		out = append(out, procInfo{Name: fmt.Sprintf("pid %d in %s", pid, ns), PID: pid, Start: st.Start, Alive: true})
	}
	return out, nil
}

// tailFile returns the last n bytes of a file, for error messages that
// point at a failed daemon's log.
func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return ""
	}
	return string(buf)
}
