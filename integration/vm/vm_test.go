package vm

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// VMPackages are the packages whose tests run inside the VM when the host
// kernel has no ipip: every package with IPIP kernel tests belongs here.
// Each entry is a package path relative to the repository root, then the
// arguments its test binary gets after -test.v (e.g. a -test.run filter).
// MERIDIAN_VM_PKGS (space-separated package paths) replaces the list.
var VMPackages = []VMPackage{
	{Path: "./daemon/routes"},
	{Path: "./daemon/tunnel"},
	{Path: "./integration/vm/ipiptest"},
}

// VMPackage is one package to test in the VM.
type VMPackage struct {
	Path string
	Args []string
}

// VMModules are the kernel modules the VM loads before the tests (their
// dependencies come along): ipip for tunl0 and ipip links, vxlan so the
// tunnel package's VXLAN test runs beside its IPIP one, veth for the
// tests' underlays, bridge and dummy for tests that build fabrics;
// xfrm_user and nfnetlink because netlink.NewHandleAt opens a socket of
// every family it supports (NETLINK_XFRM, NETLINK_NETFILTER too) and fails
// when one is missing; nf_tables for tests that program nftables, after
// crc32c_generic: libcrc32c (one of its dependencies) asks the crypto API
// for crc32c at load, a soft dependency .modinfo names only as "softdep".
var VMModules = []string{"ipip", "vxlan", "veth", "bridge", "dummy", "xfrm_user", "nfnetlink", "crc32c_generic", "nf_tables"}

// vmTimeout bounds one boot: a hang guard for TCG, which runs the tests
// several times slower than the host, not a measure of anything.
const vmTimeout = 15 * time.Minute

func requireOrSkip(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("MERIDIAN_REQUIRE_LAB") == "1" {
		t.Fatal(msg + " (MERIDIAN_REQUIRE_LAB=1)")
	}
	t.Skip(msg)
}

// TestIPIPTestsInVM runs VMPackages' tests in a VM booting Debian's kernel
// when the host kernel has no ipip (MERIDIAN_VM=1 forces the VM anyway).
// On a host with ipip the same tests run in the ordinary test run, so this
// one skips. Each package's binary must exit 0 in the VM.
func TestIPIPTestsInVM(t *testing.T) {
	if os.Getenv("MERIDIAN_VM") != "1" {
		if ok, why := HostHasIPIP(); ok {
			t.Skipf("host kernel has ipip (%s): its IPIP tests run on the host in the ordinary test run; MERIDIAN_VM=1 runs them in the VM too", why)
		} else {
			t.Logf("host kernel has no ipip (%s): running the IPIP tests in a VM", why)
		}
	}
	qemu, assets, root := setupVM(t)
	pkgs := VMPackages
	if env := strings.Fields(os.Getenv("MERIDIAN_VM_PKGS")); len(env) > 0 {
		pkgs = nil
		for _, p := range env {
			pkgs = append(pkgs, VMPackage{Path: p})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))

	work := t.TempDir()
	var tests []Test
	for _, p := range pkgs {
		name := strings.Trim(strings.ReplaceAll(strings.TrimPrefix(p.Path, "./"), "/", "_"), "_.")
		bin := filepath.Join(work, name+".test")
		// Vetted already by the unit tests; the VM only runs them.
		build := exec.CommandContext(ctx, "go", "test", "-c", "-vet=off", "-o", bin, p.Path)
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s's test binary: %v\n%s", p.Path, err, out)
		}
		if _, err := os.Stat(bin); err != nil {
			// go test -c writes nothing for a package without tests.
			t.Fatalf("%s has no tests to run in the VM", p.Path)
		}
		tt := Test{Name: name, Binary: bin, Args: append([]string{"-test.count=1", "-test.timeout=10m"}, p.Args...)}
		if td := filepath.Join(root, p.Path, "testdata"); isDir(td) {
			tt.Testdata = td
		}
		tests = append(tests, tt)
	}

	start := time.Now()
	results, err := Run(ctx, Config{
		Assets:  assets,
		Modules: VMModules,
		Tests:   tests,
		// The IPIP tests skip on kernels without ipip; in the VM that
		// would hide a broken setup, so they must fail instead.
		Env:     []string{"MERIDIAN_REQUIRE_IPIP=1"},
		QEMU:    qemu,
		WorkDir: work,
		// MERIDIAN_VM_INITRAMFS=path keeps the initramfs there.
		Initramfs: os.Getenv("MERIDIAN_VM_INITRAMFS"),
		Console:   func(l string) { t.Log("vm| " + l) },
		Log:       log,
	})
	t.Logf("the VM ran for %s", time.Since(start).Round(time.Second))
	if err != nil {
		t.Errorf("vm: %v", err)
	}
	for _, r := range results {
		switch {
		case !r.Reported:
			t.Errorf("%s: did not finish in the VM", r.Name)
		case r.Exit != 0:
			t.Errorf("%s: exit status %d in the VM (%d passed, %d failed, %d skipped)", r.Name, r.Exit, r.Passed, r.Failed, r.Skipped)
		default:
			t.Logf("%s: passed in the VM (%d passed, %d skipped)", r.Name, r.Passed, r.Skipped)
		}
	}
}

// setupVM finds QEMU and fetches the kernel and busybox, skipping the test
// when they cannot be had (failing it under MERIDIAN_REQUIRE_LAB=1).
func setupVM(t *testing.T) (qemu string, assets Assets, root string) {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		requireOrSkip(t, "qemu-system-x86_64 not found: `make deps` installs qemu-system-x86")
	}
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			requireOrSkip(t, "%s not found: the VM's kernel and busybox come from Debian's packages", tool)
		}
	}
	root = repoRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	assets, err = Fetch(ctx, cacheDir(root), slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		requireOrSkip(t, "fetch the VM's kernel and busybox: %v", err)
	}
	t.Logf("kernel %s, busybox %s", assets.Release, assets.Busybox)
	return qemu, assets, root
}

// TestHostBinariesInVM runs dynamically linked programs from the host's
// Debian packages in the VM, which carries them with their ELF interpreter
// and shared libraries: etcd (the lab's) and tcpdump (libpcap and more).
// A test binary that is a shell script stands in for a Go one.
func TestHostBinariesInVM(t *testing.T) {
	var files []File
	for _, b := range []string{"/usr/bin/etcd", "/usr/bin/tcpdump"} {
		if _, err := os.Stat(b); err != nil {
			requireOrSkip(t, "%s missing: `make deps` installs it", b)
		}
		files = append(files, File{Src: b, Dst: "/opt/host" + b})
	}
	qemu, assets, _ := setupVM(t)
	script := filepath.Join(t.TempDir(), "host-binaries")
	if err := os.WriteFile(script, []byte(`#!/bin/sh
set -e
/opt/host/usr/bin/etcd --version
/opt/host/usr/bin/tcpdump --version
`), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	var console []string
	results, err := Run(ctx, Config{
		Assets:  assets,
		Files:   files,
		Tests:   []Test{{Name: "host-binaries", Binary: script}},
		QEMU:    qemu,
		WorkDir: t.TempDir(),
		Console: func(l string) { console = append(console, l); t.Log("vm| " + l) },
	})
	if err != nil {
		t.Fatalf("vm: %v", err)
	}
	if len(results) != 1 || !results[0].OK() {
		t.Fatalf("the programs did not run in the VM: %+v", results)
	}
	out := strings.Join(console, "\n")
	for _, want := range []string{"etcd Version:", "tcpdump version", "libpcap version"} {
		if !strings.Contains(out, want) {
			t.Errorf("the console lacks %q", want)
		}
	}
}

// repoRoot is the directory of the main module's go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := string(bytes.TrimSpace(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("not inside the module")
	}
	return filepath.Dir(gomod)
}

// cacheDir keeps the unpacked kernel and busybox between runs:
// MERIDIAN_VM_CACHE, else $MERIDIAN_BIN_DIR/vm, else the repository's bin/vm.
func cacheDir(root string) string {
	if d := os.Getenv("MERIDIAN_VM_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("MERIDIAN_BIN_DIR"); d != "" {
		return filepath.Join(d, "vm")
	}
	return filepath.Join(root, "bin", "vm")
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// testWriter sends slog's lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
