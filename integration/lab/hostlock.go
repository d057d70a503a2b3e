package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// hostLockAddr guards the host's one set of mlab-* names between processes.
// A process holds it from Up to Down, and around a Down or a LockHost; it is
// reentrant within the process. So a test binary that has a lab up keeps
// other test binaries' Up and `meridian-lab up/down` waiting instead of
// replacing its lab underneath it. `meridian-lab up` exits with its lab
// running and so holds nothing afterwards: the next Up replaces that lab.
//
// It is an abstract unix socket, not a lock file: abstract names belong to
// the network namespace, which is exactly what the lab's names (mlab0,
// 198.18.0.0/24) collide in, so the lock also holds between processes with
// different mount namespaces or /run views; and the kernel frees it when
// the holder dies. Go opens it close-on-exec, so daemons never inherit it.
const hostLockAddr = "@meridian-lab.lock"

// hostLock is this process's hold on hostLockAddr: process-wide by nature
// (a second bind in the same process would fail against the first), hence a
// package variable.
var hostLock struct {
	mu sync.Mutex
	l  *net.UnixListener
	// refs counts holders in this process: LockHost callers, a Down in
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
	logged := false
	for {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: hostLockAddr, Net: "unix"})
		if err == nil {
			hostLock.l = l
			hostLock.refs = 1
			return nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("lock %s: %w", hostLockAddr, err)
		}
		if !logged && log != nil {
			log.Info("waiting for another process using the lab", "holder", hostLockHolder())
			logged = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the lab is in use by %s: %w", hostLockHolder(), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// hostLockHolder names the process holding the lock, from the peer
// credentials of a connection to it (the listener's, taken at listen time,
// so the holder need not accept).
func hostLockHolder() string {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: hostLockAddr, Net: "unix"})
	if err != nil {
		return "another process"
	}
	defer c.Close()
	raw, err := c.SyscallConn()
	if err != nil {
		return "another process"
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return "another process"
	}
	cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cred.Pid))
	return fmt.Sprintf("pid %d (%s)", cred.Pid, strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " ")))
}

// releaseHost drops n references; the last one unlocks.
func releaseHost(n int) {
	hostLock.mu.Lock()
	defer hostLock.mu.Unlock()
	hostLock.refs -= n
	if hostLock.refs <= 0 && hostLock.l != nil {
		hostLock.l.Close()
		hostLock.l = nil
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
