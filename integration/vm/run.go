package vm

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// Test is one statically linked Go test binary to run in the VM
// (`CGO_ENABLED=0 go test -c`: the initramfs has no C library).
type Test struct {
	Name     string   // unique, letters, digits, '.', '_', '-'; also the marker's key
	Binary   string   // host path of the test binary
	Testdata string   // optional host directory copied to the test's ./testdata
	Args     []string // after -test.v
}

// Config describes one boot.
type Config struct {
	Assets  Assets
	Modules []string // module names; their dependencies are added and loaded first
	Tests   []Test
	// Files are placed in the VM before the tests run, with the shared
	// libraries of dynamically linked executables among them.
	Files []File
	// Env is added to every test's environment (KEY=value).
	Env      []string
	CPUs     int    // default 2
	MemoryMB int    // default 1024
	QEMU     string // default qemu-system-x86_64 from PATH
	// WorkDir holds the initramfs while the VM runs (default os.TempDir());
	// it is removed when Run returns.
	WorkDir string
	// Initramfs, when set, is where the initramfs is written instead, and
	// kept, to boot again by hand (with rdinit=/bin/sh for a shell).
	Initramfs string
	// Console receives every line the VM prints on its serial console and
	// everything QEMU prints on stderr, as they come.
	Console func(line string)
	Log     *slog.Logger
}

// Result is one test binary's outcome, from the marker lines /init prints.
type Result struct {
	Name     string
	Exit     int  // the binary's exit status
	Reported bool // false when the VM stopped before the binary finished
	// Counts of `go test -v` result lines of top-level tests ("--- PASS: X").
	Passed, Failed, Skipped int
}

// OK reports whether the binary ran to the end and passed.
func (r Result) OK() bool { return r.Reported && r.Exit == 0 }

// markerPrefix starts every line /init prints for Run; a fresh nonce per
// boot follows, so no test output can forge a marker.
const markerPrefix = "@@meridian-vm"

var validTestName = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// Run builds the initramfs, boots the VM, runs the tests one after the
// other and returns one Result per test, in order. An error means the VM did
// not run every test to the end (boot failure, a module that would not load,
// QEMU failing, ctx ending): the results then say how far it got. A test
// that fails is not an error of Run: check Result.OK.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 1024
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if cfg.Console == nil {
		cfg.Console = func(string) {}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	seen := map[string]bool{}
	for _, t := range cfg.Tests {
		if !validTestName.MatchString(t.Name) || seen[t.Name] {
			return nil, fmt.Errorf("test name %q: empty, duplicate or not [A-Za-z0-9._-]+", t.Name)
		}
		seen[t.Name] = true
	}
	nonceBytes := make([]byte, 8)
	if _, err := rand.Read(nonceBytes); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	nonce := hex.EncodeToString(nonceBytes)

	idx, err := indexModules(cfg.Assets.ModulesDir)
	if err != nil {
		return nil, err
	}
	mods, err := idx.Resolve(ctx, cfg.Modules)
	if err != nil {
		return nil, fmt.Errorf("resolve modules: %w", err)
	}
	var f *os.File
	if cfg.Initramfs != "" {
		f, err = os.Create(cfg.Initramfs)
	} else {
		f, err = os.CreateTemp(cfg.WorkDir, "meridian-vm-initramfs-*.cpio")
		if err == nil {
			defer os.Remove(f.Name())
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create initramfs: %w", err)
	}
	files, libDirs, err := closure(cfg.Files)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("files for the vm: %w", err)
	}
	cfg.Files = files
	if len(libDirs) > 0 {
		cfg.Env = append(cfg.Env, "LD_LIBRARY_PATH="+strings.Join(libDirs, ":"))
	}
	werr := writeInitramfs(f, cfg, mods, nonce)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("write initramfs: %w", werr)
	}
	names := make([]string, len(mods))
	for i, m := range mods {
		names[i] = m.Name
	}
	cfg.Log.Info("booting", "kernel", cfg.Assets.Release, "modules", strings.Join(names, ","), "tests", len(cfg.Tests))

	args := []string{
		"-M", "q35", "-accel", "tcg", "-smp", strconv.Itoa(cfg.CPUs), "-m", strconv.Itoa(cfg.MemoryMB),
		// No default devices (NIC, VGA, monitor); the serial console on
		// stdout is the only channel, -no-reboot turns the guest's
		// reboot (panic=-1 after a panic) into QEMU exiting.
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-serial", "stdio",
		"-no-reboot",
		"-kernel", cfg.Assets.Kernel, "-initrd", f.Name(),
		"-append", "console=ttyS0 panic=-1 quiet",
	}
	cmd := exec.CommandContext(ctx, cfg.QEMU, args...)
	cmd.Stdin = nil
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.QEMU, err)
	}

	var wg sync.WaitGroup
	var consoleMu sync.Mutex
	emit := func(l string) {
		consoleMu.Lock()
		defer consoleMu.Unlock()
		cfg.Console(l)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			emit("qemu: " + sc.Text())
		}
	}()
	p := newMarkerParser(nonce, cfg.Tests)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), "\r")
		emit(l)
		p.line(l)
	}
	wg.Wait()
	waitErr := cmd.Wait()

	var errs []error
	if ctx.Err() != nil {
		errs = append(errs, fmt.Errorf("vm stopped: %w", ctx.Err()))
	} else if waitErr != nil {
		errs = append(errs, fmt.Errorf("%s: %w", cfg.QEMU, waitErr))
	}
	if len(p.insmodFailed) > 0 {
		errs = append(errs, fmt.Errorf("insmod failed in the vm: %s", strings.Join(p.insmodFailed, ", ")))
	}
	if !p.done {
		errs = append(errs, errors.New("the vm stopped before running every test (no final marker; see the console)"))
	}
	return p.results, errors.Join(errs...)
}

// markerParser follows the console: which test is running, the result
// lines of its top-level tests, the exit markers.
type markerParser struct {
	prefix       string
	results      []Result
	byName       map[string]int
	current      int
	insmodFailed []string
	done         bool
}

func newMarkerParser(nonce string, tests []Test) *markerParser {
	p := &markerParser{prefix: markerPrefix + " " + nonce + " ", byName: map[string]int{}, current: -1}
	for i, t := range tests {
		p.results = append(p.results, Result{Name: t.Name, Exit: -1})
		p.byName[t.Name] = i
	}
	return p
}

func (p *markerParser) line(l string) {
	// A kernel message may share the line: look anywhere in it.
	if i := strings.Index(l, p.prefix); i >= 0 {
		f := strings.Fields(l[i+len(p.prefix):])
		switch {
		case len(f) == 2 && f[0] == "start":
			if j, ok := p.byName[f[1]]; ok {
				p.current = j
			}
		case len(f) == 3 && f[0] == "exit":
			if j, ok := p.byName[f[1]]; ok {
				if code, err := strconv.Atoi(f[2]); err == nil {
					p.results[j].Exit = code
					p.results[j].Reported = true
				}
			}
			p.current = -1
		case len(f) == 2 && f[0] == "insmod-failed":
			p.insmodFailed = append(p.insmodFailed, f[1])
		case len(f) == 1 && f[0] == "done":
			p.done = true
		}
		return
	}
	if p.current < 0 {
		return
	}
	// go test -v: top-level results are unindented "--- PASS: TestX (0.01s)".
	r := &p.results[p.current]
	switch {
	case strings.HasPrefix(l, "--- PASS: "):
		r.Passed++
	case strings.HasPrefix(l, "--- FAIL: "):
		r.Failed++
	case strings.HasPrefix(l, "--- SKIP: "):
		r.Skipped++
	}
}

// writeInitramfs lays out the root file system the kernel unpacks.
func writeInitramfs(w io.Writer, cfg Config, mods []Module, nonce string) error {
	c := newCPIOWriter(w)
	dirs := map[string]bool{}
	mkdirAll := func(d string) {
		var parts []string
		for ; d != "." && d != "/" && d != "" && !dirs[d]; d = path.Dir(d) {
			parts = append(parts, d)
		}
		for i := len(parts) - 1; i >= 0; i-- {
			dirs[parts[i]] = true
			c.Dir(parts[i], 0o755)
		}
	}
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev",
		"run", "tmp", "var", "root", "lib/modules", "tests"} {
		mkdirAll(d)
	}
	c.File("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	c.File("etc/group", 0o644, []byte("root:x:0:\n"))
	c.File("etc/hosts", 0o644, []byte("127.0.0.1 localhost\n::1 localhost\n"))
	if err := addHostFile(c, "bin/busybox", cfg.Assets.Busybox, 0o755); err != nil {
		return err
	}
	// For rdinit=/bin/sh when booting by hand; /init installs the rest.
	c.Symlink("bin/sh", "busybox")
	for _, m := range mods {
		c.File("lib/modules/"+m.Name+".ko", 0o644, m.Data)
	}
	for _, f := range cfg.Files {
		dst := strings.TrimPrefix(path.Clean(f.Dst), "/")
		mkdirAll(path.Dir(dst))
		st, err := os.Stat(f.Src)
		if err != nil {
			return err
		}
		if err := addHostFile(c, dst, f.Src, st.Mode().Perm()); err != nil {
			return err
		}
	}
	for _, t := range cfg.Tests {
		dir := "tests/" + t.Name
		mkdirAll(dir)
		if err := addHostFile(c, dir+"/"+t.Name+".test", t.Binary, 0o755); err != nil {
			return err
		}
		if t.Testdata != "" {
			if err := addHostTree(c, dir+"/testdata", t.Testdata); err != nil {
				return err
			}
		}
	}
	c.File("init", 0o755, []byte(initScript(cfg, mods, nonce)))
	return c.Close()
}

func addHostFile(c *cpioWriter, name, path string, perm fs.FileMode) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	c.FileFrom(name, perm, st.Size(), f)
	return nil
}

func addHostTree(c *cpioWriter, name, root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		dst := name
		if rel != "." {
			dst = name + "/" + filepath.ToSlash(rel)
		}
		switch {
		case d.IsDir():
			c.Dir(dst, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			c.Symlink(dst, target)
		case d.Type().IsRegular():
			return addHostFile(c, dst, p, 0o644)
		}
		return nil
	})
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// initScript is the VM's /init: mount the pseudo file systems, load the
// modules in order, run each test in its own directory, report through
// marker lines, power off. poweroff -f stops the machine without an init
// system; should the script die first, the kernel panics (init exited),
// reboots (panic=-1) and QEMU exits (-no-reboot).
func initScript(cfg Config, mods []Module, nonce string) string {
	m := markerPrefix + " " + nonce
	var b strings.Builder
	b.WriteString(`#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TMPDIR=/tmp
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ln -s /run /var/run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
hostname meridian-vm
`)
	for _, mod := range mods {
		fmt.Fprintf(&b, "insmod /lib/modules/%s.ko || echo '%s insmod-failed %s'\n", mod.Name, m, mod.Name)
	}
	b.WriteString("ip link set lo up\n")
	fmt.Fprintf(&b, "echo '%s ready' \"$(uname -r)\"\n", m)
	for _, kv := range cfg.Env {
		fmt.Fprintf(&b, "export %s\n", shellQuote(kv))
	}
	for _, t := range cfg.Tests {
		args := []string{"./" + t.Name + ".test", "-test.v"}
		args = append(args, t.Args...)
		for i := range args {
			args[i] = shellQuote(args[i])
		}
		fmt.Fprintf(&b, "echo '%s start %s'\n", m, t.Name)
		fmt.Fprintf(&b, "(cd /tests/%s && exec %s)\n", t.Name, strings.Join(args, " "))
		fmt.Fprintf(&b, "echo \"%s exit %s $?\"\n", m, t.Name)
	}
	fmt.Fprintf(&b, "echo '%s done'\n", m)
	b.WriteString("poweroff -f\n")
	return b.String()
}
