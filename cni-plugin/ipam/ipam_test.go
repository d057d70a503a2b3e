package ipam

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Child modes of the test binary, re-executed to act as separate plugin
// processes.
const childEnv = "MERIDIAN_IPAM_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	os.Exit(m.Run())
}

func runChild(mode string) int {
	stateDir := os.Getenv("STATE_DIR")
	s := NewStore(stateDir)
	switch mode {
	case "allocate":
		pool := netip.MustParsePrefix(os.Getenv("POOL"))
		addr, _, err := s.Allocate(pool, Attachment{ContainerID: os.Getenv("CONTAINER_ID"), IfName: "eth0"})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(addr)
		// Exit without releasing: from the store's view this is a plugin
		// that crashed after reserving, before plumbing finished.
		return 0
	case "hold-lock":
		if _, err := s.lock(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("locked")
		time.Sleep(time.Hour)
		return 0
	}
	return 2
}

func child(t *testing.T, mode string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{childEnv + "=" + mode}, env...)...)
	cmd.Stderr = os.Stderr
	return cmd
}

func att(id string) Attachment { return Attachment{ContainerID: id, IfName: "eth0"} }

func mustAlloc(t *testing.T, s *Store, pool string, a Attachment) netip.Addr {
	t.Helper()
	addr, _, err := s.Allocate(netip.MustParsePrefix(pool), a)
	if err != nil {
		t.Fatalf("Allocate(%s, %v): %v", pool, a, err)
	}
	return addr
}

func ipFiles(t *testing.T, s *Store) []string {
	t.Helper()
	entries, err := os.ReadDir(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestNext(t *testing.T) {
	a := netip.MustParseAddr
	set := func(ss ...string) map[netip.Addr]bool {
		m := map[netip.Addr]bool{}
		for _, s := range ss {
			m[a(s)] = true
		}
		return m
	}
	tests := []struct {
		name   string
		pool   string
		used   map[netip.Addr]bool
		cursor string
		want   string // "" = exhausted
	}{
		{"empty pool skips network", "10.244.1.0/24", nil, "", "10.244.1.1"},
		{"after cursor", "10.244.1.0/24", nil, "10.244.1.7", "10.244.1.8"},
		{"cursor at top wraps and skips network", "10.244.1.0/24", nil, "10.244.1.254", "10.244.1.1"},
		{"broadcast never handed out", "10.244.1.0/24", set("10.244.1.1"), "10.244.1.253", "10.244.1.254"},
		{"wrap past used", "10.244.1.0/29", set("10.244.1.6", "10.244.1.1"), "10.244.1.5", "10.244.1.2"},
		{"cursor outside pool", "10.244.1.0/24", nil, "10.0.0.9", "10.244.1.1"},
		{"unmasked pool", "10.244.1.77/24", nil, "", "10.244.1.1"},
		{"/30 has two", "10.244.1.0/30", set("10.244.1.1"), "", "10.244.1.2"},
		{"/30 exhausted", "10.244.1.0/30", set("10.244.1.1", "10.244.1.2"), "", ""},
		{"used outside pool ignored", "10.244.2.0/30", set("10.244.1.1", "10.244.1.2"), "10.244.1.2", "10.244.2.1"},
		{"/31 uses both", "10.244.1.0/31", set("10.244.1.0"), "", "10.244.1.1"},
		{"/32 single", "10.244.1.5/32", nil, "10.244.1.5", "10.244.1.5"},
		{"ipv6 refused", "fd00::/64", nil, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cur netip.Addr
			if tc.cursor != "" {
				cur = a(tc.cursor)
			}
			got, ok := Next(netip.MustParsePrefix(tc.pool), tc.used, cur)
			if tc.want == "" {
				if ok {
					t.Fatalf("got %s, want exhausted", got)
				}
				return
			}
			if !ok || got != a(tc.want) {
				t.Fatalf("got %s %v, want %s", got, ok, tc.want)
			}
		})
	}
	if n := Usable(netip.MustParsePrefix("10.244.1.0/24")); n != 254 {
		t.Errorf("Usable(/24) = %d", n)
	}
}

func TestNodeState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if _, err := PodCIDR(dir); !errors.Is(err, ErrNoPodCIDR) {
		t.Fatalf("missing file: %v, want ErrNoPodCIDR", err)
	}
	in := NodeState{NodeName: "node-1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:1::/64"), netip.MustParsePrefix("10.244.1.0/24")}}
	if err := in.Write(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, NodeStateFile))
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"nodeName":"node-1","podCIDRs":["fd00:1::/64","10.244.1.0/24"]}`; strings.TrimSpace(string(b)) != want {
		t.Errorf("file %s, want %s", b, want)
	}
	out, err := ReadNodeState(dir)
	if err != nil || out.NodeName != in.NodeName || !slices.Equal(out.PodCIDRs, in.PodCIDRs) {
		t.Fatalf("round trip: %+v %v", out, err)
	}
	p, err := PodCIDR(dir)
	if err != nil || p != netip.MustParsePrefix("10.244.1.0/24") {
		t.Fatalf("PodCIDR = %s, %v", p, err)
	}
	// Overwrite leaves no temporary files behind.
	if err := (NodeState{NodeName: "node-1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:1::/64")}}).Write(dir); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %d entries, want only node.json", len(entries))
	}
	if _, err := PodCIDR(dir); !errors.Is(err, ErrNoPodCIDR) || !strings.Contains(err.Error(), "no pod CIDR") {
		t.Fatalf("IPv6-only: %v, want ErrNoPodCIDR", err)
	}
	if err := os.WriteFile(filepath.Join(dir, NodeStateFile), []byte(`{"podCIDRs":["bogus"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := PodCIDR(dir); err == nil || errors.Is(err, ErrNoPodCIDR) {
		t.Fatalf("corrupt file: %v, want a decode error", err)
	}
}

func TestAllocateReleaseCursor(t *testing.T) {
	s := NewStore(t.TempDir())
	const pool = "10.244.1.0/24"
	a1 := mustAlloc(t, s, pool, att("c1"))
	a2 := mustAlloc(t, s, pool, att("c2"))
	a3 := mustAlloc(t, s, pool, att("c3"))
	if a1.String() != "10.244.1.1" || a2.String() != "10.244.1.2" || a3.String() != "10.244.1.3" {
		t.Fatalf("got %s %s %s", a1, a2, a3)
	}
	freed, err := s.Release(att("c2"))
	if err != nil || len(freed) != 1 || freed[0] != a2 {
		t.Fatalf("Release = %v, %v", freed, err)
	}
	// The freed address is not reused at once.
	if a4 := mustAlloc(t, s, pool, att("c4")); a4.String() != "10.244.1.4" {
		t.Fatalf("after release got %s, want 10.244.1.4", a4)
	}
	// Releasing again, or something never allocated, is fine.
	if freed, err := s.Release(att("c2")); err != nil || len(freed) != 0 {
		t.Fatalf("second Release = %v, %v", freed, err)
	}
	if _, err := s.Release(att("never")); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := s.Lookup(att("c3")); err != nil || !ok || got != a3 {
		t.Fatalf("Lookup = %s %v %v", got, ok, err)
	}
	if _, ok, _ := s.Lookup(att("c2")); ok {
		t.Fatal("released attachment still found")
	}
	if got := ipFiles(t, s); !slices.Equal(got, []string{"10.244.1.1", "10.244.1.3", "10.244.1.4"}) {
		t.Fatalf("files %v", got)
	}
}

func TestAllocateRepeatedReturnsSame(t *testing.T) {
	s := NewStore(t.TempDir())
	pool := netip.MustParsePrefix("10.244.1.0/24")
	a, fresh, err := s.Allocate(pool, att("c1"))
	if err != nil || !fresh {
		t.Fatalf("first: %v %v", fresh, err)
	}
	b, fresh, err := s.Allocate(pool, att("c1"))
	if err != nil || fresh || b != a {
		t.Fatalf("repeat: %s fresh=%v %v, want %s fresh=false", b, fresh, err, a)
	}
	// Another interface of the same container is a different attachment.
	c, _, err := s.Allocate(pool, Attachment{ContainerID: "c1", IfName: "net1"})
	if err != nil || c == a {
		t.Fatalf("second interface got %s (%v)", c, err)
	}
	// Release by container ID alone frees both.
	freed, err := s.Release(Attachment{ContainerID: "c1"})
	if err != nil || len(freed) != 2 {
		t.Fatalf("Release(container) = %v, %v", freed, err)
	}
	if files := ipFiles(t, s); len(files) != 0 {
		t.Fatalf("files left: %v", files)
	}
}

func TestExhausted(t *testing.T) {
	s := NewStore(t.TempDir())
	const pool = "10.244.1.0/30"
	mustAlloc(t, s, pool, att("c1"))
	mustAlloc(t, s, pool, att("c2"))
	_, _, err := s.Allocate(netip.MustParsePrefix(pool), att("c3"))
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("got %v, want ErrExhausted", err)
	}
	if want := "no free address in 10.244.1.0/30"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
	if files := ipFiles(t, s); len(files) != 2 {
		t.Errorf("files %v after failed allocation", files)
	}
}

func TestPodCIDRChange(t *testing.T) {
	s := NewStore(t.TempDir())
	mustAlloc(t, s, "10.244.1.0/30", att("old1"))
	mustAlloc(t, s, "10.244.1.0/30", att("old2"))
	// The node was re-created with another pod CIDR: the old allocations do
	// not count against the new pool.
	const newPool = "10.244.7.0/30"
	if a := mustAlloc(t, s, newPool, att("n1")); a.String() != "10.244.7.1" {
		t.Fatalf("got %s", a)
	}
	// An attachment holding an address of the old pool gets a new one and
	// its stale file is dropped.
	if a := mustAlloc(t, s, newPool, att("old1")); a.String() != "10.244.7.2" {
		t.Fatalf("got %s", a)
	}
	if got := ipFiles(t, s); !slices.Equal(got, []string{"10.244.1.2", "10.244.7.1", "10.244.7.2"}) {
		t.Fatalf("files %v", got)
	}
	if _, _, err := s.Allocate(netip.MustParsePrefix(newPool), att("n3")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("got %v, want exhausted", err)
	}
}

func TestUnreadableReservationStaysUsed(t *testing.T) {
	s := NewStore(t.TempDir())
	mustAlloc(t, s, "10.244.1.0/30", att("c1"))
	if err := os.WriteFile(filepath.Join(s.Dir(), "10.244.1.2"), []byte("{garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Allocate(netip.MustParsePrefix("10.244.1.0/30"), att("c2")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("got %v, want the unreadable reservation to count as used", err)
	}
	freed, err := s.GC([]Attachment{att("c1")})
	if err != nil || len(freed) != 1 || freed[0].Addr.String() != "10.244.1.2" {
		t.Fatalf("GC = %v, %v", freed, err)
	}
	if got := ipFiles(t, s); !slices.Equal(got, []string{"10.244.1.1"}) {
		t.Fatalf("files after GC %v", got)
	}
}

func TestConcurrentGoroutines(t *testing.T) {
	s := NewStore(t.TempDir())
	pool := netip.MustParsePrefix("10.244.1.0/24")
	const n = 50
	addrs := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each goroutine uses its own Store, as separate processes would.
			addrs[i], _, errs[i] = NewStore(filepath.Dir(s.Dir())).Allocate(pool, att(fmt.Sprintf("c%d", i)))
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, a := range addrs {
		if errs[i] != nil {
			t.Fatalf("allocation %d: %v", i, errs[i])
		}
		if j, dup := seen[a]; dup {
			t.Fatalf("%s handed to %d and %d", a, j, i)
		}
		seen[a] = i
	}
	if files := ipFiles(t, s); len(files) != n {
		t.Fatalf("%d files, want %d", len(files), n)
	}
}

func TestConcurrentProcesses(t *testing.T) {
	stateDir := t.TempDir()
	const n = 50
	cmds := make([]*exec.Cmd, n)
	outs := make([]*strings.Builder, n)
	for i := range n {
		outs[i] = &strings.Builder{}
		cmds[i] = child(t, "allocate", "STATE_DIR="+stateDir, "POOL=10.244.1.0/24", fmt.Sprintf("CONTAINER_ID=proc%d", i))
		cmds[i].Stdout = outs[i]
	}
	// Start all before waiting on any, so they really contend for the lock.
	for i, c := range cmds {
		if err := c.Start(); err != nil {
			t.Fatalf("start child %d: %v", i, err)
		}
	}
	seen := map[string]int{}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
		a := strings.TrimSpace(outs[i].String())
		if _, err := netip.ParseAddr(a); err != nil {
			t.Fatalf("child %d printed %q", i, a)
		}
		if j, dup := seen[a]; dup {
			t.Fatalf("%s handed to processes %d and %d", a, j, i)
		}
		seen[a] = i
	}
	s := NewStore(stateDir)
	if files := ipFiles(t, s); len(files) != n {
		t.Fatalf("%d files, want %d", len(files), n)
	}
	// Each reservation is traceable to its process's container ID.
	allocs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, al := range allocs {
		if seen[al.Addr.String()] != mustIndex(t, al.ContainerID) {
			t.Errorf("%s is recorded for %s, but was handed to proc%d", al.Addr, al.ContainerID, seen[al.Addr.String()])
		}
	}
}

func mustIndex(t *testing.T, id string) int {
	t.Helper()
	var i int
	if _, err := fmt.Sscanf(id, "proc%d", &i); err != nil {
		t.Fatalf("container ID %q", id)
	}
	return i
}

// TestCrashRecovery covers a plugin dying in the middle of an ADD: after
// reserving (the retried ADD gets the same address back), while holding the
// lock (the kernel releases it), and while writing (a stray temporary file is
// swept and blocks nothing).
func TestCrashRecovery(t *testing.T) {
	stateDir := t.TempDir()
	s := NewStore(stateDir)
	pool := netip.MustParsePrefix("10.244.1.0/30")

	out, err := child(t, "allocate", "STATE_DIR="+stateDir, "POOL="+pool.String(), "CONTAINER_ID=crashed").Output()
	if err != nil {
		t.Fatal(err)
	}
	first := netip.MustParseAddr(strings.TrimSpace(string(out)))
	again, fresh, err := s.Allocate(pool, att("crashed"))
	if err != nil || again != first || fresh {
		t.Fatalf("retried ADD got %s fresh=%v %v, want %s", again, fresh, err, first)
	}

	holder := child(t, "hold-lock", "STATE_DIR="+stateDir)
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("holder said %q, %v", line, err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := s.Allocate(pool, att("waiter"))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Allocate finished (%v) while another process held the lock", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := holder.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Allocate after the holder died: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Allocate still blocked after the lock holder died")
	}

	if err := os.WriteFile(filepath.Join(s.Dir(), tmpPrefix+"123"), []byte(`{"containerID":"half`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Release(att("waiter")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Allocate(pool, att("after")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), tmpPrefix+"123")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stray temporary file not swept: %v", err)
	}
}

func TestNodeStateMTU(t *testing.T) {
	dir := t.TempDir()
	in := NodeState{NodeName: "node-1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, MTU: 1450}
	if err := in.Write(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, NodeStateFile))
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"nodeName":"node-1","podCIDRs":["10.244.1.0/24"],"mtu":1450}`; strings.TrimSpace(string(b)) != want {
		t.Errorf("file %s, want %s", b, want)
	}
	out, err := ReadNodeState(dir)
	if err != nil || out.MTU != 1450 {
		t.Fatalf("round trip: %+v %v", out, err)
	}
}
