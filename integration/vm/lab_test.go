package vm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// labModules are what a lab's meridiand and nodes use beyond VMModules:
// nftables expressions for Services, policy and NAT (the VM has no
// modprobe database, so nothing loads on demand).
var labModules = []string{
	"nf_conntrack", "nf_nat", "nft_chain_nat", "nft_ct", "nft_nat", "nft_masq", "nft_redir",
	"nft_reject_inet", "nft_fib_inet", "nft_fib_ipv4", "nft_limit", "nft_numgen", "nft_hash",
}

// TestLabInVM is opt-in: MERIDIAN_VM_LAB=<pattern> runs the e2e tests
// matching that -test.run pattern in the VM, with their whole lab inside it
// (control plane, nodes, meridiand), the binaries taken from
// MERIDIAN_BIN_DIR (else bin/) and Debian's etcd. It passes when the e2e
// binary exits 0. Under emulation kube-apiserver needs one to two minutes
// to become ready, so it is not part of `make test`: see docs/lab.md.
func TestLabInVM(t *testing.T) {
	pattern := os.Getenv("MERIDIAN_VM_LAB")
	if pattern == "" {
		t.Skip("opt-in: MERIDIAN_VM_LAB=<e2e -test.run pattern> runs e2e tests with their lab in the VM")
	}
	qemu, assets, root := setupVM(t)
	binDir := os.Getenv("MERIDIAN_BIN_DIR")
	if binDir == "" {
		binDir = filepath.Join(root, "bin")
	}
	const guestBin = "/opt/meridian/bin"
	var files []File
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "meridiand", "meridian-cni", "meridian-lab"} {
		p := filepath.Join(binDir, b)
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("the lab needs %s (make build): %v", p, err)
		}
		files = append(files, File{Src: p, Dst: guestBin + "/" + b})
	}
	for _, b := range []string{"kubectl", "coredns", "meridianctl", "kube-proxy"} {
		if p := filepath.Join(binDir, b); isRegular(p) {
			files = append(files, File{Src: p, Dst: guestBin + "/" + b})
		}
	}
	etcd := filepath.Join(binDir, "etcd")
	if !isRegular(etcd) {
		var err error
		if etcd, err = exec.LookPath("etcd"); err != nil {
			t.Fatal("no etcd in the bin dir or on PATH (make deps installs etcd-server)")
		}
	}
	files = append(files, File{Src: etcd, Dst: "/usr/bin/etcd"})

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	work := t.TempDir()
	bin := filepath.Join(work, "e2e.test")
	build := exec.CommandContext(ctx, "go", "test", "-c", "-vet=off", "-o", bin, "./integration/e2e")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the e2e test binary: %v\n%s", err, out)
	}
	mods := slices.Concat(VMModules, labModules)
	start := time.Now()
	results, err := Run(ctx, Config{
		Assets:   assets,
		Modules:  mods,
		Files:    files,
		MemoryMB: 4096,
		Tests:    []Test{{Name: "e2e", Binary: bin, Args: []string{"-test.count=1", "-test.timeout=30m", "-test.run", pattern}}},
		Env:      []string{"MERIDIAN_BIN_DIR=" + guestBin, "MERIDIAN_REQUIRE_LAB=1", "MERIDIAN_REQUIRE_IPIP=1"},
		QEMU:     qemu,
		WorkDir:  work,
		Console:  func(l string) { t.Logf("%s vm| %s", time.Since(start).Round(time.Second), l) },
	})
	if err != nil {
		t.Errorf("vm: %v", err)
	}
	for _, r := range results {
		if !r.OK() {
			t.Errorf("%s: exit status %d in the VM (%d passed, %d failed, %d skipped)", r.Name, r.Exit, r.Passed, r.Failed, r.Skipped)
		}
	}
}

func isRegular(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
