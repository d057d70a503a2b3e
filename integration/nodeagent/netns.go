package nodeagent

import (
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/integration/namedns"
)

// ensureNetnsDir makes the netns directory a shared mount point, as
// `ip netns add` does, so that a pod netns mounted here also shows in mount
// namespaces created later (an `ip netns exec` shell, for one) and mounts
// made by those propagate back.
func ensureNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", netnsDir, err)
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		// Not a mount point yet: bind it onto itself first, as iproute2 does.
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s onto itself: %w", netnsDir, err)
		}
		err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", netnsDir, err)
	}
	return nil
}

// createNetns makes the named netns, with lo up, unless it exists already.
// A leftover file that is not a netns mount (a create that died between
// creating the file and mounting it) is replaced.
func createNetns(name string) error {
	path := podNetnsPath(name)
	switch err := ns.IsNSorErr(path); {
	case err == nil:
		return setLoUp(name)
	case errors.As(err, new(ns.NSPathNotNSErr)):
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove stale %s: %w", path, err)
		}
	case errors.As(err, new(ns.NSPathNotExistErr)):
	default:
		return fmt.Errorf("inspect %s: %w", path, err)
	}

	if err := namedns.Create(name); err != nil {
		// A file without a mount may be left; the next attempt removes it.
		return err
	}
	return setLoUp(name)
}

// setLoUp brings up loopback inside the named netns through a netlink
// handle bound to it, so no thread changes namespace.
func setLoUp(name string) error {
	h, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", name, err)
	}
	if lo.Attrs().Flags&unix.IFF_UP != 0 {
		return nil
	}
	if err := nl.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in %s: %w", name, err)
	}
	return nil
}

// deleteNetns unmounts and removes the named netns. An absent netns, or a
// file that is no longer mounted, is not an error.
func deleteNetns(name string) error { return namedns.Delete(name) }

// netnsExists reports whether the named netns is mounted.
func netnsExists(name string) bool {
	return ns.IsNSorErr(podNetnsPath(name)) == nil
}
