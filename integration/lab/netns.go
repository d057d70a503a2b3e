package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/integration/namedns"
)

// netnsDir is where named network namespaces are bind-mounted, as iproute2
// and the CNI ecosystem expect (/var/run is a symlink to /run on Debian).
const netnsDir = "/run/netns"

// etcNetnsDir holds per-namespace files that `ip netns exec` bind-mounts
// over /etc (resolv.conf and the like).
const etcNetnsDir = "/etc/netns"

func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

// createNetns makes a named network namespace without moving any thread of
// this process (see namedns.Create).
func createNetns(name string) error { return namedns.Create(name) }

// deleteNetns removes a named network namespace; an absent one is not an
// error.
func deleteNetns(name string) error { return namedns.Delete(name) }

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
