package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Assets are the unpacked Debian packages a VM boots from.
type Assets struct {
	Release    string // kernel release, e.g. "6.1.0-56-amd64"
	Kernel     string // the kernel image (boot/vmlinuz-<release>)
	ModulesDir string // lib/modules/<release> of the unpacked package
	Busybox    string // the statically linked busybox binary
}

// Package names: the metapackage that names the current kernel, and the
// busybox built without shared libraries (busybox alone is dynamic).
const (
	kernelMetaPackage = "linux-image-amd64"
	busyboxPackage    = "busybox-static"
	completeMarker    = ".meridian-vm-complete"
)

// Fetch makes sure cacheDir holds the kernel that linux-image-amd64 depends
// on now and busybox-static, each unpacked in a directory named after its
// package, downloading with `apt-get download` (no installation: the host's
// own kernel and busybox are left alone) and unpacking with `dpkg-deb -x`.
// An unpacked package is reused as long as apt names the same one. When apt
// cannot name the kernel (no package lists, no network), the newest kernel
// already in the cache is used.
func Fetch(ctx context.Context, cacheDir string, log *slog.Logger) (Assets, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return Assets{}, fmt.Errorf("create cache dir: %w", err)
	}
	pruneAbandonedFetches(cacheDir, log)
	pkg, err := currentKernelPackage(ctx, log)
	if err != nil {
		cached, cerr := newestCachedKernel(cacheDir)
		if cerr != nil || cached == "" {
			return Assets{}, errors.Join(err, cerr)
		}
		log.Warn("apt cannot name the current kernel; using the cached one", "package", cached, "err", err)
		pkg = cached
	}
	kdir, err := unpack(ctx, cacheDir, pkg, log)
	if err != nil {
		return Assets{}, err
	}
	pruneOtherKernels(cacheDir, pkg, log)
	bdir, err := unpack(ctx, cacheDir, busyboxPackage, log)
	if err != nil {
		return Assets{}, err
	}
	a := Assets{Busybox: filepath.Join(bdir, "bin", "busybox")}
	if _, err := os.Stat(a.Busybox); err != nil {
		return Assets{}, fmt.Errorf("busybox in %s: %w", busyboxPackage, err)
	}
	images, _ := filepath.Glob(filepath.Join(kdir, "boot", "vmlinuz-*"))
	if len(images) != 1 {
		return Assets{}, fmt.Errorf("package %s: want one boot/vmlinuz-*, found %d", pkg, len(images))
	}
	a.Kernel = images[0]
	a.Release = strings.TrimPrefix(filepath.Base(images[0]), "vmlinuz-")
	// Bookworm's kernel packages put modules in /lib/modules, merged-/usr
	// ones (trixie on) in /usr/lib/modules.
	for _, d := range []string{"lib/modules", "usr/lib/modules"} {
		p := filepath.Join(kdir, d, a.Release)
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			a.ModulesDir = p
			break
		}
	}
	if a.ModulesDir == "" {
		return Assets{}, fmt.Errorf("package %s: no modules directory for %s", pkg, a.Release)
	}
	return a, nil
}

// currentKernelPackage asks apt which linux-image-<release>-amd64 the
// metapackage depends on, refreshing the package lists once when apt knows
// none (a fresh machine has no lists until `apt-get update`).
func currentKernelPackage(ctx context.Context, log *slog.Logger) (string, error) {
	pkg, err := kernelDependency(ctx)
	if err == nil {
		return pkg, nil
	}
	if os.Geteuid() != 0 {
		return "", err
	}
	log.Info("refreshing apt package lists", "reason", err.Error())
	if out, uerr := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); uerr != nil {
		return "", errors.Join(err, fmt.Errorf("apt-get update: %w: %s", uerr, bytes.TrimSpace(out)))
	}
	return kernelDependency(ctx)
}

func kernelDependency(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", kernelMetaPackage).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends %s: %w", kernelMetaPackage, err)
	}
	pkg := parseKernelDependency(string(out))
	if pkg == "" {
		return "", fmt.Errorf("apt-cache depends %s names no linux-image package", kernelMetaPackage)
	}
	return pkg, nil
}

// parseKernelDependency picks "linux-image-6.1.0-56-amd64" out of
// `apt-cache depends linux-image-amd64`.
func parseKernelDependency(out string) string {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") && f[1] != kernelMetaPackage {
			return f[1]
		}
	}
	return ""
}

func newestCachedKernel(cacheDir string) (string, error) {
	dirs, err := filepath.Glob(filepath.Join(cacheDir, "linux-image-*", completeMarker))
	if err != nil {
		return "", err
	}
	type cand struct {
		pkg string
		mod int64
	}
	var cs []cand
	for _, m := range dirs {
		st, err := os.Stat(m)
		if err != nil {
			continue
		}
		cs = append(cs, cand{filepath.Base(filepath.Dir(m)), st.ModTime().UnixNano()})
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].mod > cs[j].mod })
	if len(cs) == 0 {
		return "", nil
	}
	return cs[0].pkg, nil
}

// unpack returns cacheDir/<pkg>, downloading and unpacking the package first
// unless a complete copy is there. It unpacks into a temporary directory and
// renames it into place, so an interrupted run or a concurrent one never
// leaves a half-unpacked tree that looks complete.
func unpack(ctx context.Context, cacheDir, pkg string, log *slog.Logger) (string, error) {
	dest := filepath.Join(cacheDir, pkg)
	if _, err := os.Stat(filepath.Join(dest, completeMarker)); err == nil {
		return dest, nil
	}
	tmp, err := os.MkdirTemp(cacheDir, ".fetch-"+pkg+"-")
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", pkg, err)
	}
	defer os.RemoveAll(tmp)
	// apt drops privileges to _apt for downloads; a directory it can
	// enter spares the "download is performed unsandboxed" warning.
	_ = os.Chmod(tmp, 0o755)
	log.Info("downloading", "package", pkg, "dir", cacheDir)
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-qq", pkg)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %w: %s", pkg, err, bytes.TrimSpace(out))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s: want one .deb, found %d", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg-deb -x %s: %w: %s", filepath.Base(debs[0]), err, bytes.TrimSpace(out))
	}
	if err := os.WriteFile(filepath.Join(root, completeMarker), []byte(filepath.Base(debs[0])+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("fetch %s: %w", pkg, err)
	}
	if err := os.Rename(root, dest); err != nil {
		// Another run got there first with a complete copy: use it.
		if _, serr := os.Stat(filepath.Join(dest, completeMarker)); serr == nil {
			return dest, nil
		}
		if errors.Is(err, fs.ErrExist) || errors.Is(err, os.ErrExist) {
			// An incomplete leftover: replace it.
			if rerr := os.RemoveAll(dest); rerr != nil {
				return "", fmt.Errorf("remove stale %s: %w", dest, rerr)
			}
			err = os.Rename(root, dest)
		}
		if err != nil {
			return "", fmt.Errorf("fetch %s: %w", pkg, err)
		}
	}
	return dest, nil
}

// pruneOtherKernels removes the kernels a newer linux-image-amd64 replaced
// (some 400 MB each unpacked).
func pruneOtherKernels(cacheDir, keep string, log *slog.Logger) {
	dirs, _ := filepath.Glob(filepath.Join(cacheDir, "linux-image-*"))
	for _, d := range dirs {
		if filepath.Base(d) == keep {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			log.Warn("cannot remove an old kernel from the cache", "dir", d, "err", err)
		} else {
			log.Info("removed an old kernel from the cache", "dir", d)
		}
	}
}

// pruneAbandonedFetches removes the temporary directories of fetches that
// were killed mid-way (a run's own is removed when it returns); an hour
// old, none can still be in use.
func pruneAbandonedFetches(cacheDir string, log *slog.Logger) {
	dirs, _ := filepath.Glob(filepath.Join(cacheDir, ".fetch-*"))
	for _, d := range dirs {
		st, err := os.Stat(d)
		if err != nil || time.Since(st.ModTime()) < time.Hour {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			log.Warn("cannot remove an abandoned download", "dir", d, "err", err)
		}
	}
}
