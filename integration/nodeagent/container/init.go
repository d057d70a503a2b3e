package container

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// defaultPath is where Args[0] is looked up when Env sets no PATH (the
// PATH containerd gives a container whose image sets none).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Init is the body of the hidden `container-init` subcommand that Start
// runs: it reads the spec from fd 3, sets up the mount namespace Start
// cloned it into, pivots into the rootfs, drops privileges and execs the
// container's command. It returns only on error, after writing the error
// to fd 4 for Start to report; the caller prints it and exits non-zero.
func Init() error {
	// Capabilities and no_new_privs are per thread, and the exec must
	// happen on the thread that has them; the mount namespace and the root
	// are shared by all threads (the whole process was cloned into it).
	runtime.LockOSThread()
	status := os.NewFile(statusFD, "status")
	if status == nil {
		return errors.New("container-init: no status fd; run it through container.Start")
	}
	// Closed by a successful exec: the EOF Start waits for.
	syscall.CloseOnExec(statusFD)
	err := initContainer()
	fmt.Fprint(status, err.Error())
	status.Close()
	return err
}

func initContainer() error {
	specFile := os.NewFile(specFD, "spec")
	if specFile == nil {
		return errors.New("no spec fd")
	}
	var spec Spec
	err := json.NewDecoder(specFile).Decode(&spec)
	specFile.Close()
	if err != nil {
		return fmt.Errorf("read spec: %w", err)
	}
	if err := spec.validate(); err != nil {
		return err
	}
	if spec.NetNS != "" {
		if err := joinNetNS(spec.NetNS); err != nil {
			return err
		}
	}
	// Before pivoting: the container's /proc/sys may not say it (and it is
	// the host's kernel that matters).
	lastCap, err := readLastCap()
	if err != nil {
		return err
	}
	rootfs, err := filepath.EvalSymlinks(spec.Rootfs)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	if rootfs, err = filepath.Abs(rootfs); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}

	// 1. The container receives the host's mount events (new /run/netns
	// entries) and sends none back; with a Bidirectional mount the tree
	// stays shared instead, as containerd asks runc to (rootfsPropagation
	// rshared), and the mounts below decide what crosses.
	bidirectional := slices.ContainsFunc(spec.Mounts, func(m Mount) bool { return m.Propagation == PropagationBidirectional })
	rootProp := uintptr(unix.MS_SLAVE)
	if bidirectional {
		rootProp = unix.MS_SHARED
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|rootProp, ""); err != nil {
		return fmt.Errorf("set propagation of /: %w", err)
	}
	if bidirectional {
		// runc's rootfsParentMountPrivate: the rootfs bind and everything
		// under it must not propagate to the host, and pivot_root refuses
		// a shared parent.
		if err := makeParentPrivate(rootfs); err != nil {
			return err
		}
	}

	// 2. The rootfs becomes a mount point, which pivot_root needs.
	if err := unix.Mount(rootfs, rootfs, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind rootfs %s: %w", rootfs, err)
	}

	// 3. The kernel filesystems.
	if err := mountProc(rootfs, spec.Privileged); err != nil {
		return err
	}
	if err := mountSys(rootfs, spec.Privileged); err != nil {
		return err
	}
	if err := mountDev(rootfs); err != nil {
		return err
	}

	// 4. The spec's mounts, in order, so a later one may sit inside an
	// earlier one.
	for _, m := range spec.Mounts {
		if err := bindMount(rootfs, m); err != nil {
			return err
		}
	}

	// 5. Only the rootfs mount itself: the mounts on it keep their own
	// flags.
	if spec.ReadOnlyRootfs {
		if err := remountReadOnly(rootfs); err != nil {
			return err
		}
	}

	// 6.
	if err := pivotRoot(rootfs); err != nil {
		return err
	}
	cwd := spec.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if err := os.Chdir(cwd); err != nil {
		return fmt.Errorf("working directory %s: %w", cwd, err)
	}

	// 7.
	if !spec.Privileged {
		if err := limitCapabilities(spec.Capabilities, lastCap); err != nil {
			return err
		}
	}
	if spec.NoNewPrivileges {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("set no_new_privs: %w", err)
		}
	}

	// 8.
	argv0, err := lookPath(spec.Args[0], spec.Env)
	if err != nil {
		return err
	}
	if err := syscall.Exec(argv0, spec.Args, spec.Env); err != nil {
		return fmt.Errorf("exec %s: %w", argv0, err)
	}
	return errors.New("exec returned")
}

func joinNetNS(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("network namespace: %w", err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("join network namespace %s: %w", p, err)
	}
	return nil
}

func readLastCap() (int, error) {
	data, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	return n, nil
}

// makeParentPrivate makes the mount holding dir private if it is shared.
func makeParentPrivate(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	var best string
	var shared bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options optional... - fstype ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 {
			continue
		}
		mp := UnescapeMountinfo(fields[4])
		if (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best = mp
			shared = false
			for _, opt := range fields[6:] {
				if opt == "-" {
					break
				}
				if strings.HasPrefix(opt, "shared:") {
					shared = true
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	if !shared {
		return nil
	}
	if err := unix.Mount("", best, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", best, err)
	}
	return nil
}

// UnescapeMountinfo undoes the kernel's octal escapes (\040 for a space)
// in a /proc/*/mountinfo field.
func UnescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// inRoot resolves p, a path inside the container, to a host path under
// rootfs, following the symlinks it meets the way the container will see
// them (an absolute link target starts again at the rootfs, ".." stops at
// it), so an image's /var/run -> /run link cannot aim a mount at the
// host's /run.
func inRoot(rootfs, p string) (string, error) {
	resolved := "/"
	parts := strings.Split(p, "/")
	links := 0
	for len(parts) > 0 {
		part := parts[0]
		parts = parts[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			resolved = path.Dir(resolved)
			continue
		}
		next := path.Join(resolved, part)
		fi, err := os.Lstat(filepath.Join(rootfs, next))
		if errors.Is(err, fs.ErrNotExist) {
			resolved = next
			continue
		}
		if err != nil {
			return "", fmt.Errorf("resolve %s in rootfs: %w", p, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if links++; links > 40 {
			return "", fmt.Errorf("resolve %s in rootfs: too many symlinks", p)
		}
		target, err := os.Readlink(filepath.Join(rootfs, next))
		if err != nil {
			return "", fmt.Errorf("resolve %s in rootfs: %w", p, err)
		}
		if path.IsAbs(target) {
			resolved = "/"
		}
		parts = append(strings.Split(target, "/"), parts...)
	}
	return filepath.Join(rootfs, resolved), nil
}

// mountPoint creates what a mount needs at target: a directory, or an empty
// file when the source is a file. The rootfs is the image cache every
// container of the image shares; creating empty mount points in it is what
// a runtime without a copy-on-write layer has to do, and harmless: they are
// empty and the image's content is untouched.
func mountPoint(target string, file bool) error {
	if fi, err := os.Stat(target); err == nil {
		if fi.IsDir() == file {
			return fmt.Errorf("mount point %s: source and target differ in type", target)
		}
		return nil
	}
	dir := target
	if file {
		dir = filepath.Dir(target)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create mount point %s: %w", dir, err)
	}
	if file {
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return fmt.Errorf("create mount point %s: %w", target, err)
		}
		f.Close()
	}
	return nil
}

func mountProc(rootfs string, privileged bool) error {
	target := filepath.Join(rootfs, "proc")
	if err := mountPoint(target, false); err != nil {
		return err
	}
	if err := unix.Mount("proc", target, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount proc on %s: %w", target, err)
	}
	if privileged {
		return nil
	}
	// What containerd and runc do (readonlyPaths): kernel tunables are the
	// host's (or the netns's) and not the container's to change. This is
	// why the chart sets ip_forward in a privileged init container.
	for _, p := range []string{"sys", "sysrq-trigger"} {
		t := filepath.Join(target, p)
		// A kernel without CONFIG_MAGIC_SYSRQ has no sysrq-trigger; runc
		// skips read-only paths that do not exist.
		if _, err := os.Stat(t); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := unix.Mount(t, t, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s on itself: %w", t, err)
		}
		if err := remountReadOnly(t); err != nil {
			return err
		}
	}
	return nil
}

func mountSys(rootfs string, privileged bool) error {
	target := filepath.Join(rootfs, "sys")
	if err := mountPoint(target, false); err != nil {
		return err
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if !privileged {
		flags |= unix.MS_RDONLY
	}
	// A fresh sysfs shows the devices of the network namespace mounting
	// it, the one the container runs in.
	if err := unix.Mount("sysfs", target, "sysfs", flags, ""); err != nil {
		return fmt.Errorf("mount sysfs on %s: %w", target, err)
	}
	return nil
}

// hostDevices are bound from the host into the container's /dev (runc's
// default devices, without a device cgroup to limit them).
var hostDevices = []string{"null", "zero", "full", "random", "urandom", "tty"}

func mountDev(rootfs string) error {
	dev := filepath.Join(rootfs, "dev")
	if err := mountPoint(dev, false); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_STRICTATIME, "mode=755,size=65536k"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dev, err)
	}
	for _, d := range hostDevices {
		t := filepath.Join(dev, d)
		if err := mountPoint(t, true); err != nil {
			return err
		}
		if err := unix.Mount("/dev/"+d, t, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mount /dev/%s on %s: %w", d, t, err)
		}
	}
	shm := filepath.Join(dev, "shm")
	if err := mountPoint(shm, false); err != nil {
		return err
	}
	if err := unix.Mount("shm", shm, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=65536k"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", shm, err)
	}
	pts := filepath.Join(dev, "pts")
	if err := mountPoint(pts, false); err != nil {
		return err
	}
	if err := unix.Mount("devpts", pts, "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("mount devpts on %s: %w", pts, err)
	}
	for name, target := range map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return fmt.Errorf("create /dev/%s: %w", name, err)
		}
	}
	return nil
}

func bindMount(rootfs string, m Mount) error {
	fi, err := os.Stat(m.Source)
	if err != nil {
		return fmt.Errorf("mount source: %w", err)
	}
	target, err := inRoot(rootfs, m.Target)
	if err != nil {
		return err
	}
	if err := mountPoint(target, !fi.IsDir()); err != nil {
		return err
	}
	if err := unix.Mount(m.Source, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.Source, target, err)
	}
	if m.ReadOnly {
		if err := remountReadOnly(target); err != nil {
			return err
		}
	}
	prop := uintptr(unix.MS_PRIVATE)
	switch m.Propagation {
	case PropagationHostToContainer:
		prop = unix.MS_SLAVE
	case PropagationBidirectional:
		prop = unix.MS_SHARED
	}
	if err := unix.Mount("", target, "", unix.MS_REC|prop, ""); err != nil {
		return fmt.Errorf("set propagation %s of %s: %w", m.Propagation, target, err)
	}
	return nil
}

// remountReadOnly makes the bind mount at target read-only, keeping the
// nosuid/nodev/noexec/atime flags it has: a bind remount replaces them all,
// and the kernel refuses to clear flags that are locked.
func remountReadOnly(target string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", target, err)
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY)
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_NOSUID, unix.MS_NOSUID},
		{unix.ST_NODEV, unix.MS_NODEV},
		{unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME},
		{unix.ST_NODIRATIME, unix.MS_NODIRATIME},
		{unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	if err := unix.Mount("", target, "", flags, ""); err != nil {
		return fmt.Errorf("remount %s read-only: %w", target, err)
	}
	return nil
}

func pivotRoot(rootfs string) error {
	oldRoot, err := unix.Open("/", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /: %w", err)
	}
	defer unix.Close(oldRoot)
	if err := os.Chdir(rootfs); err != nil {
		return fmt.Errorf("chdir %s: %w", rootfs, err)
	}
	// pivot_root(".", ".") stacks the old root on the new one, so no
	// directory for it is needed in a possibly read-only rootfs.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root into %s: %w", rootfs, err)
	}
	// As runc does: into the old root, so that "." below names it and not
	// the new root under it (mount(2) does not step onto a mount stacked
	// on ".", umount2 does). A recursive rslave of "." meant for the old
	// root would otherwise turn the container's Bidirectional mounts into
	// slaves.
	if err := unix.Fchdir(oldRoot); err != nil {
		return fmt.Errorf("chdir to the old root: %w", err)
	}
	// rslave before unmounting, so the unmount of a shared old root
	// cannot propagate to the host.
	if err := unix.Mount("", ".", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("set propagation of the old root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount the old root: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// limitCapabilities leaves keep in the bounding set and clears the
// ambient and inheritable sets. The process is uid 0 without file
// capabilities, so exec sets its permitted and effective sets to its
// bounding set: the container holds exactly keep.
func limitCapabilities(keep []string, lastCap int) error {
	want := map[int]bool{}
	for _, c := range keep {
		n, err := canonicalCapability(c)
		if err != nil {
			return err
		}
		want[capabilityNumbers[n]] = true
	}
	for c := 0; c <= lastCap; c++ {
		if want[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	// Root's exec adds the inheritable set to the permitted one.
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clear inheritable capabilities: %w", err)
	}
	return nil
}

// lookPath finds argv0 in the container's root (the process has pivoted),
// in the PATH of the container's environment.
func lookPath(argv0 string, env []string) (string, error) {
	if strings.Contains(argv0, "/") {
		if err := executable(argv0); err != nil {
			return "", fmt.Errorf("command %s: %w", argv0, err)
		}
		return argv0, nil
	}
	pathEnv := defaultPath
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, argv0)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("command %s: not found in PATH %s", argv0, pathEnv)
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}
