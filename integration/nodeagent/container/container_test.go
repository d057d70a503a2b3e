package container

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"golang.org/x/sys/unix"
)

// The test binary is its own container-init, as meridian-lab is in the lab.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "container-init" {
		err := Init()
		fmt.Fprintf(os.Stderr, "container-init: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	if probeDir != "" {
		os.RemoveAll(probeDir)
	}
	os.Exit(code)
}

var (
	probeOnce sync.Once
	probeDir  string
	probePath string
	probeErr  error
)

// probe builds testdata/probe once, static, for the test rootfs.
func probe(t *testing.T) string {
	t.Helper()
	probeOnce.Do(func() {
		probeDir, probeErr = os.MkdirTemp("", "container-probe-")
		if probeErr != nil {
			return
		}
		probePath = filepath.Join(probeDir, "probe")
		cmd := exec.Command("go", "build", "-o", probePath, "./testdata/probe")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			probeErr = fmt.Errorf("build probe: %v\n%s", err, out)
		}
	})
	if probeErr != nil {
		t.Fatal(probeErr)
	}
	return probePath
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mount namespaces, pivot_root and network namespaces")
	}
}

func initArgv(t *testing.T) []string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{self, "container-init"}
}

// newRootfs is an image's rootfs holding only /bin/probe.
func newRootfs(t *testing.T, base string) string {
	t.Helper()
	rootfs := filepath.Join(base, "rootfs")
	mustMkdir(t, filepath.Join(rootfs, "bin"))
	data, err := os.ReadFile(probe(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin/probe"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	return rootfs
}

func newNetNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		testutils.UnmountNS(n)
	})
	return n
}

// sharedDir is a directory bind-mounted on itself and made shared, as the
// kubelet's (and the lab's) directories holding mounts for pods are:
// propagation needs a shared mount on the host side.
func sharedDir(t *testing.T, dir string) {
	t.Helper()
	mustMkdir(t, dir)
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountUnder(t, dir) })
	// Private first: a bind of a directory on a shared mount joins that
	// mount's peer group, and this one must be a peer group of its own.
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
}

// hostMounts lists the host's mount points at or under dir, in order.
func hostMounts(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := UnescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// unmountUnder detaches every host mount at or under dir, deepest first.
func unmountUnder(t *testing.T, dir string) {
	mounts := hostMounts(t, dir)
	slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", m, err)
		}
	}
}

type report struct {
	Status      map[string]string
	RootWrite   string
	RootEROFS   bool
	SysctlWrite string
	SysctlEROFS bool
	SysWrite    string
	Env         []string
	Cwd         string
	ReadFile    string
	ReadErr     string
	WriteErr    string
	WriteEROFS  bool
	MountErrs   map[string]string
	Listing     []string
	ListErr     string
	SysNetDevs  []string
	WaitErr     string
}

// run is a started probe container.
type run struct {
	proc *os.Process
	out  string
	err  string
}

func start(t *testing.T, base string, spec Spec) *run {
	t.Helper()
	r := &run{out: filepath.Join(base, "stdout"), err: filepath.Join(base, "stderr")}
	stdout, err := os.Create(r.out)
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	stderr, err := os.Create(r.err)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	r.proc, err = Start(spec, initArgv(t), stdout, stderr)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { r.proc.Kill() })
	return r
}

// wait reaps the probe and decodes its report.
func (r *run) wait(t *testing.T) report {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		ps, err := r.proc.Wait()
		if err == nil && !ps.Success() {
			err = fmt.Errorf("probe %s", ps)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			stderr, _ := os.ReadFile(r.err)
			t.Fatalf("%v; stderr: %s", err, stderr)
		}
	case <-time.After(60 * time.Second):
		r.proc.Kill()
		t.Fatal("probe did not exit")
	}
	data, err := os.ReadFile(r.out)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("decode report %q: %v", data, err)
	}
	t.Logf("report: %s", data)
	if rep.WaitErr != "" {
		t.Error(rep.WaitErr)
	}
	return rep
}

func waitFile(t *testing.T, p string, r *run) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(p); err == nil {
			return
		}
		if time.Now().After(deadline) {
			stderr, _ := os.ReadFile(r.err)
			t.Fatalf("%s did not appear; container stderr: %s", p, stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func capMask(names ...string) string {
	var m uint64
	for _, n := range names {
		m |= 1 << capabilityNumbers[n]
	}
	return fmt.Sprintf("%016x", m)
}

func hostStatus(t *testing.T, key string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/self/status", key)
	return ""
}

// The chart's meridiand container: capabilities dropped to NET_ADMIN and
// NET_BIND_SERVICE, read-only root, no privilege escalation, a read-only
// config mount and /run/netns-like HostToContainer mount.
func TestContainerRestricted(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	rootfs := newRootfs(t, base)
	netns := newNetNS(t)

	config := filepath.Join(base, "config")
	mustMkdir(t, config)
	if err := os.WriteFile(filepath.Join(config, "hello"), []byte("hello from the host"), 0o644); err != nil {
		t.Fatal(err)
	}
	h2c := filepath.Join(base, "h2c")
	sharedDir(t, h2c)
	trigger := filepath.Join(base, "trigger")
	mustMkdir(t, trigger)
	before := hostMounts(t, base)

	caps, err := EffectiveCapabilities(false, []string{"NET_ADMIN", "NET_BIND_SERVICE"}, []string{"ALL"})
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, base, Spec{
		Rootfs:         rootfs,
		ReadOnlyRootfs: true,
		Mounts: []Mount{
			{Source: config, Target: "/etc/meridian", ReadOnly: true},
			{Source: h2c, Target: "/run/netns", Propagation: PropagationHostToContainer},
			{Source: trigger, Target: "/trigger"},
		},
		Args: []string{"probe", "-read", "/etc/meridian/hello", "-write", "/etc/meridian/new",
			"-mount", "/run/netns/inner", "-ready", "/trigger/ready", "-wait", "/trigger/go", "-list", "/run/netns/sub"},
		Env:             []string{"PATH=/usr/bin:/bin", "NODE_NAME=node-1"},
		Cwd:             "/etc/meridian",
		Capabilities:    caps,
		NoNewPrivileges: true,
		NetNS:           netns.Path(),
	})
	if st, err := StartTime(r.proc.Pid); err != nil || st == 0 {
		t.Errorf("StartTime(%d) = %d, %v", r.proc.Pid, st, err)
	}
	waitFile(t, filepath.Join(trigger, "ready"), r)
	// The container is set up and running: none of its mounts show here.
	if got := hostMounts(t, base); !slices.Equal(got, before) {
		t.Errorf("host mounts under %s while the container runs: %q, want %q", base, got, before)
	}
	// A mount made on the host after the container started, as a new
	// /run/netns entry is, must reach it.
	sub := filepath.Join(h2c, "sub")
	mustMkdir(t, sub)
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "marker"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(trigger, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rep := r.wait(t)

	want := capMask("NET_ADMIN", "NET_BIND_SERVICE")
	for k, v := range map[string]string{"CapBnd": want, "CapEff": want, "CapPrm": want, "CapInh": capMask(), "CapAmb": capMask(), "NoNewPrivs": "1"} {
		if rep.Status[k] != v {
			t.Errorf("%s = %s, want %s", k, rep.Status[k], v)
		}
	}
	if !rep.RootEROFS {
		t.Errorf("writing / gave %q, want EROFS", rep.RootWrite)
	}
	if !rep.SysctlEROFS {
		t.Errorf("writing /proc/sys/net/ipv4/ip_forward gave %q, want EROFS", rep.SysctlWrite)
	}
	if rep.SysWrite == "" {
		t.Error("writing /sys succeeded in a container that is not privileged")
	}
	if !slices.Equal(rep.Env, []string{"PATH=/usr/bin:/bin", "NODE_NAME=node-1"}) {
		t.Errorf("env %q", rep.Env)
	}
	if rep.Cwd != "/etc/meridian" {
		t.Errorf("cwd %q", rep.Cwd)
	}
	if rep.ReadFile != "hello from the host" {
		t.Errorf("read-only mount file = %q (%s)", rep.ReadFile, rep.ReadErr)
	}
	if !rep.WriteEROFS {
		t.Errorf("writing the read-only mount gave %q, want EROFS", rep.WriteErr)
	}
	if _, err := os.Stat(filepath.Join(config, "new")); err == nil {
		t.Error("the container wrote into a read-only mount's source")
	}
	if e := rep.MountErrs["/run/netns/inner"]; !strings.Contains(e, "operation not permitted") {
		t.Errorf("mount without CAP_SYS_ADMIN gave %q, want EPERM", e)
	}
	if !slices.Contains(rep.Listing, "marker") {
		t.Errorf("HostToContainer: listing of the host's new mount = %q (%s), want marker", rep.Listing, rep.ListErr)
	}
	// sysfs belongs to the container's network namespace: only its lo.
	if !slices.Equal(rep.SysNetDevs, []string{"lo"}) {
		t.Errorf("/sys/class/net = %q, want [lo] of the container's netns", rep.SysNetDevs)
	}

	if err := unix.Unmount(sub, 0); err != nil {
		t.Fatal(err)
	}
	if got := hostMounts(t, base); !slices.Equal(got, before) {
		t.Errorf("host mounts under %s after the container: %q, want %q", base, got, before)
	}
	// Mount points created in the shared rootfs stay (see mountPoint);
	// the image's content is untouched.
	if data, err := os.ReadFile(filepath.Join(rootfs, "bin/probe")); err != nil || len(data) == 0 {
		t.Errorf("rootfs probe: %v", err)
	}
}

// A privileged container with a Bidirectional mount, in a rootfs whose
// parent mount is shared (as the lab's state directory may be): all
// capabilities, writable /proc/sys and /sys, its Bidirectional mounts reach
// the host, its HostToContainer ones and its own filesystem do not.
func TestContainerPrivileged(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	sharedDir(t, base)
	rootfs := newRootfs(t, base)
	netns := newNetNS(t)
	bidi := filepath.Join(base, "bidi")
	sharedDir(t, bidi)
	h2c := filepath.Join(base, "h2c")
	sharedDir(t, h2c)
	trigger := filepath.Join(base, "trigger")
	mustMkdir(t, trigger)
	before := hostMounts(t, base)

	r := start(t, base, Spec{
		Rootfs: rootfs,
		Mounts: []Mount{
			{Source: bidi, Target: "/var/lib/bidi", Propagation: PropagationBidirectional},
			{Source: h2c, Target: "/h2c", Propagation: PropagationHostToContainer},
			{Source: trigger, Target: "/trigger", Propagation: PropagationNone},
		},
		Args:       []string{"/bin/probe", "-mount", "/var/lib/bidi/inner", "-mount", "/h2c/inner", "-mount", "/tmp/inner", "-ready", "/trigger/ready", "-wait", "/trigger/go"},
		Env:        []string{"A=1"},
		Privileged: true,
		NetNS:      netns.Path(),
	})
	waitFile(t, filepath.Join(trigger, "ready"), r)
	want := append(slices.Clone(before), filepath.Join(bidi, "inner"))
	if got := hostMounts(t, base); !slices.Equal(got, want) {
		t.Errorf("host mounts under %s while the container runs: %q, want %q (only the Bidirectional mount's inner tmpfs added)", base, got, want)
	}
	if _, err := os.Stat(filepath.Join(bidi, "inner", "from-container")); err != nil {
		t.Errorf("the container's mount under a Bidirectional mount is not on the host: %v", err)
	}
	if err := os.WriteFile(filepath.Join(trigger, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rep := r.wait(t)

	for _, k := range []string{"CapBnd", "CapEff", "CapPrm"} {
		if got, want := rep.Status[k], hostStatus(t, "CapBnd"); got != want {
			t.Errorf("privileged %s = %s, want the host's bounding set %s", k, got, want)
		}
	}
	if rep.Status["NoNewPrivs"] != "0" {
		t.Errorf("NoNewPrivs = %s", rep.Status["NoNewPrivs"])
	}
	if rep.RootWrite != "" || rep.SysctlWrite != "" || rep.SysWrite != "" {
		t.Errorf("privileged writes: / %q, /proc/sys %q, /sys %q; want all to succeed", rep.RootWrite, rep.SysctlWrite, rep.SysWrite)
	}
	for m, e := range rep.MountErrs {
		if e != "" {
			t.Errorf("mount %s inside: %s", m, e)
		}
	}
	if rep.Cwd != "/" || !slices.Equal(rep.Env, []string{"A=1"}) {
		t.Errorf("cwd %q env %q", rep.Cwd, rep.Env)
	}

	if err := unix.Unmount(filepath.Join(bidi, "inner"), 0); err != nil {
		t.Fatal(err)
	}
	if got := hostMounts(t, base); !slices.Equal(got, before) {
		t.Errorf("host mounts under %s after the container: %q, want %q", base, got, before)
	}
	os.Remove(filepath.Join(rootfs, "probe-root-write"))
}

// Failures before exec come back from Start with the init's words.
func TestStartReportsInitErrors(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	rootfs := newRootfs(t, base)
	netns := newNetNS(t)
	before := hostMounts(t, base)
	for name, tc := range map[string]struct {
		spec Spec
		want string
	}{
		"missing command":      {Spec{Args: []string{"/bin/missing"}}, "/bin/missing"},
		"command not in PATH":  {Spec{Args: []string{"nothere"}, Env: []string{"PATH=/bin:/sbin"}}, "nothere: not found in PATH /bin:/sbin"},
		"missing mount source": {Spec{Args: []string{"/bin/probe"}, Mounts: []Mount{{Source: filepath.Join(base, "absent"), Target: "/x"}}}, filepath.Join(base, "absent")},
		"missing cwd":          {Spec{Args: []string{"/bin/probe"}, Cwd: "/nowhere", ReadOnlyRootfs: true}, "/nowhere"},
		"missing netns":        {Spec{Args: []string{"/bin/probe"}, NetNS: filepath.Join(base, "nons")}, filepath.Join(base, "nons")},
	} {
		t.Run(name, func(t *testing.T) {
			spec := tc.spec
			spec.Rootfs = rootfs
			if spec.NetNS == "" {
				spec.NetNS = netns.Path()
			}
			proc, err := Start(spec, initArgv(t), nil, nil)
			if err == nil {
				proc.Kill()
				proc.Wait()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start: %v; want it to say %q", err, tc.want)
			}
			t.Logf("Start: %v", err)
		})
	}
	if _, err := Start(Spec{Rootfs: rootfs, Args: []string{"/bin/probe"}, Mounts: []Mount{{Source: "/tmp", Target: "relative"}}}, initArgv(t), nil, nil); err == nil || !strings.Contains(err.Error(), "not absolute") {
		t.Errorf("relative target: %v", err)
	}
	if got := hostMounts(t, base); !slices.Equal(got, before) {
		t.Errorf("host mounts under %s: %q, want %q", base, got, before)
	}
}
