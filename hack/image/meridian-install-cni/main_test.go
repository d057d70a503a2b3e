package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const goodConflist = `{
  "cniVersion": "1.0.0",
  "name": "meridian",
  "plugins": [{"type": "meridian-cni", "stateDir": "/var/lib/meridian", "mtu": 1450, "hostVethPrefix": "mer"}]
}
`

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestInstallReplacesOnlyItsOwnFiles(t *testing.T) {
	src, bin, conf := t.TempDir(), t.TempDir(), t.TempDir()
	plugin := filepath.Join(src, "meridian-cni")
	if err := os.WriteFile(plugin, []byte("new plugin"), 0o600); err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(src, "10-meridian.conflist")
	if err := os.WriteFile(list, []byte(goodConflist), 0o600); err != nil {
		t.Fatal(err)
	}
	// What is already on the node: an older meridian-cni and conflist,
	// another plugin and another network's conflist.
	for path, content := range map[string]string{
		filepath.Join(bin, "meridian-cni"):          "old plugin",
		filepath.Join(bin, "loopback"):              "loopback",
		filepath.Join(conf, "10-meridian.conflist"): "{}",
		filepath.Join(conf, "20-other.conflist"):    "other",
	} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	for range 2 { // a restarted init container installs the same again
		if err := run(plugin, bin, list, conf, false); err != nil {
			t.Fatal(err)
		}
	}

	for path, want := range map[string]struct {
		content string
		mode    os.FileMode
	}{
		filepath.Join(bin, "meridian-cni"):          {"new plugin", 0o755},
		filepath.Join(bin, "loopback"):              {"loopback", 0o600},
		filepath.Join(conf, "10-meridian.conflist"): {goodConflist, 0o644},
		filepath.Join(conf, "20-other.conflist"):    {"other", 0o600},
	} {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want.content {
			t.Errorf("%s = %q, want %q", path, got, want.content)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want.mode {
			t.Errorf("%s mode %v, want %v", path, st.Mode().Perm(), want.mode)
		}
	}
	if got, want := names(t, bin), []string{"loopback", "meridian-cni"}; !slices.Equal(got, want) {
		t.Errorf("bin dir holds %v, want %v (no temporary files)", got, want)
	}
	if got, want := names(t, conf), []string{"10-meridian.conflist", "20-other.conflist"}; !slices.Equal(got, want) {
		t.Errorf("conf dir holds %v, want %v", got, want)
	}
}

func TestInstallRefusesBadConflist(t *testing.T) {
	for name, content := range map[string]string{
		"mtu below 576":  strings.Replace(goodConflist, `"mtu": 1450`, `"mtu": 100`, 1),
		"no meridian":    `{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}]}`,
		"bad version":    strings.Replace(goodConflist, `"1.0.0"`, `"0.3.1"`, 1),
		"relative state": strings.Replace(goodConflist, `"/var/lib/meridian"`, `"var/lib"`, 1),
		"not json":       `{"cniVersion":`,
	} {
		t.Run(name, func(t *testing.T) {
			src, conf := t.TempDir(), t.TempDir()
			list := filepath.Join(src, "10-meridian.conflist")
			if err := os.WriteFile(list, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := run("", "", list, conf, false); err == nil {
				t.Fatal("bad conflist installed")
			}
			if got := names(t, conf); len(got) != 0 {
				t.Errorf("conf dir holds %v after a refused install", got)
			}
		})
	}
}

func TestRunRefusesHalfAPair(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][4]string{
		{"", dir, "", ""},
		{filepath.Join(dir, "p"), "", "", ""},
		{"", "", filepath.Join(dir, "x.conflist"), ""},
		{"", "", "", ""},
	} {
		if err := run(args[0], args[1], args[2], args[3], false); err == nil {
			t.Errorf("run%q succeeded", args)
		}
	}
}
