package vm

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestParseKernelDependency(t *testing.T) {
	out := `linux-image-amd64
  Depends: linux-image-6.1.0-56-amd64
`
	if got := parseKernelDependency(out); got != "linux-image-6.1.0-56-amd64" {
		t.Errorf("got %q", got)
	}
	for _, bad := range []string{"", "linux-image-amd64\n", "linux-image-amd64\n  Depends: linux-image-amd64\n", "  Recommends: linux-image-6.1.0-56-amd64\n"} {
		if got := parseKernelDependency(bad); got != "" {
			t.Errorf("%q: got %q, want nothing", bad, got)
		}
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/net/ipv4/ip_tunnel.ko":    "ip_tunnel",
		"ip-tunnel":                       "ip_tunnel",
		"/x/kernel/net/ipv4/ipip.ko.xz":   "ipip",
		"kernel/crypto/crc32c_generic.ko": "crc32c_generic",
		"nf_tables.ko.zst":                "nf_tables",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMarkerParser(t *testing.T) {
	tests := []Test{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	p := newMarkerParser("n0nce", tests)
	for _, l := range []string{
		"@@meridian-vm n0nce ready 6.1.0",
		"--- PASS: TestBeforeAnyStart (0.00s)",
		"@@meridian-vm n0nce insmod-failed nf_tables",
		"@@meridian-vm n0nce start a",
		"=== RUN   TestX",
		"--- PASS: TestX (0.01s)",
		"    --- PASS: TestX/sub (0.00s)",
		"--- SKIP: TestY (0.00s)",
		"--- FAIL: TestZ (0.00s)",
		// A test printing a marker without the boot's nonce forges nothing.
		"@@meridian-vm other exit a 0",
		"@@meridian-vm n0nce exit a 1",
		"@@meridian-vm n0nce start b",
		// A kernel message may precede the marker on its line.
		"[   12.3] random: crng init done@@meridian-vm n0nce exit b 0",
		"@@meridian-vm n0nce start c",
		"--- PASS: TestW (0.00s)",
	} {
		p.line(l)
	}
	want := []Result{
		{Name: "a", Exit: 1, Reported: true, Passed: 1, Failed: 1, Skipped: 1},
		{Name: "b", Exit: 0, Reported: true},
		{Name: "c", Exit: -1, Reported: false, Passed: 1},
	}
	if !slices.Equal(p.results, want) {
		t.Errorf("results:\n got %+v\nwant %+v", p.results, want)
	}
	if p.done {
		t.Error("done without the done marker")
	}
	if !slices.Equal(p.insmodFailed, []string{"nf_tables"}) {
		t.Errorf("insmod failures: %v", p.insmodFailed)
	}
	if p.results[1].OK() != true || p.results[0].OK() || p.results[2].OK() {
		t.Error("OK() disagrees with exit and reported")
	}
	p.line("@@meridian-vm n0nce done")
	if !p.done {
		t.Error("the done marker was missed")
	}
}

// TestShellQuote runs the quoting through a real sh.
func TestShellQuote(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	for _, s := range []string{"", "plain", "with space", `it's`, `"$HOME" $(false) ; \ *`, "-test.run=^TestX$"} {
		out, err := exec.Command(sh, "-c", "printf %s "+shellQuote(s)).Output()
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if string(out) != s {
			t.Errorf("quoted %q came back as %q", s, out)
		}
	}
}

// TestCPIONewc decodes the writer's output by the newc layout the kernel
// reads (buffer-format.rst): 110-byte headers, names and data 4-aligned.
func TestCPIONewc(t *testing.T) {
	var buf bytes.Buffer
	c := newCPIOWriter(&buf)
	c.Dir("bin", 0o755)
	c.File("bin/a", 0o644, []byte("hello"))
	c.FileFrom("init", 0o755, 3, strings.NewReader("xyzEXTRA"))
	c.Symlink("sbin", "bin")
	c.File("empty", 0o600, nil)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	type entry struct {
		name string
		mode uint64
		data string
	}
	var got []entry
	b := buf.Bytes()
	off := 0
	field := func(h []byte, i int) uint64 {
		v, err := strconv.ParseUint(string(h[6+8*i:6+8*i+8]), 16, 32)
		if err != nil {
			t.Fatalf("header field %d %q: %v", i, h[6+8*i:6+8*i+8], err)
		}
		return v
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off%4 != 0 {
			t.Fatalf("entry at %d is not 4-aligned", off)
		}
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("magic at %d: %q", off, h[:6])
		}
		mode, size, namesize := field(h, 1), field(h, 6), field(h, 11)
		name := string(b[off+110 : off+110+int(namesize)-1])
		if b[off+110+int(namesize)-1] != 0 {
			t.Fatalf("%s: name not NUL-terminated", name)
		}
		dataOff := align(off + 110 + int(namesize))
		data := string(b[dataOff : dataOff+int(size)])
		off = align(dataOff + int(size))
		if name == "TRAILER!!!" {
			break
		}
		got = append(got, entry{name, mode, data})
	}
	if off != len(b) {
		t.Errorf("%d bytes after the trailer", len(b)-off)
	}
	want := []entry{
		{"bin", 0o040755, ""},
		{"bin/a", 0o100644, "hello"},
		{"init", 0o100755, "xyz"},
		{"sbin", 0o120777, "bin"},
		{"empty", 0o100600, ""},
	}
	if !slices.Equal(got, want) {
		t.Errorf("entries:\n got %+v\nwant %+v", got, want)
	}
}

func TestCPIOShortReaderFails(t *testing.T) {
	c := newCPIOWriter(&bytes.Buffer{})
	c.FileFrom("x", 0o644, 10, strings.NewReader("short"))
	if err := c.Close(); err == nil {
		t.Error("a reader shorter than the declared size went unnoticed")
	}
}

func TestInitScript(t *testing.T) {
	cfg := Config{
		Tests: []Test{{Name: "daemon_routes", Args: []string{"-test.run", "Test A'B"}}},
		Env:   []string{"MERIDIAN_REQUIRE_IPIP=1"},
	}
	s := initScript(cfg, []Module{{Name: "tunnel4"}, {Name: "ipip"}}, hex.EncodeToString([]byte{1, 2}))
	for _, want := range []string{
		"insmod /lib/modules/tunnel4.ko || echo '@@meridian-vm 0102 insmod-failed tunnel4'\n",
		"export 'MERIDIAN_REQUIRE_IPIP=1'\n",
		"echo '@@meridian-vm 0102 start daemon_routes'\n",
		`(cd /tests/daemon_routes && exec './daemon_routes.test' '-test.v' '-test.run' 'Test A'\''B')` + "\n",
		"echo \"@@meridian-vm 0102 exit daemon_routes $?\"\n",
		"echo '@@meridian-vm 0102 done'\npoweroff -f\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("init script lacks %q:\n%s", want, s)
		}
	}
	if strings.Index(s, "tunnel4.ko") > strings.Index(s, "ipip.ko") {
		t.Error("modules out of the given order")
	}
}

// TestResolveModules resolves ipip against the cached Debian kernel, when a
// previous VM run left one: ipip needs ip_tunnel and tunnel4 first.
func TestResolveModules(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join(cacheDir(repoRoot(t)), "linux-image-*", "lib", "modules", "*"))
	if len(dirs) == 0 {
		t.Skip("no cached kernel yet (TestIPIPTestsInVM fetches one)")
	}
	idx, err := indexModules(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	mods, err := idx.Resolve(context.Background(), []string{"ipip", "veth", "ip-tunnel"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range mods {
		if _, dup := pos[m.Name]; dup {
			t.Errorf("%s twice", m.Name)
		}
		pos[m.Name] = i
		for _, d := range m.Depends {
			if j, ok := pos[d]; !ok && !idx.builtin[d] || ok && j > i {
				t.Errorf("%s comes before its dependency %s", m.Name, d)
			}
		}
	}
	for _, n := range []string{"ipip", "ip_tunnel", "tunnel4", "veth"} {
		if _, ok := pos[n]; !ok {
			t.Errorf("%s missing from %v", n, mods)
		}
	}
	if !slices.Contains(mods[pos["ipip"]].Depends, "ip_tunnel") {
		t.Errorf("ipip's dependencies %v lack ip_tunnel", mods[pos["ipip"]].Depends)
	}
	if _, err := idx.Resolve(context.Background(), []string{"no_such_module"}); err == nil {
		t.Error("an unknown module resolved")
	}
}

// TestClosure follows a dynamically linked host program to its interpreter
// and libraries; a file that is not ELF brings nothing along.
func TestClosure(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	sh, err = filepath.EvalSymlinks(sh)
	if err != nil {
		t.Fatal(err)
	}
	interp, _, _, err := elfDynamic(sh)
	if err != nil || interp == "" {
		t.Skipf("%s is not a dynamically linked ELF (%v)", sh, err)
	}
	script := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	files, dirs, err := closure([]File{{Src: sh, Dst: "/opt/sh"}, {Src: script, Dst: "/opt/script"}})
	if err != nil {
		t.Fatal(err)
	}
	var dsts []string
	for _, f := range files {
		dsts = append(dsts, f.Dst)
	}
	if len(files) < 4 || files[0].Dst != "/opt/sh" || files[1].Dst != "/opt/script" {
		t.Fatalf("files %v: want the two given first, then the interpreter and libc", dsts)
	}
	if !slices.Contains(dsts, interp) {
		t.Errorf("files %v lack the interpreter %s", dsts, interp)
	}
	if !slices.ContainsFunc(dsts, func(d string) bool { return filepath.Base(d) == "libc.so.6" }) {
		t.Errorf("files %v lack libc.so.6", dsts)
	}
	if len(dirs) == 0 {
		t.Error("no library directories for LD_LIBRARY_PATH")
	}
	if _, _, err := closure([]File{{Src: sh, Dst: "relative"}}); err == nil {
		t.Error("a relative destination was accepted")
	}
}
