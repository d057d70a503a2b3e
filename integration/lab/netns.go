package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces are bind-mounted, as iproute2
// and the CNI ecosystem expect (/var/run is a symlink to /run on Debian).
const netnsDir = "/run/netns"

// etcNetnsDir holds per-namespace files that `ip netns exec` bind-mounts
// over /etc (resolv.conf and the like).
const etcNetnsDir = "/etc/netns"

func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

// createNetns makes a named network namespace. netns.NewNamed unshares the
// calling thread into the new namespace, so this runs on a locked thread
// that is put back into its original namespace before it is unlocked. The
// thread may be the process's main thread, whose namespace is what
// /proc/PID/ns/net shows; and were it left in the new namespace, the Go
// runtime would discard an ordinary thread but wedge the main one there.
func createNetns(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			// Nothing switched yet: the thread is fine to reuse.
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("create netns %s: open own netns: %w", name, err)
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		} else {
			err = fmt.Errorf("create netns %s: %w", name, err)
		}
		if rerr := netns.Set(orig); rerr != nil {
			// Stay locked: the runtime discards the thread on exit.
			errc <- errors.Join(err, fmt.Errorf("create netns %s: restore thread netns: %w", name, rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// deleteNetns removes a named network namespace; an absent one is not an
// error. The kernel frees the namespace (and its links) once no process and
// no open handle refers to it.
func deleteNetns(name string) error {
	p := netnsPath(name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	return nil
}

// listNetns returns the named network namespaces whose names start with
// prefix.
func listNetns(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

func netnsExists(name string) bool {
	_, err := os.Stat(netnsPath(name))
	return err == nil
}

// nsID identifies a namespace the way the kernel does: nsfs device and
// inode. Two paths (a bind mount, /proc/PID/ns/net) name the same namespace
// exactly when their nsIDs match.
type nsID struct{ dev, ino uint64 }

func statNS(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// openNetns returns a handle to a named namespace; the caller closes it.
func openNetns(name string) (netns.NsHandle, error) {
	h, err := netns.GetFromName(name)
	if err != nil {
		return netns.None(), fmt.Errorf("open netns %s: %w", name, err)
	}
	return h, nil
}
