package vm

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Module is one loadable kernel module, decompressed, ready for insmod.
type Module struct {
	Name    string   // canonical name, '-' folded to '_' ("ip_tunnel")
	Path    string   // file under the kernel's modules directory
	Depends []string // canonical names from its .modinfo "depends="
	Data    []byte   // the uncompressed .ko
}

// moduleName folds a module file or module name into the kernel's canonical
// spelling: modules.dep and .modinfo mix '-' and '_' for the same module.
func moduleName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if strings.HasSuffix(s, ext) {
			s = strings.TrimSuffix(s, ext)
			break
		}
	}
	return strings.ReplaceAll(s, "-", "_")
}

// moduleIndex maps canonical module names to their files under a kernel's
// /lib/modules/<release>, and records the ones built into the image.
type moduleIndex struct {
	dir     string
	files   map[string]string
	builtin map[string]bool
}

func indexModules(dir string) (*moduleIndex, error) {
	idx := &moduleIndex{dir: dir, files: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.Contains(d.Name(), ".ko") {
			idx.files[moduleName(d.Name())] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", dir, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			idx.builtin[moduleName(l)] = true
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	}
	return idx, nil
}

// Resolve returns the modules named (canonical or dashed spelling) and all
// they depend on, each after its dependencies: the order insmod needs, as
// busybox's insmod resolves nothing itself. Built-in modules are left out.
// Dependencies come from each module's own .modinfo section, so no
// modules.dep is needed (Debian's kernel package ships none; depmod writes
// it at install time).
func (idx *moduleIndex) Resolve(ctx context.Context, names []string) ([]Module, error) {
	var (
		order []Module
		state = map[string]int{} // 1 visiting, 2 done
		visit func(name string, chain []string) error
	)
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		if idx.builtin[name] {
			state[name] = 2
			return nil
		}
		path, ok := idx.files[name]
		if !ok {
			return fmt.Errorf("module %s: not in %s and not built in", name, idx.dir)
		}
		state[name] = 1
		data, err := readModule(ctx, path)
		if err != nil {
			return err
		}
		deps, err := modinfoDepends(data)
		if err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, Module{Name: name, Path: path, Depends: deps, Data: data})
		return nil
	}
	for _, n := range names {
		if err := visit(moduleName(n), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// readModule returns a module file's uncompressed bytes. Debian's 6.1
// kernels ship plain .ko files, later ones (trixie's 6.12) .ko.xz; busybox's
// insmod hands the bytes to init_module as they are, so the initramfs gets
// them decompressed.
func readModule(ctx context.Context, path string) ([]byte, error) {
	var tool string
	switch {
	case strings.HasSuffix(path, ".ko"):
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read module: %w", err)
		}
		return b, nil
	case strings.HasSuffix(path, ".ko.xz"):
		tool = "xz"
	case strings.HasSuffix(path, ".ko.zst"):
		tool = "zstd"
	case strings.HasSuffix(path, ".ko.gz"):
		tool = "gzip"
	default:
		return nil, fmt.Errorf("module %s: unknown compression", path)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, "-dc", path)
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("decompress %s with %s: %w: %s", path, tool, err, strings.TrimSpace(stderr.String()))
	}
	return b, nil
}

// modinfoDepends reads "depends=a,b" from a module's .modinfo ELF section
// (NUL-separated key=value strings, what modinfo(8) prints).
func modinfoDepends(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("parse ELF: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo: %w", err)
	}
	var deps []string
	for _, kv := range bytes.Split(info, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, moduleName(d))
			}
		}
	}
	slices.Sort(deps)
	return slices.Compact(deps), nil
}
