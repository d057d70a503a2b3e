package container

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Image is an unpacked image.
type Image struct {
	// Rootfs is the flattened filesystem, shared read-only by every
	// container of this image.
	Rootfs string
	// Config is the image's configuration (Env, Entrypoint, Cmd, WorkingDir).
	Config v1.Config
	// Digest is the image's config digest ("sha256:...").
	Digest string
}

// Unpack finds the image tagged ref in a docker-archive tarball (as
// hack/image writes it, possibly holding several tags) and extracts its
// flattened filesystem into cacheDir/<hex of the config digest>/rootfs,
// once: a later call for the same image returns the same directory without
// extracting again. Lab nodes unpacking at the same time serialise on a lock
// file next to the directory, and the extraction goes to a temporary
// directory renamed into place, so a crash never leaves a half-filled
// rootfs.
//
// Entries that would land outside the rootfs are refused: absolute names,
// ".." components, and names reaching through a symlink whose target leaves
// the rootfs (an absolute symlink target counts as leaving it, since it is
// resolved against the host's root while extracting). Device nodes and
// FIFOs are skipped: containers get their /dev from the runtime.
func Unpack(archive, ref, cacheDir string) (Image, error) {
	img, err := imageFromArchive(archive, ref)
	if err != nil {
		return Image{}, err
	}
	digest, err := img.ConfigName()
	if err != nil {
		return Image{}, fmt.Errorf("image %s config digest: %w", ref, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return Image{}, fmt.Errorf("image %s config: %w", ref, err)
	}
	out := Image{Config: cfg.Config, Digest: digest.String()}

	dir := filepath.Join(cacheDir, digest.Hex)
	out.Rootfs = filepath.Join(dir, "rootfs")
	if _, err := os.Stat(out.Rootfs); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Image{}, fmt.Errorf("create image cache %s: %w", dir, err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return Image{}, fmt.Errorf("open image lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return Image{}, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	// Another node may have finished while this one waited for the lock.
	if _, err := os.Stat(out.Rootfs); err == nil {
		return out, nil
	}
	// Left by an extraction that died; nobody else holds the lock.
	stale, _ := filepath.Glob(filepath.Join(dir, "rootfs.tmp-*"))
	for _, s := range stale {
		os.RemoveAll(s)
	}
	tmp, err := os.MkdirTemp(dir, "rootfs.tmp-")
	if err != nil {
		return Image{}, fmt.Errorf("create rootfs: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return Image{}, fmt.Errorf("create rootfs: %w", err)
	}
	rc := mutate.Extract(img)
	err = extract(rc, tmp)
	rc.Close()
	if err == nil {
		err = os.Rename(tmp, out.Rootfs)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return Image{}, fmt.Errorf("unpack %s from %s: %w", ref, archive, err)
	}
	return out, nil
}

// imageFromArchive opens the image tagged ref, or says which tags the
// archive has.
func imageFromArchive(archive, ref string) (v1.Image, error) {
	want, err := name.NewTag(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	opener := func() (io.ReadCloser, error) { return os.Open(archive) }
	manifest, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", archive, err)
	}
	var tags []string
	for _, d := range manifest {
		for _, t := range d.RepoTags {
			tags = append(tags, t)
			// Compared parsed, so "meridian:1" finds "index.docker.io/library/meridian:1".
			if got, err := name.NewTag(t); err == nil && got.Name() == want.Name() {
				img, err := tarball.Image(opener, &want)
				if err != nil {
					return nil, fmt.Errorf("read %s from %s: %w", ref, archive, err)
				}
				return img, nil
			}
		}
	}
	return nil, fmt.Errorf("%s has no image tagged %s (tags: %s)", archive, ref, strings.Join(tags, ", "))
}

// extract writes a flattened image tar under dir. Every file operation goes
// through an os.Root, which refuses to follow a path out of dir; the name
// checks before it only make the error say what was wrong.
func extract(r io.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// mutate.Extract closes its tar writer (the end-of-archive
			// blocks) before it reports the error that stopped it, so
			// the error only shows after the tar's end.
			if _, err := io.Copy(io.Discard, r); err != nil {
				return fmt.Errorf("read layers: %w", err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read layers: %w", err)
		}
		name, err := entryName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		if err := extractEntry(root, name, hdr, tr); err != nil {
			return fmt.Errorf("extract %s: %w", hdr.Name, err)
		}
	}
}

// entryName is a tar entry's name relative to the rootfs, refusing names
// that try to leave it.
func entryName(n string) (string, error) {
	if path.IsAbs(n) {
		return "", fmt.Errorf("tar entry %q: absolute path", n)
	}
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", fmt.Errorf("tar entry %q: escapes the rootfs", n)
		}
	}
	return path.Clean(n), nil
}

func extractEntry(root *os.Root, name string, hdr *tar.Header, r io.Reader) error {
	mode := hdr.FileInfo().Mode()
	if dir := path.Dir(name); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := root.Mkdir(name, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if fi, err := root.Lstat(name); err != nil {
			return err
		} else if !fi.IsDir() {
			// The flattened stream comes top layer first: an upper layer
			// replaced this directory (by a symlink, say) and wins.
			return nil
		}
	case tar.TypeReg:
		// A later layer's file replaces whatever the flattening left there.
		if err := removeNonDir(root, name); err != nil {
			return err
		}
		f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := removeNonDir(root, name); err != nil {
			return err
		}
		// The target is stored as it is; it is resolved inside the
		// container's root once the container has pivoted.
		return lchown(root, name, hdr, root.Symlink(hdr.Linkname, name))
	case tar.TypeLink:
		target, err := entryName(hdr.Linkname)
		if err != nil {
			return err
		}
		if err := removeNonDir(root, name); err != nil {
			return err
		}
		return root.Link(target, name)
	default:
		// Devices, FIFOs: the runtime provides /dev.
		return nil
	}
	if err := lchown(root, name, hdr, nil); err != nil {
		return err
	}
	// After chown, which clears setuid bits.
	return root.Chmod(name, mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
}

// lchown gives the entry its owner when running as root (the lab always
// is); unprivileged unpacking keeps the caller as owner.
func lchown(root *os.Root, name string, hdr *tar.Header, err error) error {
	if err != nil || os.Geteuid() != 0 {
		return err
	}
	return root.Lchown(name, hdr.Uid, hdr.Gid)
}

// removeNonDir clears the way for a file entry; a directory in the way is
// an error, as in the image it would be a malformed layer.
func removeNonDir(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("a directory is in the way")
	}
	return root.Remove(name)
}
