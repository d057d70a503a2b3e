package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Down removes the lab: every process in a lab namespace or recorded in a
// pid file, every mlab-* namespace (pods' too), the host link, the
// /etc/netns/mlab-* files and the state directory ("" for the default). It
// needs neither a complete Up nor the state files, and is idempotent.
func Down(ctx context.Context, stateDir string) error {
	return DownWithLogger(ctx, stateDir, nil)
}

// DownWithLogger is Down with a logger.
func DownWithLogger(ctx context.Context, stateDir string, log *slog.Logger) error {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := checkStateDir(stateDir); err != nil {
		return err
	}
	if err := acquireHost(ctx, log); err != nil {
		return err
	}
	defer releaseHost(1)
	err := down(ctx, stateDir, log)
	// The lab this process brought up is gone (or as gone as Down could
	// make it): its hold on the host ends.
	releaseLabs()
	return err
}

func down(ctx context.Context, stateDir string, log *slog.Logger) error {
	t0 := time.Now()
	s := layout{dir: stateDir}
	launch := s.launcher("")
	var errs []error

	// Orderly stop of what the pid files know: node processes first (they
	// talk to the API server), then the controllers, then the API server
	// alone (stopped together with etcd it takes a minute to exit), then
	// etcd.
	recorded, err := launch.list()
	if err != nil {
		errs = append(errs, err)
	}
	var nodeProcs []string
	for _, p := range recorded {
		if nodeOfProc(p.Name) != "" {
			nodeProcs = append(nodeProcs, p.Name)
		}
	}
	for _, step := range []struct {
		grace time.Duration
		names []string
	}{
		{daemonStopGrace, nodeProcs},
		{daemonStopGrace, []string{procControllerManager, procScheduler}},
		{apiStopGrace, []string{procAPIServer}},
		{daemonStopGrace, []string{procEtcd}},
	} {
		if err := launch.stop(ctx, step.grace, step.names...); err != nil {
			errs = append(errs, err)
		}
	}

	// Then whatever else lives in a lab namespace: pod stand-ins, exec
	// sessions, daemons of a lab whose state directory is gone.
	names, err := listNetns(NetnsPrefix)
	if err != nil {
		errs = append(errs, err)
	}
	if err := killInNetns(ctx, names); err != nil {
		errs = append(errs, err)
	}
	if err := killRecorded(ctx, launch); err != nil {
		errs = append(errs, err)
	}

	// Pods first, the fabric last: deleting a namespace deletes its veth
	// ends, and deleting the fabric takes the bridge and host link along.
	slices.SortFunc(names, func(a, b string) int { return netnsDeleteRank(a) - netnsDeleteRank(b) })
	for _, n := range names {
		if err := deleteNetns(n); err != nil {
			errs = append(errs, err)
		}
	}
	if err := deleteHostLink(); err != nil {
		errs = append(errs, err)
	}
	if err := removeEtcNetns(); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(stateDir); err != nil {
		errs = append(errs, fmt.Errorf("remove state dir: %w", err))
	}
	if len(errs) == 0 {
		log.Info("lab down", "netns", len(names), "took", time.Since(t0).Round(time.Millisecond))
	}
	return errors.Join(errs...)
}

func netnsDeleteRank(name string) int {
	switch {
	case strings.HasPrefix(name, PodNetnsPrefix):
		return 0
	case name == FabricNetns:
		return 2
	default:
		return 1
	}
}

// killInNetns ends every process in the named namespaces.
func killInNetns(ctx context.Context, names []string) error {
	ids := map[nsID]string{}
	for _, n := range names {
		id, err := statNS(netnsPath(n))
		if err != nil {
			continue // not mounted (half-made or already deleted)
		}
		ids[id] = n
	}
	if len(ids) == 0 {
		return nil
	}
	procs, err := procsInNetns(ids)
	if err != nil {
		return err
	}
	return terminate(ctx, daemonStopGrace, procs)
}

// killRecorded ends pid-file processes that are still alive, for example
// those that failed before entering their namespace.
func killRecorded(ctx context.Context, launch launcher) error {
	recorded, err := launch.list()
	if err != nil {
		return err
	}
	var live []procInfo
	for _, p := range recorded {
		if p.Alive {
			live = append(live, p)
		}
	}
	return terminate(ctx, daemonStopGrace, live)
}

func removeEtcNetns() error {
	matches, err := filepath.Glob(filepath.Join(etcNetnsDir, NetnsPrefix+"*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range matches {
		if err := os.RemoveAll(m); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Leftovers describes what of a lab remains on the host: mlab-* namespaces,
// the host link, processes in lab namespaces, the state directory. Empty
// means clean; tests assert on it after Down.
func Leftovers(stateDir string) ([]string, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	var out []string
	names, err := listNetns(NetnsPrefix)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		out = append(out, "netns "+n)
	}
	ids := map[nsID]string{}
	for _, n := range names {
		if id, err := statNS(netnsPath(n)); err == nil {
			ids[id] = n
		}
	}
	if len(ids) > 0 {
		procs, err := procsInNetns(ids)
		if err != nil {
			return nil, err
		}
		for _, p := range procs {
			out = append(out, "process "+p.Name)
		}
	}
	if ok, err := hostLinkExists(); err != nil {
		return nil, err
	} else if ok {
		out = append(out, "link "+HostLink)
	}
	if m, _ := filepath.Glob(filepath.Join(etcNetnsDir, NetnsPrefix+"*")); len(m) > 0 {
		out = append(out, m...)
	}
	if _, err := os.Stat(stateDir); err == nil {
		out = append(out, "state dir "+stateDir)
	}
	return out, nil
}

// hostLockPath guards the host's one set of mlab-* names between processes.
// A process holds it (flock) from Up to Down, and around a Down or a
// LockHost; it is reentrant within the process. So a test binary that has a
// lab up keeps other test binaries' Up and `meridian-lab up/down` waiting
// instead of replacing its lab underneath it, and the kernel releases the
// lock when a holder dies. `meridian-lab up` exits with its lab running and
// so holds nothing afterwards: the next Up replaces that lab, as documented.
const hostLockPath = "/run/meridian-lab.lock"

// hostLock is this process's hold on hostLockPath. It is process-wide by
// nature (flock belongs to an open file, and a second open file in the same
// process would deadlock against the first), hence a package variable.
var hostLock struct {
	mu sync.Mutex
	f  *os.File
	// refs counts holders in this process: LockHost callers, Down in
	// progress, and labRefs.
	refs int
	// labRefs counts Ups not yet ended by a Down.
	labRefs int
}

// acquireHost takes one reference on the host lock, waiting for other
// processes to let go.
func acquireHost(ctx context.Context, log *slog.Logger) error {
	hostLock.mu.Lock()
	defer hostLock.mu.Unlock()
	if hostLock.refs > 0 {
		hostLock.refs++
		return nil
	}
	f, err := os.OpenFile(hostLockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("open lock %s: %w", hostLockPath, err)
	}
	logged := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return fmt.Errorf("lock %s: %w", hostLockPath, err)
		}
		if !logged && log != nil {
			holder, _ := os.ReadFile(hostLockPath)
			log.Info("waiting for another process using the lab", "holder", strings.TrimSpace(string(holder)))
			logged = true
		}
		select {
		case <-ctx.Done():
			holder, _ := os.ReadFile(hostLockPath)
			f.Close()
			return fmt.Errorf("the lab is in use by %s: %w", strings.TrimSpace(string(holder)), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	// Who holds it, for the message of whoever waits next.
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d (%s)\n", os.Getpid(), strings.Join(os.Args, " "))), 0)
	hostLock.f = f
	hostLock.refs = 1
	return nil
}

// releaseHost drops n references; the last one unlocks.
func releaseHost(n int) {
	hostLock.mu.Lock()
	defer hostLock.mu.Unlock()
	hostLock.refs -= n
	if hostLock.refs <= 0 && hostLock.f != nil {
		_ = hostLock.f.Truncate(0)
		hostLock.f.Close()
		hostLock.f = nil
		hostLock.refs = 0
	}
}

// holdForLab turns a reference taken by Up into the lab's, released by Down.
func holdForLab() {
	hostLock.mu.Lock()
	hostLock.labRefs++
	hostLock.mu.Unlock()
}

// releaseLabs drops the references of every lab this process brought up.
func releaseLabs() {
	hostLock.mu.Lock()
	n := hostLock.labRefs
	hostLock.labRefs = 0
	hostLock.mu.Unlock()
	releaseHost(n)
}

// LockHost waits until no other process uses the host's lab and holds it
// until the returned function is called. Up already holds it until Down;
// LockHost is for callers that need the host free around several Ups and
// Downs (a test suite bringing up labs of different shapes).
func LockHost(ctx context.Context) (func(), error) {
	if err := acquireHost(ctx, nil); err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { releaseHost(1) }) }, nil
}
