package nodeagent

import (
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/meridian-net/meridian/integration/nodeagent/container"
)

// imageStore is the node's image store: the images of one docker-archive
// (the lab's bin/meridian-image.tar), unpacked on first use. It stands in
// for a registry and containerd's content store: a pod whose images are all
// here runs for real, others are stand-ins.
type imageStore struct {
	archive  string
	cacheDir string

	once sync.Once
	tags map[string]bool // normalised references in the archive
	err  error

	mu     sync.Mutex
	images map[string]container.Image
}

func newImageStore(archive, cacheDir string) *imageStore {
	return &imageStore{archive: archive, cacheDir: cacheDir, images: map[string]container.Image{}}
}

func normalizeRef(ref string) string {
	r, err := name.ParseReference(ref)
	if err != nil {
		return ref
	}
	return r.Name()
}

func (s *imageStore) load() {
	s.tags = map[string]bool{}
	if s.archive == "" {
		return
	}
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(s.archive) })
	if err != nil {
		s.err = fmt.Errorf("read image archive %s: %w", s.archive, err)
		return
	}
	for _, d := range m {
		for _, t := range d.RepoTags {
			s.tags[normalizeRef(t)] = true
		}
	}
}

// has reports whether ref is in the store.
func (s *imageStore) has(ref string) bool {
	if s == nil || s.archive == "" {
		return false
	}
	s.once.Do(s.load)
	return s.tags[normalizeRef(ref)]
}

// get unpacks ref (once) and returns it.
func (s *imageStore) get(ref string) (container.Image, error) {
	s.once.Do(s.load)
	if s.err != nil {
		return container.Image{}, s.err
	}
	key := normalizeRef(ref)
	s.mu.Lock()
	defer s.mu.Unlock()
	if img, ok := s.images[key]; ok {
		return img, nil
	}
	img, err := container.Unpack(s.archive, ref, s.cacheDir)
	if err != nil {
		return container.Image{}, fmt.Errorf("unpack image %s: %w", ref, err)
	}
	s.images[key] = img
	return img, nil
}

// runsForReal reports whether the agent runs pod's containers from images
// instead of standing in for them: host-network pods whose every image is
// in the store. Pods in their own netns keep the stand-in servers, which
// need no image at all.
func (s *imageStore) runsForReal(podHostNetwork bool, images []string) bool {
	if !podHostNetwork || len(images) == 0 {
		return false
	}
	for _, img := range images {
		if !s.has(img) {
			return false
		}
	}
	return true
}
