package container

import (
	"path"
	"path/filepath"
	"slices"
	"testing"

	"github.com/meridian-net/meridian/hack/image/imagebuild"
)

// What the lab does with `make image`'s tarball: unpack it once and run
// several nodes' containers from the shared rootfs, each in its node's
// network namespace, with the image's PATH.
func TestImageRunsOnSeveralNodes(t *testing.T) {
	needRoot(t)
	probe := probe(t)
	img, err := imagebuild.Build(imagebuild.Options{
		BinDir:     filepath.Dir(probe),
		Binaries:   []string{filepath.Base(probe)},
		Arch:       "amd64",
		Entrypoint: []string{path.Join(imagebuild.BinDir, "probe")},
	})
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "image.tar")
	const ref = "example.com/meridian:lab"
	if err := imagebuild.WriteTarball(archive, ref, img); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	unpacked, err := Unpack(archive, ref, cache)
	if err != nil {
		t.Fatal(err)
	}
	caps, err := EffectiveCapabilities(false, []string{"NET_ADMIN"}, []string{"ALL"})
	if err != nil {
		t.Fatal(err)
	}
	var runs []*run
	for range 2 {
		base := t.TempDir()
		r := start(t, base, Spec{
			Rootfs:          unpacked.Rootfs,
			ReadOnlyRootfs:  true,
			Args:            []string{"probe"}, // found through the image's PATH
			Env:             append(slices.Clone(unpacked.Config.Env), "NODE=x"),
			Capabilities:    caps,
			NoNewPrivileges: true,
			NetNS:           newNetNS(t).Path(),
		})
		runs = append(runs, r)
	}
	for _, r := range runs {
		rep := r.wait(t)
		if rep.Status["CapBnd"] != capMask("NET_ADMIN") {
			t.Errorf("CapBnd %s", rep.Status["CapBnd"])
		}
		if !rep.RootEROFS || !slices.Equal(rep.SysNetDevs, []string{"lo"}) {
			t.Errorf("root write %q, /sys/class/net %q", rep.RootWrite, rep.SysNetDevs)
		}
		if !slices.Equal(rep.Env, []string{"PATH=/usr/local/bin", "NODE=x"}) {
			t.Errorf("env %q", rep.Env)
		}
	}
}
