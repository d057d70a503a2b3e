// Command image builds Meridian's container image without a container
// engine and writes it as a docker-archive tarball that `ctr images
// import`, `docker load` and `podman load` all read. `make image` runs it;
// the building lives in hack/image/imagebuild, which the lab imports too.
package main

import (
	"flag"
	"fmt"
	"os"
	"path"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/meridian-net/meridian/hack/image/imagebuild"
)

func main() {
	var (
		out      = flag.String("output", "bin/meridian-image.tar", "image tarball to write (docker-archive)")
		ref      = flag.String("ref", "", "image reference recorded in the tarball (default "+imagebuild.DefaultRepository+":<appVersion of --chart>)")
		chart    = flag.String("chart", "charts/meridian/Chart.yaml", "Chart.yaml whose appVersion tags the image when --ref is empty")
		binDir   = flag.String("bin-dir", "bin", "directory holding the static binaries")
		binaries = flag.String("binaries", strings.Join(imagebuild.DefaultBinaries, ","), "comma-separated binaries from --bin-dir to put in "+imagebuild.BinDir)
		arch     = flag.String("arch", runtime.GOARCH, "architecture of the binaries (GOARCH)")
	)
	flag.Parse()
	if err := run(*out, *ref, *chart, imagebuild.Options{
		BinDir:     *binDir,
		Binaries:   strings.Split(*binaries, ","),
		Arch:       *arch,
		Entrypoint: []string{path.Join(imagebuild.BinDir, "meridiand")},
	}); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func run(out, ref, chart string, opts imagebuild.Options) error {
	if ref == "" {
		r, err := imagebuild.DefaultRef(chart)
		if err != nil {
			return err
		}
		ref = r
	}
	// Checked before building, so a bad --ref fails fast.
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	img, err := imagebuild.Build(opts)
	if err != nil {
		return err
	}
	if err := imagebuild.WriteTarball(out, ref, img); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("image digest: %w", err)
	}
	fmt.Printf("%s %s %s\n", out, tag, digest)
	return nil
}
