// Package namedns creates and deletes named network namespaces the way
// `ip netns add` / `ip netns delete` do, for the lab and its node agents.
package namedns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named namespaces are bind-mounted (netns.NewNamed's and
// iproute2's directory).
const Dir = "/var/run/netns"

// Path is the bind mount of the named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Create makes the named namespace. netns.NewNamed unshares the calling
// thread into the new namespace, so it runs on a thread of its own that is
// put back into its original namespace before it is unlocked; if that
// fails the thread stays locked and the runtime discards it. A thread left
// in the new namespace would run other goroutines there, and were it the
// main thread it would change what /proc/PID/ns/net shows.
func Create(name string) error {
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
			errc <- errors.Join(err, fmt.Errorf("create netns %s: restore thread netns: %w", name, rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// Delete unmounts and removes the named namespace; an absent one, or a file
// that is no longer mounted, is not an error. The kernel frees the
// namespace (and its links) once no process or open handle refers to it.
func Delete(name string) error {
	p := Path(name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	return nil
}
