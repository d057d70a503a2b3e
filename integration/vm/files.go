package vm

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// File is a host file to place in the VM: a tool a test runs, a
// configuration, a binary the lab starts. A dynamically linked executable
// brings its ELF interpreter and shared libraries along (see closure).
type File struct {
	Src string // host path
	Dst string // absolute path in the VM
}

// libSearchDirs are where the host's ld.so finds libraries without a cache
// entry: Debian's multiarch directories first, as in /etc/ld.so.conf.d.
var libSearchDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
	"/lib64", "/usr/lib64", "/lib", "/usr/lib",
	"/usr/local/lib/x86_64-linux-gnu", "/usr/local/lib",
}

// closure returns files plus, for each dynamically linked ELF among them,
// its interpreter and every shared library it needs, transitively, each at
// its host path (so PT_INTERP's absolute path holds in the VM), followed by
// the directories holding those libraries, for LD_LIBRARY_PATH: the VM has
// no ld.so.cache.
func closure(files []File) ([]File, []string, error) {
	var (
		out     []File
		libDirs []string
		seen    = map[string]bool{}
		queue   []string
	)
	for _, f := range files {
		if !path.IsAbs(f.Dst) {
			return nil, nil, fmt.Errorf("file %s: destination %q is not absolute", f.Src, f.Dst)
		}
		out = append(out, f)
		seen[path.Clean(f.Dst)] = true
		queue = append(queue, f.Src)
	}
	for len(queue) > 0 {
		src := queue[0]
		queue = queue[1:]
		interp, needed, runpath, err := elfDynamic(src)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", src, err)
		}
		if interp != "" && !seen[interp] {
			seen[interp] = true
			out = append(out, File{Src: interp, Dst: interp})
		}
		for _, lib := range needed {
			p, err := findLibrary(lib, runpath, filepath.Dir(src))
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", src, err)
			}
			if seen[p] {
				continue
			}
			seen[p] = true
			out = append(out, File{Src: p, Dst: p})
			if d := path.Dir(p); !slices.Contains(libDirs, d) {
				libDirs = append(libDirs, d)
			}
			queue = append(queue, p)
		}
	}
	return out, libDirs, nil
}

// elfDynamic reads what the dynamic loader needs of a file; a file that is
// not ELF, or a static one, needs nothing.
func elfDynamic(p string) (interp string, needed, runpath []string, err error) {
	fh, err := os.Open(p)
	if err != nil {
		return "", nil, nil, err
	}
	defer fh.Close()
	magic := make([]byte, len(elf.ELFMAG))
	if _, err := io.ReadFull(fh, magic); err != nil || string(magic) != elf.ELFMAG {
		return "", nil, nil, nil // a script, data: nothing to load
	}
	f, err := elf.NewFile(fh)
	if err != nil {
		return "", nil, nil, err
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			b := make([]byte, prog.Filesz)
			if _, err := prog.ReadAt(b, 0); err != nil {
				return "", nil, nil, fmt.Errorf("read PT_INTERP: %w", err)
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	if f.Section(".dynamic") == nil {
		return interp, nil, nil, nil
	}
	needed, err = f.ImportedLibraries()
	if err != nil {
		return "", nil, nil, fmt.Errorf("DT_NEEDED: %w", err)
	}
	for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
		vals, err := f.DynString(tag)
		if err != nil {
			return "", nil, nil, fmt.Errorf("%s: %w", tag, err)
		}
		for _, v := range vals {
			runpath = append(runpath, strings.Split(v, ":")...)
		}
	}
	return interp, needed, runpath, nil
}

func findLibrary(name string, runpath []string, origin string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	var dirs []string
	for _, d := range runpath {
		dirs = append(dirs, strings.ReplaceAll(d, "$ORIGIN", origin))
	}
	dirs = append(dirs, libSearchDirs...)
	for _, d := range dirs {
		p := path.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
	}
	return "", fmt.Errorf("shared library %s not found in %s", name, strings.Join(dirs, ":"))
}
