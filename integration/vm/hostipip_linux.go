package vm

import (
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// HostHasIPIP reports whether this host's kernel can create IPIP tunnels,
// with a reason to log. The ipip module already loaded settles it; otherwise
// (root only) it tries to create an ipip link in a throw-away network
// namespace, which loads the module when the kernel has it as a module.
func HostHasIPIP() (bool, string) {
	if _, err := os.Stat("/sys/module/ipip"); err == nil {
		return true, "the ipip module is loaded"
	}
	if os.Geteuid() != 0 {
		return false, "the ipip module is not loaded (and only root could try to load it)"
	}
	if err := probeIPIP(); err != nil {
		return false, "cannot create an ipip link: " + err.Error()
	}
	return true, "an ipip link can be created"
}

func probeIPIP() error {
	ns, err := newUnnamedNS()
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	// The namespace dies with its last handle, taking the link along.
	return h.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: "mvm-probe"}})
}

// newUnnamedNS creates a network namespace held only by the returned
// handle. The switch happens on a goroutine of its own whose thread is
// discarded should it fail to switch back.
func newUnnamedNS() (netns.NsHandle, error) {
	type result struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{netns.None(), fmt.Errorf("current netns: %w", err)}
			return
		}
		defer orig.Close()
		n, err := netns.New()
		if err != nil {
			// netns.New may have unshared before failing: keep the
			// thread locked so it exits with this goroutine.
			ch <- result{netns.None(), fmt.Errorf("new netns: %w", err)}
			return
		}
		if err := netns.Set(orig); err != nil {
			n.Close()
			ch <- result{netns.None(), fmt.Errorf("return to original netns: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{n, nil}
	}()
	r := <-ch
	return r.h, r.err
}
