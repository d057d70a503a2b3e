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
	"time"
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
	// mlab0 goes with the fabric. Deleting it when this process sees no
	// fabric would break a lab made by a process with another view of
	// /run/netns (another mount namespace) in the same network namespace.
	if slices.Contains(names, FabricNetns) {
		if err := deleteHostLink(); err != nil {
			errs = append(errs, err)
		}
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
