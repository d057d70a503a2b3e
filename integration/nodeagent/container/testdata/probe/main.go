// Command probe runs inside a test container and reports what it sees as
// JSON on stdout: its capability sets, no_new_privs, whether / and
// /proc/sys are writable, its environment and working directory, and
// whatever the flags ask it to try.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type report struct {
	Status       map[string]string // CapInh, CapPrm, CapEff, CapBnd, CapAmb, NoNewPrivs
	RootWrite    string            // error creating a file in /, "" on success
	RootEROFS    bool
	SysctlWrite  string // error writing ip_forward, "" on success
	SysctlEROFS  bool
	SysWrite     string // error writing a sysfs attribute, "" on success
	Env          []string
	Cwd          string
	ReadFile     string // content of -read
	ReadErr      string
	WriteErr     string // error writing -write, "" on success
	WriteEROFS   bool
	MountErrs    map[string]string // -mount directory: error mounting a tmpfs there, "" on success
	Listing      []string
	ListErr      string
	SysNetDevs   []string // /sys/class/net: the devices of the container's netns
	WaitErr      string
	ProcSelfRoot string
}

func main() {
	var (
		read  = flag.String("read", "", "file to read")
		write = flag.String("write", "", "file to try writing")
		ready = flag.String("ready", "", "file to create when ready")
		wait  = flag.String("wait", "", "file to wait for before listing")
		list  = flag.String("list", "", "directory to list after waiting")
	)
	var mounts []string
	flag.Func("mount", "directory to mount a tmpfs on (repeatable)", func(s string) error { mounts = append(mounts, s); return nil })
	flag.Parse()
	var r report
	r.Status = status()
	if err := os.WriteFile("/probe-root-write", []byte("x"), 0o644); err != nil {
		r.RootWrite, r.RootEROFS = err.Error(), errors.Is(err, syscall.EROFS)
	} else {
		os.Remove("/probe-root-write")
	}
	const fwd = "/proc/sys/net/ipv4/ip_forward"
	if cur, err := os.ReadFile(fwd); err != nil {
		r.SysctlWrite = err.Error()
	} else if err := os.WriteFile(fwd, cur, 0o644); err != nil {
		// The same value back: a success changes nothing.
		r.SysctlWrite, r.SysctlEROFS = err.Error(), errors.Is(err, syscall.EROFS)
	}
	if err := os.WriteFile("/sys/class/net/lo/mtu", []byte("65536"), 0o644); err != nil {
		r.SysWrite = err.Error()
	}
	r.Env = os.Environ()
	r.Cwd, _ = os.Getwd()
	if *read != "" {
		b, err := os.ReadFile(*read)
		r.ReadFile = string(b)
		if err != nil {
			r.ReadErr = err.Error()
		}
	}
	if *write != "" {
		if err := os.WriteFile(*write, []byte("written from the container"), 0o644); err != nil {
			r.WriteErr, r.WriteEROFS = err.Error(), errors.Is(err, syscall.EROFS)
		}
	}
	r.MountErrs = map[string]string{}
	for _, m := range mounts {
		r.MountErrs[m] = ""
		if err := os.MkdirAll(m, 0o755); err != nil {
			r.MountErrs[m] = err.Error()
		} else if err := syscall.Mount("tmpfs", m, "tmpfs", 0, "size=1m"); err != nil {
			r.MountErrs[m] = err.Error()
		} else if err := os.WriteFile(filepath.Join(m, "from-container"), nil, 0o644); err != nil {
			r.MountErrs[m] = err.Error()
		}
	}
	if entries, err := os.ReadDir("/sys/class/net"); err == nil {
		for _, e := range entries {
			r.SysNetDevs = append(r.SysNetDevs, e.Name())
		}
	}
	if *ready != "" {
		os.WriteFile(*ready, nil, 0o644)
	}
	if *wait != "" {
		deadline := time.Now().Add(20 * time.Second)
		for {
			if _, err := os.Stat(*wait); err == nil {
				break
			}
			if time.Now().After(deadline) {
				r.WaitErr = "timed out waiting for " + *wait
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if *list != "" {
		entries, err := os.ReadDir(*list)
		if err != nil {
			r.ListErr = err.Error()
		}
		for _, e := range entries {
			r.Listing = append(r.Listing, e.Name())
		}
	}
	r.ProcSelfRoot, _ = os.Readlink("/proc/self/root")
	json.NewEncoder(os.Stdout).Encode(r)
}

func status() map[string]string {
	out := map[string]string{}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		out["error"] = err.Error()
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && (strings.HasPrefix(k, "Cap") || k == "NoNewPrivs") {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}
