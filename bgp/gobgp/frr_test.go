package gobgp

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-net/meridian/bgp"
)

const (
	frrBgpd = "/usr/lib/frr/bgpd"
	frrASN  = 65010
)

// frr is a standalone FRR bgpd: no zebra, no kernel routes, its vty socket
// in a private directory so vtysh talks to this instance only.
type frr struct {
	dir string
}

func startFRR(t *testing.T, addr, peer netip.Addr, port int32, network netip.Prefix) *frr {
	t.Helper()
	if _, err := os.Stat(frrBgpd); err != nil {
		t.Skipf("FRR bgpd not installed at %s (Debian package frr): %v", frrBgpd, err)
	}
	if _, err := exec.LookPath("vtysh"); err != nil {
		t.Skipf("vtysh not found: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("FRR bgpd needs root")
	}
	dir := t.TempDir()
	conf := fmt.Sprintf(`frr defaults datacenter
hostname meridian-test-frr
log stdout informational
router bgp %d
 bgp router-id %s
 no bgp ebgp-requires-policy
 no bgp network import-check
 bgp graceful-restart
 bgp graceful-restart restart-time 60
 neighbor %s remote-as %d
 neighbor %s port %d
 neighbor %s update-source %s
 neighbor %s disable-connected-check
 address-family ipv4 unicast
  network %s
 exit-address-family
`, frrASN, addr, peer, bgp.DefaultASN, peer, port, peer, addr, peer, network)
	confPath := filepath.Join(dir, "bgpd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// -Z: no zebra; -n: no kernel routes; -S: stay root, no frr user;
	// -P 0: no vty TCP port, only the unix socket in dir.
	cmd := exec.Command(frrBgpd,
		"-f", confPath,
		"-i", filepath.Join(dir, "bgpd.pid"),
		"-z", filepath.Join(dir, "zserv.api"),
		"--vty_socket", dir,
		"-P", "0",
		"-p", fmt.Sprint(port),
		"-l", addr.String(),
		"-n", "-Z", "-S",
		"--log", "stdout",
	)
	logs := &syncBuffer{}
	cmd.Stdout = logs
	cmd.Stderr = logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start bgpd: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("bgpd log:\n%s", logs.String())
		}
	})
	f := &frr{dir: dir}
	eventually(t, 10*time.Second, "bgpd vty socket", func() (bool, string) {
		select {
		case <-exited:
			t.Fatalf("bgpd exited:\n%s", logs.String())
		default:
		}
		_, err := f.vtysh("show bgp summary json")
		return err == nil, fmt.Sprint(err)
	})
	return f
}

func (f *frr) vtysh(command string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "vtysh", "--vty_socket", f.dir, "-c", command).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("vtysh -c %q: %w: %s", command, err, out)
	}
	return out, nil
}

type frrRoute struct {
	Valid    bool   `json:"valid"`
	Best     bool   `json:"bestpath"`
	Stale    bool   `json:"stale"`
	Path     string `json:"path"`
	Nexthops []struct {
		IP string `json:"ip"`
	} `json:"nexthops"`
}

// routes reads FRR's IPv4 unicast table.
func (f *frr) routes(t *testing.T) map[string][]frrRoute {
	t.Helper()
	out, err := f.vtysh("show bgp ipv4 unicast json")
	if err != nil {
		t.Fatal(err)
	}
	var tbl struct {
		Routes map[string][]frrRoute `json:"routes"`
	}
	if err := json.Unmarshal(out, &tbl); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	return tbl.Routes
}

func TestInteropFRR(t *testing.T) {
	port := freePort(t)
	frrAddr, ourAddr := netip.MustParseAddr("127.10.3.1"), netip.MustParseAddr("127.10.3.2")
	frrNet, ourNet := netip.MustParsePrefix("10.20.0.0/24"), netip.MustParsePrefix("10.244.31.0/24")
	f := startFRR(t, frrAddr, ourAddr, port, frrNet)

	s := startSpeaker(t, "meridian", speakerConfig(ourAddr.String(), bgp.DefaultASN, port, 30*time.Second))
	ctx := context.Background()
	if err := s.SetPeers(ctx, []bgp.Peer{{Name: "frr", Address: frrAddr, ASN: frrASN, Port: uint16(port)}}); err != nil {
		t.Fatal(err)
	}
	// FRR rejects 127/8 next hops as martian (and resets the session with
	// an UPDATE error), so the advertised next hop is a documentation
	// address: it is only an attribute here, nothing forwards to it.
	ourNextHop := netip.MustParseAddr("192.0.2.2")
	if err := s.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: ourNet, NextHop: ourNextHop}}); err != nil {
		t.Fatal(err)
	}
	// FRR announces graceful restart, so it also sends End-of-RIB.
	waitEstablished(t, s, frrAddr, true, 30*time.Second)
	eventually(t, 5*time.Second, "converged", func() (bool, string) { return s.Converged(), "" })

	got := wantPath(t, s, frrNet, frrAddr, frrAddr, 10*time.Second)
	if len(got.ASPath) != 1 || got.ASPath[0] != frrASN {
		t.Errorf("path from FRR: AS path %v, want [%d]", got.ASPath, frrASN)
	}

	eventually(t, 10*time.Second, "FRR learns our prefix", func() (bool, string) {
		rs := f.routes(t)[ourNet.String()]
		if len(rs) != 1 || len(rs[0].Nexthops) == 0 {
			return false, fmt.Sprintf("%+v", rs)
		}
		r := rs[0]
		return r.Valid && r.Best && r.Path == fmt.Sprint(bgp.DefaultASN) && r.Nexthops[0].IP == ourNextHop.String(), fmt.Sprintf("%+v", r)
	})

	if err := s.SetAdvertisements(ctx, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "FRR drops our withdrawn prefix", func() (bool, string) {
		rs := f.routes(t)[ourNet.String()]
		return len(rs) == 0, fmt.Sprintf("%+v", rs)
	})
	if out, err := f.vtysh("show bgp neighbors " + ourAddr.String() + " json"); err == nil && testing.Verbose() {
		t.Logf("FRR's view of the session:\n%s", strings.TrimSpace(string(out)))
	}
}

type frrGRInfo struct {
	RBit        bool `json:"rBit"`
	IPv4Unicast struct {
		FBit bool `json:"fBit"`
	} `json:"ipv4Unicast"`
}

// grInfo reads what FRR decoded from our graceful restart capability.
func (f *frr) grInfo(t *testing.T, neighbor netip.Addr) (state string, gr frrGRInfo) {
	t.Helper()
	out, err := f.vtysh("show bgp neighbors " + neighbor.String() + " json")
	if err != nil {
		t.Fatal(err)
	}
	var n map[string]struct {
		State string    `json:"bgpState"`
		GR    frrGRInfo `json:"gracefulRestartInfo"`
	}
	if err := json.Unmarshal(out, &n); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	return n[neighbor.String()].State, n[neighbor.String()].GR
}

// TestInteropFRRGracefulRestart crashes the speaker process under FRR as
// the helper: FRR must keep our route as stale, and on our return with
// Restarting it must see the R and F bits and keep the route throughout.
// A helper flushes the stale routes of a family whose F bit is clear in
// the new OPEN (RFC 4724 4.2; FRR does it when the session establishes),
// so without Config.Restarting the route would flap on our return. The
// 100ms samples cannot see that flap, which is why the bits are checked.
func TestInteropFRRGracefulRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts a speaker process")
	}
	port := freePort(t)
	frrAddr, ourAddr := netip.MustParseAddr("127.10.4.1"), netip.MustParseAddr("127.10.4.2")
	frrNet, ourNet := netip.MustParsePrefix("10.20.4.0/24"), netip.MustParsePrefix("10.244.41.0/24")
	f := startFRR(t, frrAddr, ourAddr, port, frrNet)

	spec := func(restarting bool) childSpec {
		cfg := speakerConfig(ourAddr.String(), bgp.DefaultASN, port, 30*time.Second)
		cfg.Restarting = restarting
		return childSpec{
			Config: cfg,
			Peers:  []bgp.Peer{{Name: "frr", Address: frrAddr, ASN: frrASN, Port: uint16(port)}},
			Ads:    []bgp.Advertisement{{Prefix: ourNet, NextHop: netip.MustParseAddr("192.0.2.2")}},
		}
	}
	ourRoute := func() (present, stale bool, detail string) {
		rs := f.routes(t)[ourNet.String()]
		if len(rs) == 0 {
			return false, false, "absent"
		}
		return true, rs[0].Stale, fmt.Sprintf("%+v", rs[0])
	}

	a := startChild(t, "a", spec(false))
	a.waitLine(t, "ready", 10*time.Second)
	eventually(t, 30*time.Second, "FRR learns our prefix", func() (bool, string) {
		ok, stale, d := ourRoute()
		return ok && !stale, d
	})
	a.waitLine(t, "converged", 10*time.Second)
	a.waitLine(t, fmt.Sprintf("learned %s %s stale=false", frrNet, frrAddr), 10*time.Second)
	if _, gr := f.grInfo(t, ourAddr); gr.RBit || gr.IPv4Unicast.FBit {
		t.Errorf("fresh start announced a restart: %+v", gr)
	}

	// Sample FRR's table (vtysh is slower than an in-process call).
	type frrSample struct {
		at             time.Time
		present, stale bool
	}
	var samples []frrSample
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			p, s, _ := ourRoute()
			samples = append(samples, frrSample{time.Now(), p, s})
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	killed := time.Now()
	a.kill()
	eventually(t, 10*time.Second, "FRR marks our route stale", func() (bool, string) {
		ok, stale, d := ourRoute()
		return ok && stale, d
	})

	a2 := startChild(t, "a2", spec(true))
	a2.waitLine(t, "ready", 10*time.Second)
	eventually(t, 30*time.Second, "session back with R and F bits", func() (bool, string) {
		state, gr := f.grInfo(t, ourAddr)
		return state == "Established" && gr.RBit && gr.IPv4Unicast.FBit, fmt.Sprintf("%s %+v", state, gr)
	})
	a2.waitLine(t, "converged", 30*time.Second)
	a2.waitLine(t, fmt.Sprintf("learned %s %s stale=false", frrNet, frrAddr), 10*time.Second)
	eventually(t, 10*time.Second, "FRR refreshes our route", func() (bool, string) {
		ok, stale, d := ourRoute()
		return ok && !stale, d
	})
	refreshed := time.Now()
	close(stop)
	<-done

	var stale int
	for _, s := range samples {
		if !s.present {
			t.Errorf("FRR lost our route %s after the kill", s.at.Sub(killed).Round(time.Millisecond))
		}
		if s.stale {
			stale++
		}
	}
	if stale == 0 {
		t.Error("FRR never held our route as stale")
	}
	t.Logf("restart window %s: %d FRR samples, %d stale, route present in all", refreshed.Sub(killed).Round(time.Millisecond), len(samples), stale)
}
