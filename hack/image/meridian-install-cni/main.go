// Command meridian-install-cni is the Helm chart's init container: it
// copies meridian-cni into the node's CNI bin dir and writes Meridian's
// conflist into the CNI conf dir. The image has no shell, so this small
// static program does what a `cp && mv` script would, and checks the
// conflist with meridian-cni's own parser first so a bad chart value never
// reaches the container runtime.
//
// Each file is written to a temporary name in its target directory, synced
// and renamed over the old one: rename(2) within a directory is atomic, so
// the runtime sees the old file or the new one, never a half-written binary
// (ETXTBSY or a truncated ELF) or half a conflist. Nothing else in either
// directory is touched.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/meridian-net/meridian/cni-plugin/config"
)

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

func main() {
	var (
		plugin    = flag.String("plugin", "", "meridian-cni binary to install")
		binDir    = flag.String("cni-bin-dir", "", "the node's CNI bin dir (mounted); the plugin is installed there under its own name")
		conflist  = flag.String("conflist", "", "conflist to install, e.g. from the chart's ConfigMap")
		confDir   = flag.String("cni-conf-dir", "", "the node's CNI conf dir (mounted); the conflist keeps its file name there")
		ipForward = flag.Bool("enable-ip-forward", false, "set net.ipv4.ip_forward=1 (needs a writable /proc/sys: a privileged container)")
	)
	flag.Parse()
	if err := run(*plugin, *binDir, *conflist, *confDir, *ipForward); err != nil {
		fmt.Fprintf(os.Stderr, "meridian-install-cni: %v\n", err)
		os.Exit(1)
	}
}

func run(plugin, binDir, conflist, confDir string, ipForward bool) error {
	if (plugin == "") != (binDir == "") {
		return errors.New("--plugin and --cni-bin-dir go together")
	}
	if (conflist == "") != (confDir == "") {
		return errors.New("--conflist and --cni-conf-dir go together")
	}
	if plugin == "" && conflist == "" && !ipForward {
		return errors.New("nothing to do: give --plugin/--cni-bin-dir, --conflist/--cni-conf-dir or --enable-ip-forward")
	}
	if ipForward {
		if err := os.WriteFile(ipForwardPath, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable ip forwarding: %w", err)
		}
		fmt.Println("net.ipv4.ip_forward=1")
	}
	if plugin != "" {
		dst, err := installPlugin(plugin, binDir)
		if err != nil {
			return err
		}
		fmt.Println("installed", dst)
	}
	if conflist != "" {
		dst, err := installConflist(conflist, confDir)
		if err != nil {
			return err
		}
		fmt.Println("installed", dst)
	}
	return nil
}

// installPlugin copies the plugin binary into dir with mode 0755.
func installPlugin(src, dir string) (string, error) {
	f, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("open plugin: %w", err)
	}
	defer f.Close()
	dst := filepath.Join(dir, filepath.Base(src))
	if err := writeAtomic(dst, f, 0o755); err != nil {
		return "", fmt.Errorf("install plugin: %w", err)
	}
	return dst, nil
}

// installConflist validates the conflist and writes it into dir under its
// own file name with mode 0644.
func installConflist(src, dir string) (string, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return "", fmt.Errorf("read conflist: %w", err)
	}
	if err := validateConflist(data); err != nil {
		return "", fmt.Errorf("conflist %s: %w", src, err)
	}
	name := filepath.Base(src)
	if !strings.HasSuffix(name, ".conflist") {
		// libcni reads only .conf, .conflist and .json; any other name
		// would be ignored silently and the node would stay without a network.
		return "", fmt.Errorf("conflist %s: name must end in .conflist", src)
	}
	dst := filepath.Join(dir, name)
	if err := writeAtomic(dst, bytes.NewReader(data), 0o644); err != nil {
		return "", fmt.Errorf("install conflist: %w", err)
	}
	return dst, nil
}

// validateConflist parses every meridian-cni entry the way the plugin will
// when the runtime calls it, with the list's cniVersion and name, as libcni
// hands them down.
func validateConflist(data []byte) error {
	var list struct {
		CNIVersion string            `json:"cniVersion"`
		Name       string            `json:"name"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	found := false
	for i, raw := range list.Plugins {
		var p map[string]any
		if err := json.Unmarshal(raw, &p); err != nil {
			return fmt.Errorf("plugin %d: decode: %w", i, err)
		}
		if p["type"] != config.PluginType {
			continue
		}
		found = true
		p["cniVersion"], p["name"] = list.CNIVersion, list.Name
		conf, err := json.Marshal(p)
		if err != nil {
			return fmt.Errorf("plugin %d: encode: %w", i, err)
		}
		if _, err := config.Parse(conf); err != nil {
			return fmt.Errorf("plugin %d: %w", i, err)
		}
	}
	if !found {
		return fmt.Errorf("no plugin of type %q", config.PluginType)
	}
	return nil
}

// writeAtomic writes r to a temporary file next to dst and renames it over
// dst, so readers of dst see either the old or the complete new content.
func writeAtomic(dst string, r io.Reader, mode os.FileMode) (err error) {
	// The leading dot keeps libcni from loading the temporary conflist.
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, r); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("rename to %s: %w", dst, err)
	}
	return nil
}
