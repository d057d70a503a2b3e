package container

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// entry is one tar entry of a test layer.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func layer(t *testing.T, entries ...entry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body)), Format: tar.FormatPAX}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
		}
		if hdr.Typeflag != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func image(t *testing.T, env []string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Env: env, Entrypoint: []string{"/bin/app"}, WorkingDir: "/srv"})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func writeArchive(t *testing.T, images map[string]v1.Image) string {
	t.Helper()
	refs := map[name.Tag]v1.Image{}
	for r, img := range images {
		tag, err := name.NewTag(r)
		if err != nil {
			t.Fatal(err)
		}
		refs[tag] = img
	}
	p := filepath.Join(t.TempDir(), "images.tar")
	if err := tarball.MultiWriteToFile(p, refs); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUnpack(t *testing.T) {
	base := layer(t,
		entry{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "bin/app", body: "#!/bin/true\n", mode: 0o755},
		entry{name: "etc/config", body: "v1"},
		entry{name: "etc/gone", body: "deleted by the upper layer"},
		entry{name: "lib/", typ: tar.TypeDir, mode: 0o700},
		entry{name: "lib/data", body: "data"},
		entry{name: "app", typ: tar.TypeSymlink, link: "bin/app"},
		entry{name: "hard", typ: tar.TypeLink, link: "lib/data"},
	)
	upper := layer(t,
		entry{name: "etc/.wh.gone"},
		entry{name: "etc/config", body: "v2"},
	)
	app := image(t, []string{"PATH=/bin"}, base, upper)
	other := image(t, nil, layer(t, entry{name: "other", body: "x"}))
	archive := writeArchive(t, map[string]v1.Image{
		"example.com/lab/app:1":   app,
		"example.com/lab/other:2": other,
	})
	cache := t.TempDir()

	got, err := Unpack(archive, "example.com/lab/app:1", cache)
	if err != nil {
		t.Fatal(err)
	}
	digest, err := app.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != digest.String() || got.Rootfs != filepath.Join(cache, digest.Hex, "rootfs") {
		t.Errorf("Unpack = %+v, want digest %s under %s", got, digest, cache)
	}
	if !slices.Equal(got.Config.Env, []string{"PATH=/bin"}) || got.Config.WorkingDir != "/srv" || !slices.Equal(got.Config.Entrypoint, []string{"/bin/app"}) {
		t.Errorf("config %+v", got.Config)
	}
	for file, want := range map[string]string{"bin/app": "#!/bin/true\n", "etc/config": "v2", "lib/data": "data", "app": "#!/bin/true\n", "hard": "data"} {
		if b, err := os.ReadFile(filepath.Join(got.Rootfs, file)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", file, b, err, want)
		}
	}
	if _, err := os.Lstat(filepath.Join(got.Rootfs, "etc/gone")); !os.IsNotExist(err) {
		t.Errorf("whited-out etc/gone: %v", err)
	}
	if l, err := os.Readlink(filepath.Join(got.Rootfs, "app")); err != nil || l != "bin/app" {
		t.Errorf("symlink app -> %q, %v", l, err)
	}
	if fi, err := os.Stat(filepath.Join(got.Rootfs, "bin/app")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("bin/app mode: %v %v", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(got.Rootfs, "lib")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("lib mode: %v %v", fi, err)
	}

	// A second call finds the rootfs: same path, nothing extracted again
	// (a file added to the cached rootfs stays, one removed stays removed).
	marker := filepath.Join(got.Rootfs, "marker")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(got.Rootfs, "lib/data")); err != nil {
		t.Fatal(err)
	}
	again, err := Unpack(archive, "example.com/lab/app:1", cache)
	if err != nil {
		t.Fatal(err)
	}
	if again.Rootfs != got.Rootfs || again.Digest != got.Digest {
		t.Errorf("second Unpack = %+v, want %+v", again, got)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("cache hit replaced the rootfs: %v", err)
	}
	if _, err := os.Stat(filepath.Join(got.Rootfs, "lib/data")); !os.IsNotExist(err) {
		t.Errorf("cache hit extracted again: lib/data %v", err)
	}

	_, err = Unpack(archive, "example.com/lab/app:missing", cache)
	if err == nil {
		t.Fatal("Unpack of a missing tag succeeded")
	}
	for _, want := range []string{"example.com/lab/app:missing", "example.com/lab/app:1", "example.com/lab/other:2"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

// Lab nodes start together and unpack the same image at once.
func TestUnpackConcurrent(t *testing.T) {
	img := image(t, nil, layer(t, entry{name: "f", body: strings.Repeat("x", 1<<20)}))
	archive := writeArchive(t, map[string]v1.Image{"lab/img:1": img})
	cache := t.TempDir()
	var wg sync.WaitGroup
	results := make([]Image, 8)
	errs := make([]error, 8)
	for i := range results {
		wg.Go(func() { results[i], errs[i] = Unpack(archive, "lab/img:1", cache) })
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil {
			t.Fatalf("Unpack %d: %v", i, errs[i])
		}
		if results[i].Rootfs != results[0].Rootfs {
			t.Errorf("Unpack %d gave %s, Unpack 0 %s", i, results[i].Rootfs, results[0].Rootfs)
		}
	}
	if fi, err := os.Stat(filepath.Join(results[0].Rootfs, "f")); err != nil || fi.Size() != 1<<20 {
		t.Errorf("f: %v %v", fi, err)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(results[0].Rootfs), "rootfs.tmp-*"))
	if len(left) != 0 {
		t.Errorf("temporary rootfs left: %v", left)
	}
}

func TestUnpackRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	for name, l := range map[string]v1.Layer{
		"dotdot":                  layer(t, entry{name: "ok", body: "x"}, entry{name: "../escape", body: "x"}),
		"dotdot in a lower layer": layer(t, entry{name: "a/../../escape", body: "x"}),
		"hard link out":           layer(t, entry{name: "h", typ: tar.TypeLink, link: "../../../../etc/passwd"}, entry{name: "h2", typ: tar.TypeLink, link: "/etc/passwd"}),
	} {
		t.Run(name, func(t *testing.T) {
			archive := writeArchive(t, map[string]v1.Image{"lab/evil:1": image(t, nil, l, layer(t, entry{name: "upper", body: "x"}))})
			parent := t.TempDir()
			cache := filepath.Join(parent, "cache")
			img, err := Unpack(archive, "lab/evil:1", cache)
			if err == nil {
				// A relative link out of the rootfs is dropped by the
				// flattening; what it leaves must not reach out.
				if name != "hard link out" {
					t.Fatalf("Unpack succeeded: %+v", img)
				}
				for _, f := range []string{"h", "h2"} {
					if _, err := os.Lstat(filepath.Join(img.Rootfs, f)); err == nil {
						t.Errorf("%s extracted", f)
					}
				}
			} else {
				t.Logf("refused: %v", err)
			}
			for _, dir := range []string{outside, parent, filepath.Dir(parent)} {
				for _, n := range []string{"escape", "pwned"} {
					if _, err := os.Lstat(filepath.Join(dir, n)); err == nil {
						t.Errorf("%s written outside the rootfs", filepath.Join(dir, n))
					}
				}
			}
			if err != nil {
				if left, _ := filepath.Glob(filepath.Join(cache, "*", "rootfs*")); len(left) != 0 {
					t.Errorf("refused unpack left %v", left)
				}
			}
		})
	}
}

// A symlink in a lower layer pointing out of the rootfs, and an upper layer
// writing through it.
func TestUnpackRefusesWritesThroughSymlinks(t *testing.T) {
	outside := t.TempDir()
	lower := layer(t, entry{name: "evil", typ: tar.TypeSymlink, link: outside})
	upper := layer(t, entry{name: "evil/pwned", body: "x"})
	archive := writeArchive(t, map[string]v1.Image{"lab/evil:1": image(t, nil, lower, upper)})
	if img, err := Unpack(archive, "lab/evil:1", t.TempDir()); err == nil {
		t.Errorf("Unpack succeeded: %s", img.Rootfs)
	} else {
		t.Logf("refused: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(outside, "pwned")); err == nil {
		t.Error("wrote through the symlink")
	}
}

// extract itself, on raw tar streams the flattening would have cleaned up:
// the last line of defence.
func TestExtractRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	for name, entries := range map[string][]entry{
		"absolute symlink then a file through it": {
			{name: "evil", typ: tar.TypeSymlink, link: outside},
			{name: "evil/pwned", body: "x"},
		},
		"relative symlink out then a file through it": {
			{name: "d/", typ: tar.TypeDir, mode: 0o755},
			{name: "d/evil", typ: tar.TypeSymlink, link: "../../../../../../../../../../.." + outside},
			{name: "d/evil/pwned", body: "x"},
		},
		"symlink then a directory through it": {
			{name: "evil", typ: tar.TypeSymlink, link: outside},
			{name: "evil/pwned/", typ: tar.TypeDir, mode: 0o755},
		},
		"dotdot":                        {{name: "a/../../pwned", body: "x"}},
		"absolute":                      {{name: outside + "/pwned", body: "x"}},
		"hard link to an absolute path": {{name: "h", typ: tar.TypeLink, link: outside + "/target"}},
	} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, e := range entries {
				typ := e.typ
				if typ == 0 {
					typ = tar.TypeReg
				}
				hdr := &tar.Header{Name: e.name, Typeflag: typ, Linkname: e.link, Mode: 0o644, Format: tar.FormatPAX}
				if typ == tar.TypeReg {
					hdr.Size = int64(len(e.body))
				}
				if err := tw.WriteHeader(hdr); err != nil {
					t.Fatal(err)
				}
				tw.Write([]byte(e.body))
			}
			tw.Close()
			if err := os.WriteFile(filepath.Join(outside, "target"), []byte("secret"), 0o600); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(t.TempDir(), "rootfs")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			err := extract(&buf, dir)
			if err == nil {
				t.Fatal("extract succeeded")
			}
			t.Logf("refused: %v", err)
			if _, err := os.Lstat(filepath.Join(outside, "pwned")); err == nil {
				t.Error("wrote outside the rootfs")
			}
			if _, err := os.Lstat(filepath.Join(filepath.Dir(dir), "pwned")); err == nil {
				t.Error("wrote next to the rootfs")
			}
		})
	}
}
