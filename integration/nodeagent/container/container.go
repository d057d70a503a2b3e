// Package container is the lab's container runtime: a minimal OCI-style
// runtime, in the manner of runc but without cgroups, user namespaces or
// PID namespaces, that runs a process from an unpacked image in its own
// mount namespace with bind mounts, a read-only root, a reduced capability
// bounding set and no_new_privs. It knows nothing about Kubernetes objects;
// the lab's node agent translates a pod's container into a Spec.
//
// Start clones the lab binary's hidden `container-init` subcommand into a
// new mount namespace; that process (Init) builds the container's
// filesystem, pivots into it, drops privileges and execs the container's
// command, so the process Start returns is the container.
package container

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Propagation is a mount's propagation, named as in Kubernetes'
// corev1.MountPropagationMode.
type Propagation string

const (
	// PropagationNone is a private mount: no mount events either way.
	PropagationNone Propagation = "None"
	// PropagationHostToContainer is an rslave mount: mounts made on the host
	// under the source appear in the container, none go back.
	PropagationHostToContainer Propagation = "HostToContainer"
	// PropagationBidirectional is an rshared mount: mounts propagate both
	// ways. The source must be on a shared mount on the host.
	PropagationBidirectional Propagation = "Bidirectional"
)

// Mount is a bind mount of a host path into the container.
type Mount struct {
	Source      string // host path (file or directory)
	Target      string // absolute path inside the container
	ReadOnly    bool
	Propagation Propagation // empty means None
}

// Spec is what to run and how.
type Spec struct {
	Rootfs         string
	ReadOnlyRootfs bool
	Mounts         []Mount
	// Args is the argv; Args[0] is absolute inside the rootfs or looked up
	// in the PATH of Env inside the rootfs.
	Args []string
	Env  []string
	Cwd  string // default "/"
	// Privileged keeps every capability and leaves /proc/sys and /sys
	// writable.
	Privileged bool
	// Capabilities is the container's capability set when not privileged,
	// names without CAP_ (see EffectiveCapabilities).
	Capabilities    []string
	NoNewPrivileges bool
	// NetNS is the path of a network namespace to run in (/run/netns/x);
	// empty keeps the network namespace of the thread calling Start.
	NetNS string
}

// InitCommand is the hidden subcommand of the lab binary whose main calls
// Init: Start's initArgv is {the binary, InitCommand}.
const InitCommand = "container-init"

// The fds the init finds its spec on and reports failure through.
const (
	specFD   = 3
	statusFD = 4
)

func (s Spec) validate() error {
	if s.Rootfs == "" {
		return errors.New("spec has no rootfs")
	}
	if len(s.Args) == 0 || s.Args[0] == "" {
		return errors.New("spec has no command")
	}
	if s.Cwd != "" && !strings.HasPrefix(s.Cwd, "/") {
		return fmt.Errorf("working directory %q is not absolute", s.Cwd)
	}
	for _, m := range s.Mounts {
		if !strings.HasPrefix(m.Target, "/") {
			return fmt.Errorf("mount target %q is not absolute", m.Target)
		}
		switch m.Propagation {
		case "", PropagationNone, PropagationHostToContainer, PropagationBidirectional:
		default:
			return fmt.Errorf("mount %s: unknown propagation %q", m.Target, m.Propagation)
		}
	}
	if !s.Privileged {
		for _, c := range s.Capabilities {
			if _, err := canonicalCapability(c); err != nil {
				return err
			}
		}
	}
	return nil
}

// Start runs the container: it starts initArgv (the lab binary's hidden
// `container-init` subcommand, e.g. {"/path/meridian-lab",
// "container-init"}, whose main calls Init) in a new mount namespace and
// session, hands it the spec on fd 3 and waits until it has exec'd the
// container's command: the process returned is the container (same pid),
// and the caller Waits on it. stdout and stderr receive the container's
// output (nil: /dev/null).
//
// When the init fails before exec, Start reaps it and returns its error
// text, which the init writes to fd 4; a successful exec closes fd 4
// (close-on-exec), as in runc.
//
// The container runs in Spec.NetNS, or else in the network namespace of the
// calling thread: the clone happens on it.
func Start(spec Spec, initArgv []string, stdout, stderr *os.File) (*os.Process, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	if len(initArgv) == 0 {
		return nil, errors.New("no init command")
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("encode spec: %w", err)
	}
	devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer devNull.Close()
	if stdout == nil {
		stdout = devNull
	}
	if stderr == nil {
		stderr = devNull
	}
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("spec pipe: %w", err)
	}
	defer specR.Close()
	defer specW.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("status pipe: %w", err)
	}
	defer statusR.Close()
	defer statusW.Close()

	proc, err := os.StartProcess(initArgv[0], initArgv, &os.ProcAttr{
		Files: []*os.File{devNull, stdout, stderr, specR, statusW},
		Sys: &syscall.SysProcAttr{
			// Cloneflags, not Unshareflags: with Unshareflags the Go
			// runtime remounts / private in the child, which would cut
			// HostToContainer mounts off their host peers.
			Cloneflags: syscall.CLONE_NEWNS,
			// Its own session, so the agent's terminal signals and its
			// process group's fate do not reach the container.
			Setsid: true,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("start container init %s: %w", initArgv[0], err)
	}
	// The child holds its own copies; keeping ours open would hide the
	// EOF that says it exec'd.
	specR.Close()
	statusW.Close()

	// A spec larger than the pipe buffer blocks until the init reads it,
	// so the write must not wait for the status read.
	writeErr := make(chan error, 1)
	go func() {
		_, err := specW.Write(data)
		specW.Close()
		writeErr <- err
	}()
	status, readErr := io.ReadAll(statusR)
	werr := <-writeErr
	if len(status) == 0 && readErr == nil {
		// EOF with no message: the init exec'd (or died without a word,
		// which the caller's Wait will report).
		return proc, nil
	}
	ps, waitErr := proc.Wait()
	msg := strings.TrimSpace(string(status))
	if msg == "" {
		msg = fmt.Sprintf("read init status: %v; write spec: %v", readErr, werr)
	}
	if waitErr == nil {
		msg += " (init " + ps.String() + ")"
	}
	return nil, fmt.Errorf("container init: %s", msg)
}

// StartTime is the start time of process pid in clock ticks since boot
// (/proc/<pid>/stat field 22), so a caller that outlives its container's
// parent (an agent restart) can tell its container from a process that got
// the same pid later.
func StartTime(pid int) (uint64, error) {
	st, err := ReadProcStat(pid)
	return st.Start, err
}

// ProcStat is the part of /proc/PID/stat that tells a process apart from
// a later one with its pid: its state (field 3) and start time (field 22,
// clock ticks since boot).
type ProcStat struct {
	State byte
	Start uint64
}

// ReadProcStat reads pid's ProcStat.
func ReadProcStat(pid int) (ProcStat, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcStat{}, fmt.Errorf("read process %d: %w", pid, err)
	}
	st, err := ParseProcStat(string(data))
	if err != nil {
		return ProcStat{}, fmt.Errorf("process %d: %w", pid, err)
	}
	return st, nil
}

// ParseProcStat reads a /proc/PID/stat line. comm (field 2) may hold
// spaces and parentheses, so fields are counted from the last ')'.
func ParseProcStat(s string) (ProcStat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ProcStat{}, fmt.Errorf("malformed stat %q", s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || len(f[0]) != 1 {
		return ProcStat{}, fmt.Errorf("malformed stat %q", s)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return ProcStat{}, fmt.Errorf("malformed starttime in stat: %w", err)
	}
	return ProcStat{State: f[0][0], Start: start}, nil
}

// Alive reports whether pid runs and, when start is non-zero, is the
// process that started then. Zombies count as dead: they run nothing and
// wait only for their parent to reap them.
func Alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := ReadProcStat(pid)
	if err != nil || st.State == 'Z' || st.State == 'X' {
		return false
	}
	return start == 0 || st.Start == start
}
