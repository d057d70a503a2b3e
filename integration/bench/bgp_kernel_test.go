package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/meridian-net/meridian/integration/namedns"
)

// TestInjectorToBIRD runs the benchmark's machinery without a lab: the
// GoBGP injector in one namespace, BIRD with BIRDConfig in another, joined
// by a veth pair, and the FIB watch counting what BIRD's kernel protocol
// installs. It checks that every prefix arrives and is counted, not how
// fast.
func TestInjectorToBIRD(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces)")
	}
	birdBin, err := exec.LookPath("bird")
	if err != nil {
		t.Skip("no bird (Debian's bird2)")
	}
	const n = 3000
	suffix := fmt.Sprintf("%d", os.Getpid()%100000)
	injNS, birdNS := "mbt-inj-"+suffix, "mbt-bird-"+suffix
	injAddr, birdAddr := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	for _, name := range []string{injNS, birdNS} {
		if err := namedns.Create(name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = namedns.Delete(name) })
	}
	link := func(name, peerNS string) {
		f, err := netns.GetFromName(name)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		h, err := netlink.NewHandleAt(f)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if peerNS != "" {
			pf, err := netns.GetFromName(peerNS)
			if err != nil {
				t.Fatal(err)
			}
			defer pf.Close()
			if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(pf))}); err != nil {
				t.Fatal(err)
			}
		}
	}
	link(injNS, birdNS)
	for name, a := range map[string]netip.Addr{injNS: injAddr, birdNS: birdAddr} {
		h, err := handleIn(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range []string{"lo", "eth0"} {
			ln, err := h.LinkByName(l)
			if err != nil {
				t.Fatal(err)
			}
			if l == "eth0" {
				if err := h.AddrAdd(ln, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
					t.Fatal(err)
				}
			}
			if err := h.LinkSetUp(ln); err != nil {
				t.Fatal(err)
			}
		}
		h.Close()
	}

	ctx := context.Background()
	inj, err := startInjector(ctx, injNS, injAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inj.stop)
	if err := inj.load(ctx, n/2); err != nil {
		t.Fatal(err)
	}
	// Sizes go up: the second load adds the rest.
	if err := inj.load(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := inj.accept(ctx, birdAddr, birdASN); err != nil {
		t.Fatal(err)
	}
	w, err := watchFIB(birdNS, BGPBenchRange, n)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	work := t.TempDir()
	argv, err := writeBIRDConfig(work, "bird", BIRDConfig(birdAddr, injAddr, injectorASN, BGPBenchRange))
	if err != nil {
		t.Fatal(err)
	}
	argv[0] = birdBin
	p, err := startProc("bird", birdNS, argv, nil, filepath.Join(work, "bird.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop(5 * time.Second)
	est, err := inj.waitEstablished(ctx, birdAddr, time.Minute, p.alive)
	if err != nil {
		t.Fatalf("%v\n%s", err, p.logTail())
	}
	done, err := w.wait(ctx, 2*time.Minute, p.alive)
	if err != nil {
		t.Fatalf("%v\n%s", err, p.logTail())
	}
	got, err := countRoutes(birdNS, BGPBenchRange)
	if err != nil {
		t.Fatal(err)
	}
	if got != n {
		t.Fatalf("the watch saw %d prefixes, the table holds %d", n, got)
	}
	own, _ := p.peaks()
	if own == 0 {
		t.Error("no VmHWM read for bird")
	}
	t.Logf("%d prefixes installed by BIRD %s after Established, peak RSS %.1f MiB", n, done.Sub(est), mib(own))
}
