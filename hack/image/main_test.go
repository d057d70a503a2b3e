package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/meridian-net/meridian/hack/image/imagebuild"
)

// The command tags the image with the chart's default reference when --ref
// is empty, which is what `make image` relies on.
func TestRunTagsWithChartDefault(t *testing.T) {
	bins := t.TempDir()
	if err := os.WriteFile(filepath.Join(bins, "meridiand"), []byte("#!/bin/false\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	const chart = "../../charts/meridian/Chart.yaml"
	out := filepath.Join(t.TempDir(), "out", "image.tar")
	if err := run(out, "", chart, imagebuild.Options{BinDir: bins, Binaries: []string{"meridiand"}, Arch: "amd64"}); err != nil {
		t.Fatal(err)
	}
	ref, err := imagebuild.DefaultRef(chart)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tarball.ImageFromPath(out, &tag); err != nil {
		t.Errorf("tarball has no image tagged %s: %v", tag, err)
	}
	if err := run(filepath.Join(t.TempDir(), "x.tar"), "UPPER:case", chart, imagebuild.Options{BinDir: bins, Binaries: []string{"meridiand"}}); err == nil {
		t.Error("run accepted an invalid --ref")
	}
}
