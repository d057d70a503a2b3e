package container

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestEffectiveCapabilities(t *testing.T) {
	for _, tc := range []struct {
		name       string
		privileged bool
		add, drop  []string
		want       []string // nil: AllCapabilities
		err        string
	}{
		{name: "privileged", privileged: true, drop: []string{"ALL"}, want: nil},
		{name: "default", want: DefaultCapabilities},
		{name: "chart: drop ALL, add two", add: []string{"NET_ADMIN", "NET_BIND_SERVICE"}, drop: []string{"ALL"}, want: []string{"NET_ADMIN", "NET_BIND_SERVICE"}},
		{name: "drop ALL alone", drop: []string{"all"}, want: []string{}},
		{name: "add ALL", add: []string{"ALL"}, want: nil},
		{name: "add ALL drop one", add: []string{"ALL"}, drop: []string{"SYS_ADMIN"}, want: slices.DeleteFunc(AllCapabilities(), func(c string) bool { return c == "SYS_ADMIN" })},
		{name: "add ALL drop ALL", add: []string{"ALL"}, drop: []string{"ALL"}, want: []string{}},
		{name: "drop wins over add", add: []string{"NET_ADMIN"}, drop: []string{"NET_ADMIN", "ALL"}, want: []string{}},
		{name: "prefix, case and duplicates", add: []string{"cap_net_admin", "NET_ADMIN", "Net_Admin"}, drop: []string{"ALL", "CAP_CHOWN"}, want: []string{"NET_ADMIN"}},
		{name: "default minus two plus one", add: []string{"SYS_TIME"}, drop: []string{"MKNOD", "NET_RAW"}, want: []string{"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT", "SYS_TIME"}},
		{name: "unknown add", add: []string{"NET_ADMN"}, err: `add: unknown capability "NET_ADMN"`},
		{name: "unknown drop", drop: []string{"FLY"}, err: `drop: unknown capability "FLY"`},
		{name: "empty name", add: []string{""}, err: "unknown capability"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := EffectiveCapabilities(tc.privileged, tc.add, tc.drop)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if want == nil {
				want = AllCapabilities()
			}
			if !slices.Equal(got, want) {
				t.Errorf("got %q, want %q", got, want)
			}
			if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
				t.Errorf("%q is not sorted and unique", got)
			}
		})
	}
}

func TestAllCapabilitiesMatchesKernelNumbers(t *testing.T) {
	all := AllCapabilities()
	if len(all) != 41 || !slices.IsSorted(all) {
		t.Fatalf("AllCapabilities = %d names %q", len(all), all)
	}
	seen := map[int]bool{}
	for _, n := range all {
		seen[capabilityNumbers[n]] = true
	}
	for i := 0; i <= 40; i++ {
		if !seen[i] {
			t.Errorf("capability number %d has no name", i)
		}
	}
	if capabilityNumbers["NET_ADMIN"] != 12 || capabilityNumbers["NET_BIND_SERVICE"] != 10 || capabilityNumbers["SYS_ADMIN"] != 21 {
		t.Error("wrong numbers for NET_ADMIN, NET_BIND_SERVICE or SYS_ADMIN")
	}
}

func TestStartTimeOfSelf(t *testing.T) {
	a, err := StartTime(1)
	if err != nil {
		t.Skipf("no /proc/1/stat: %v", err)
	}
	self, err := StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Init started before this test process, and both since boot.
	if self < a {
		t.Errorf("start time of this process %d before init's %d", self, a)
	}
	if _, err := StartTime(-5); err == nil {
		t.Error("StartTime(-5) succeeded")
	}
}

func TestLookPathAndInRoot(t *testing.T) {
	root := t.TempDir()
	mustMkdir(t, filepath.Join(root, "usr/bin"))
	mustMkdir(t, filepath.Join(root, "run"))
	mustMkdir(t, filepath.Join(root, "var"))
	if err := os.Symlink("../run", filepath.Join(root, "var/run")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/run", filepath.Join(root, "abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../..", filepath.Join(root, "up")); err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		"/var/run/netns":  "/run/netns",
		"/abs/x":          "/run/x",
		"/up/etc/passwd":  "/etc/passwd",
		"/../../etc":      "/etc",
		"/new/dir/./file": "/new/dir/file",
	} {
		got, err := inRoot(root, in)
		if err != nil {
			t.Errorf("inRoot(%s): %v", in, err)
			continue
		}
		if got != filepath.Join(root, want) {
			t.Errorf("inRoot(%s) = %s, want %s", in, got, filepath.Join(root, want))
		}
	}
	if err := os.Symlink("loop", filepath.Join(root, "loop")); err != nil {
		t.Fatal(err)
	}
	if _, err := inRoot(root, "/loop/x"); err == nil {
		t.Error("inRoot followed a symlink loop")
	}

	// lookPath runs after pivot_root, so it sees absolute host paths; a
	// temp dir stands in for the container's PATH.
	bin := filepath.Join(root, "usr/bin")
	if err := os.WriteFile(filepath.Join(bin, "tool"), []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := lookPath("tool", []string{"PATH=/nonexistent:" + bin}); err != nil || got != filepath.Join(bin, "tool") {
		t.Errorf("lookPath(tool) = %q, %v", got, err)
	}
	if _, err := lookPath("data", []string{"PATH=" + bin}); err == nil {
		t.Error("lookPath found a file that is not executable")
	}
	if _, err := lookPath(filepath.Join(bin, "missing"), nil); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("lookPath of a missing absolute path: %v", err)
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/tab\011`: "/tab\t", `/odd\04`: `/odd\04`} {
		if got := UnescapeMountinfo(in); got != want {
			t.Errorf("UnescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseProcStat(t *testing.T) {
	// comm may contain spaces and parentheses; fields count from the last ')'.
	line := "4242 (kube (api) server) S 1 4242 4242 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 12 0 987654 1000 200 18446744073709551615"
	st, err := ParseProcStat(line)
	if err != nil {
		t.Fatalf("ParseProcStat: %v", err)
	}
	if st.State != 'S' || st.Start != 987654 {
		t.Errorf("got state %c start %d, want S 987654", st.State, st.Start)
	}
	for _, bad := range []string{"", "12 (x", "12 (x) S 1 2"} {
		if _, err := ParseProcStat(bad); err == nil {
			t.Errorf("ParseProcStat(%q) accepted a malformed line", bad)
		}
	}
}
