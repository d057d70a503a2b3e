// Package imagebuild builds Meridian's container image without a container
// engine: one layer holding the static binaries in /usr/local/bin, written
// as a docker-archive tarball that `ctr images import`, `docker load` and
// `podman load` all read. hack/image (`make image`) is its command line; the
// lab imports it to build an image from its bin dir when it needs one.
//
// The layer is reproducible: fixed owners, modes and timestamps, so the same
// binaries give the same image digest.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"sigs.k8s.io/yaml"
)

// DefaultRepository is where the chart's image.repository points by default.
const DefaultRepository = "ghcr.io/meridian-net/meridian"

// BinDir is where the binaries live in the image; it is the image's PATH,
// so `kubectl exec POD -- meridianctl peers` finds meridianctl.
const BinDir = "/usr/local/bin"

// DefaultBinaries are what the chart runs: meridiand (the container),
// meridian-install-cni (the init container), meridian-cni (what it installs
// on the node) and meridianctl (for kubectl exec).
var DefaultBinaries = []string{"meridiand", "meridianctl", "meridian-cni", "meridian-install-cni"}

// epoch stamps every file and the image config, for reproducible digests.
var epoch = time.Unix(0, 0).UTC()

// Options say what to put in the image.
type Options struct {
	BinDir   string   // where the built binaries are
	Binaries []string // file names in BinDir
	Arch     string   // GOARCH the binaries were built for
	// Entrypoint is the command the image runs when the pod spec names none.
	Entrypoint []string
}

// AppVersion reads appVersion from a Chart.yaml.
func AppVersion(chartYAML string) (string, error) {
	data, err := os.ReadFile(chartYAML)
	if err != nil {
		return "", fmt.Errorf("read chart: %w", err)
	}
	var c struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		return "", fmt.Errorf("decode %s: %w", chartYAML, err)
	}
	if c.AppVersion == "" {
		return "", fmt.Errorf("%s has no appVersion", chartYAML)
	}
	return c.AppVersion, nil
}

// DefaultRef is the reference the chart deploys by default:
// DefaultRepository tagged with the chart's appVersion (values.yaml leaves
// image.tag empty).
func DefaultRef(chartYAML string) (string, error) {
	v, err := AppVersion(chartYAML)
	if err != nil {
		return "", err
	}
	return DefaultRepository + ":" + v, nil
}

// Build assembles the image: a single layer with the binaries and a config
// with the entrypoint, PATH and platform.
func Build(opts Options) (v1.Image, error) {
	if len(opts.Binaries) == 0 {
		return nil, errors.New("no binaries")
	}
	layerTar, err := binariesLayer(opts.BinDir, opts.Binaries)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("build layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "hack/image: " + strings.Join(opts.Binaries, " "), Comment: "static binaries"},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture = opts.Arch
	cfg.OS = "linux"
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Entrypoint = opts.Entrypoint
	cfg.Config.Env = []string{"PATH=" + BinDir}
	cfg.Config.Labels = map[string]string{
		"org.opencontainers.image.source": "https://github.com/meridian-net/meridian",
		"org.opencontainers.image.title":  "meridian",
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	return img, nil
}

// WriteTarball writes img tagged ref as a docker-archive at path, creating
// its directory. It writes next to path and renames, so a failed build never
// leaves a truncated tarball where `ctr images import` (or a lab node
// unpacking it) would find it.
func WriteTarball(path string, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create output dir: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmpName := tmp.Name()
	err = tarball.Write(tag, img, tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// CreateTemp makes 0600; the tarball holds nothing secret and the
		// previous hack/image wrote it world-readable.
		err = os.Chmod(tmpName, 0o644)
	}
	if err == nil {
		err = os.Rename(tmpName, path)
	}
	if err != nil {
		os.Remove(tmpName)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// binariesLayer is an uncompressed tar of usr/local/bin and the binaries in
// it, root-owned, mode 0755.
func binariesLayer(dir string, binaries []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"usr/", "usr/local/", "usr/local/bin/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
	}
	seen := map[string]bool{}
	for _, b := range binaries {
		if b == "" || strings.Contains(b, "/") || seen[b] {
			return nil, fmt.Errorf("binary name %q: want distinct plain file names", b)
		}
		seen[b] = true
		data, err := os.ReadFile(filepath.Join(dir, b))
		if err != nil {
			return nil, fmt.Errorf("read binary: %w", err)
		}
		if err := checkStatic(b, data); err != nil {
			return nil, err
		}
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     strings.TrimPrefix(path.Join(BinDir, b), "/"),
			Mode:     0o755,
			Size:     int64(len(data)),
			ModTime:  epoch,
			Format:   tar.FormatPAX,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

// checkStatic refuses an ELF binary that needs a dynamic loader: the image
// has no libc, so it would fail only when the pod starts, with a confusing
// "no such file or directory". Files that are not ELF (scripts in tests)
// pass.
func checkStatic(name string, data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; build it with CGO_ENABLED=0", name)
		}
	}
	return nil
}
