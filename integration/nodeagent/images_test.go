package nodeagent

import (
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// imageArchive writes a docker-archive holding one small random image per
// entry of tags (a list of the tags of that image), as the lab's
// bin/meridian-image.tar does.
func imageArchive(t *testing.T, tags ...[]string) string {
	t.Helper()
	refs := map[name.Reference]v1.Image{}
	for i, names := range tags {
		img, err := random.Image(256, 1)
		if err != nil {
			t.Fatal(err)
		}
		img, err = mutate.Config(img, v1.Config{Env: []string{"IMAGE=" + names[0]}, Entrypoint: []string{"/bin/app"}, Cmd: []string{"run", string(rune('a' + i))}})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			tag, err := name.NewTag(n)
			if err != nil {
				t.Fatal(err)
			}
			refs[tag] = img
		}
	}
	p := filepath.Join(t.TempDir(), "images.tar")
	if err := tarball.MultiRefWriteToFile(p, refs); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNormalizeRef(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"busybox", "index.docker.io/library/busybox:latest"},
		{"busybox:1.36", "index.docker.io/library/busybox:1.36"},
		{"docker.io/library/busybox:1.36", "index.docker.io/library/busybox:1.36"},
		{"docker.io/busybox:1.36", "index.docker.io/library/busybox:1.36"},
		{"index.docker.io/library/busybox:1.36", "index.docker.io/library/busybox:1.36"},
		{"prom/exporter", "index.docker.io/prom/exporter:latest"},
		{"ghcr.io/meridian-net/meridian:dev", "ghcr.io/meridian-net/meridian:dev"},
		{"ghcr.io/meridian-net/meridian", "ghcr.io/meridian-net/meridian:latest"},
		{"registry.local:5000/team/app:v2", "registry.local:5000/team/app:v2"},
		{"localhost/app", "localhost/app:latest"},
		{"busybox@sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			"index.docker.io/library/busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
		// What does not parse is kept as it is.
		{"UPPER/Case:tag", "UPPER/Case:tag"},
		{"", ""},
	} {
		if got := normalizeRef(tc.in); got != tc.want {
			t.Errorf("normalizeRef(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestImageStoreRunsForReal(t *testing.T) {
	archive := imageArchive(t,
		[]string{"ghcr.io/meridian-net/meridian:dev", "ghcr.io/meridian-net/meridian:v0.9.0"},
		[]string{"busybox:1.36"},
	)
	s := newImageStore(archive, t.TempDir())
	for _, tc := range []struct {
		name        string
		hostNetwork bool
		images      []string
		want        bool
	}{
		{"all present", true, []string{"ghcr.io/meridian-net/meridian:dev", "busybox:1.36"}, true},
		{"second tag", true, []string{"ghcr.io/meridian-net/meridian:v0.9.0"}, true},
		{"docker.io spelling", true, []string{"docker.io/library/busybox:1.36"}, true},
		{"same image twice", true, []string{"busybox:1.36", "index.docker.io/library/busybox:1.36"}, true},
		{"not host network", false, []string{"ghcr.io/meridian-net/meridian:dev"}, false},
		{"one missing", true, []string{"ghcr.io/meridian-net/meridian:dev", "nginx:1.27"}, false},
		{"other tag", true, []string{"busybox:1.37"}, false},
		{"latest not archived", true, []string{"ghcr.io/meridian-net/meridian"}, false},
		{"no images", true, nil, false},
	} {
		if got := s.runsForReal(tc.hostNetwork, tc.images); got != tc.want {
			t.Errorf("%s: runsForReal(%v, %q) = %v, want %v", tc.name, tc.hostNetwork, tc.images, got, tc.want)
		}
	}
}

func TestImageStoreWithoutArchive(t *testing.T) {
	var nilStore *imageStore
	if nilStore.has("busybox") || nilStore.runsForReal(true, []string{"busybox"}) {
		t.Error("a nil store has images")
	}
	if s := newImageStore("", t.TempDir()); s.has("busybox") || s.runsForReal(true, []string{"busybox"}) {
		t.Error("a store without an archive has images")
	}
	// A broken archive: no image, and get says why.
	bad := filepath.Join(t.TempDir(), "broken.tar")
	if err := os.WriteFile(bad, []byte("not a tarball"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, archive := range []string{bad, filepath.Join(t.TempDir(), "absent.tar")} {
		s := newImageStore(archive, t.TempDir())
		if s.runsForReal(true, []string{"busybox"}) {
			t.Errorf("%s: runsForReal", archive)
		}
		if _, err := s.get("busybox"); err == nil {
			t.Errorf("%s: get succeeded", archive)
		}
	}
}

func TestImageStoreGet(t *testing.T) {
	archive := imageArchive(t, []string{"ghcr.io/meridian-net/meridian:dev"}, []string{"busybox:1.36"})
	s := newImageStore(archive, t.TempDir())
	// Concurrent first uses load and unpack once.
	var wg sync.WaitGroup
	imgs := make([]string, 4)
	errs := make([]error, 4)
	for i := range imgs {
		wg.Go(func() {
			img, err := s.get("ghcr.io/meridian-net/meridian:dev")
			imgs[i], errs[i] = img.Rootfs, err
		})
	}
	wg.Wait()
	for i := range imgs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if imgs[i] != imgs[0] {
			t.Errorf("rootfs %q and %q for one image", imgs[i], imgs[0])
		}
	}
	if st, err := os.Stat(imgs[0]); err != nil || !st.IsDir() {
		t.Fatalf("rootfs %q: %v", imgs[0], err)
	}
	m, err := s.get("ghcr.io/meridian-net/meridian:dev")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(m.Config.Env, []string{"IMAGE=ghcr.io/meridian-net/meridian:dev"}) || !slices.Equal(m.Config.Entrypoint, []string{"/bin/app"}) {
		t.Errorf("config %+v", m.Config)
	}
	b, err := s.get("docker.io/library/busybox:1.36")
	if err != nil {
		t.Fatal(err)
	}
	if b.Rootfs == m.Rootfs || b.Digest == m.Digest || !slices.Equal(b.Config.Env, []string{"IMAGE=busybox:1.36"}) {
		t.Errorf("busybox %+v, meridian %+v", b, m)
	}
	if _, err := s.get("nginx:1.27"); err == nil {
		t.Error("get of an image not in the archive succeeded")
	}
}
