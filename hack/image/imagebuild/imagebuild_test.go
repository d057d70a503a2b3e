package imagebuild

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"sigs.k8s.io/yaml"
)

// writeBinaries puts small stand-in files for the binaries in a temp dir.
func writeBinaries(t *testing.T, names ...string) (string, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	content := map[string]string{}
	for _, n := range names {
		c := "#!/bin/false\n# stand-in for " + n + "\n"
		// 0600 in the source dir: the image must still hold them as 0755.
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
		content[n] = c
	}
	return dir, content
}

func TestImageReadsBack(t *testing.T) {
	bins, content := writeBinaries(t, DefaultBinaries...)
	out := filepath.Join(t.TempDir(), "out", "image.tar")
	const ref = "registry.example.com/meridian:test"
	built, err := Build(Options{BinDir: bins, Binaries: DefaultBinaries, Arch: "arm64", Entrypoint: []string{"/usr/local/bin/meridiand"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteTarball(out, ref, built); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("tarball %v mode %v, want 0644", err, fi.Mode())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*.tmp")); len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}

	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatalf("read back %s as %s: %v", out, ref, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Config.Entrypoint; !slices.Equal(got, []string{"/usr/local/bin/meridiand"}) {
		t.Errorf("entrypoint %q", got)
	}
	if !slices.Contains(cfg.Config.Env, "PATH=/usr/local/bin") {
		t.Errorf("env %q has no PATH=/usr/local/bin", cfg.Config.Env)
	}
	if cfg.OS != "linux" || cfg.Architecture != "arm64" {
		t.Errorf("platform %s/%s, want linux/arm64", cfg.OS, cfg.Architecture)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	if len(cfg.RootFS.DiffIDs) != 1 {
		t.Errorf("config lists %d diff IDs, want 1", len(cfg.RootFS.DiffIDs))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 {
			t.Errorf("%s owned by %d:%d, want root", hdr.Name, hdr.Uid, hdr.Gid)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		if hdr.Mode != 0o755 {
			t.Errorf("%s mode %o, want 755", hdr.Name, hdr.Mode)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = string(b)
	}
	for _, n := range DefaultBinaries {
		if got, want := files["usr/local/bin/"+n], content[n]; got != want {
			t.Errorf("usr/local/bin/%s = %q, want %q", n, got, want)
		}
	}
	if len(files) != len(DefaultBinaries) {
		t.Errorf("layer holds %d files, want %d: %v", len(files), len(DefaultBinaries), files)
	}
}

func TestImageIsReproducible(t *testing.T) {
	bins, _ := writeBinaries(t, "meridiand", "meridianctl")
	opts := Options{BinDir: bins, Binaries: []string{"meridiand", "meridianctl"}, Arch: "amd64"}
	a, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	// Touch the sources: modification times must not reach the image.
	for _, n := range opts.Binaries {
		if err := os.Chtimes(filepath.Join(bins, n), epoch.AddDate(30, 0, 0), epoch.AddDate(30, 0, 0)); err != nil {
			t.Fatal(err)
		}
	}
	b, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	da, err := a.Digest()
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if da != db {
		t.Errorf("same binaries, different digests %s and %s", da, db)
	}
}

func TestBuildRefuses(t *testing.T) {
	bins, _ := writeBinaries(t, "meridiand")
	// A dynamically linked ELF: Debian links /bin/true against libc.
	data, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bins, "dynamic"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, list := range map[string][]string{
		"missing":   {"meridiand", "absent"},
		"path":      {"../meridiand"},
		"duplicate": {"meridiand", "meridiand"},
		"empty":     {},
		"dynamic":   {"dynamic"},
	} {
		if _, err := Build(Options{BinDir: bins, Binaries: list, Arch: "amd64"}); err == nil {
			t.Errorf("%s: Build(%q) succeeded", name, list)
		} else if name == "dynamic" && !strings.Contains(err.Error(), "dynamically linked") {
			t.Errorf("dynamic: %v", err)
		}
	}
}

// The image `make image` writes must be the one the chart deploys by default.
func TestDefaultRefMatchesChart(t *testing.T) {
	const chart = "../../../charts/meridian"
	v, err := AppVersion(filepath.Join(chart, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(chart, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values struct {
		Image struct {
			Repository string `json:"repository"`
			Tag        string `json:"tag"`
		} `json:"image"`
	}
	if err := yaml.Unmarshal(data, &values); err != nil {
		t.Fatal(err)
	}
	if values.Image.Repository != DefaultRepository || values.Image.Tag != "" {
		t.Errorf("chart image %s:%q, want %s with the empty tag (appVersion %s)", values.Image.Repository, values.Image.Tag, DefaultRepository, v)
	}

	ref, err := DefaultRef(filepath.Join(chart, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if ref != DefaultRepository+":"+v {
		t.Errorf("DefaultRef = %q, want %s:%s", ref, DefaultRepository, v)
	}
	bins, _ := writeBinaries(t, "meridiand")
	img, err := Build(Options{BinDir: bins, Binaries: []string{"meridiand"}, Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "image.tar")
	if err := WriteTarball(out, ref, img); err != nil {
		t.Fatal(err)
	}
	want, err := name.NewTag(DefaultRepository + ":" + v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tarball.ImageFromPath(out, &want); err != nil {
		t.Errorf("tarball has no image tagged %s: %v", want, err)
	}
}

// A refused write leaves the previous tarball in place and no temporary
// file next to it.
func TestWriteTarballKeepsOldOnFailure(t *testing.T) {
	bins, _ := writeBinaries(t, "meridiand")
	img, err := Build(Options{BinDir: bins, Binaries: []string{"meridiand"}, Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "image.tar")
	if err := os.WriteFile(out, []byte("previous"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteTarball(out, "Not A Valid Ref", img); err == nil {
		t.Fatal("WriteTarball accepted an invalid reference")
	}
	// A directory where the output goes: the rename fails after the write.
	blocked := filepath.Join(dir, "blocked")
	if err := os.Mkdir(blocked, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(blocked, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteTarball(blocked, "example.com/m:1", img); err == nil {
		t.Fatal("WriteTarball replaced a non-empty directory")
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "previous" {
		t.Errorf("previous tarball = %q, %v", b, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"blocked", "image.tar"}) {
		t.Errorf("directory holds %q, want only blocked and image.tar", names)
	}
}
