package lab

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRacksAddressing(t *testing.T) {
	for _, c := range []struct {
		i    int
		rack int
		ip   string
	}{{1, 1, "198.18.1.11"}, {2, 2, "198.18.2.12"}, {3, 1, "198.18.1.13"}, {4, 2, "198.18.2.14"}} {
		n := newRackNode(c.i)
		if n.Rack != c.rack || n.IP.String() != c.ip || n.Name != NodeName(c.i) {
			t.Errorf("node %d = %+v, want rack %d ip %s", c.i, n, c.rack, c.ip)
		}
		if !RackSubnet(n.Rack).Contains(n.IP) {
			t.Errorf("node %d's %s outside its rack's %s", c.i, n.IP, RackSubnet(n.Rack))
		}
	}
	r := newRouter(2, ToRFRR, layout{dir: "/s"})
	if r.Name != "tor2" || r.Netns != "mlab-tor2" || r.RackIP.String() != "198.18.2.1" || r.CoreIP.String() != "198.18.0.252" ||
		r.ASN != 65102 || r.Subnet.String() != "198.18.2.0/24" || r.Dir != "/s/routers/tor2" {
		t.Errorf("router 2 = %+v", r)
	}
	// The core addresses stay clear of the host, the API server and the
	// flat lab's node addresses.
	for rack := 1; rack <= Racks; rack++ {
		ip := RouterCoreIP(rack)
		if !LabSubnet.Contains(ip) || ip == HostIP || ip == APIServerIP || ip.Compare(NodeIP(maxNodes)) <= 0 {
			t.Errorf("router core address %s collides", ip)
		}
		if RackASN(rack) == RouterASN(rack) {
			t.Errorf("rack %d: nodes and router share ASN %d, want eBGP", rack, RackASN(rack))
		}
	}
}

func TestParseTopologyAndToR(t *testing.T) {
	if got, err := ParseTopology(""); err != nil || got != TopologyFlat {
		t.Errorf(`ParseTopology("") = %q, %v`, got, err)
	}
	if got, err := ParseTopology("racks"); err != nil || got != TopologyRacks {
		t.Errorf(`ParseTopology("racks") = %q, %v`, got, err)
	}
	if _, err := ParseTopology("mesh"); err == nil {
		t.Error("ParseTopology(mesh) accepted")
	}
	for _, k := range []string{"frr", "bird", "none"} {
		if got, err := ParseToR(k); err != nil || string(got) != k {
			t.Errorf("ParseToR(%q) = %q, %v", k, got, err)
		}
	}
	if _, err := ParseToR(""); err == nil {
		t.Error(`ParseToR("") accepted`)
	}
}

func TestRouterArgv(t *testing.T) {
	frr := Router{Kind: ToRFRR, Dir: "/s/routers/tor1"}
	bird := Router{Kind: ToRBIRD, Dir: "/s/routers/tor2"}
	for _, c := range []struct {
		r    Router
		in   []string
		want []string
	}{
		{frr, []string{"vtysh", "-c", "show ip bgp"}, []string{"vtysh", "--vty_socket", "/s/routers/tor1", "-c", "show ip bgp"}},
		{frr, []string{"/usr/bin/vtysh", "--vty_socket", "/x", "-c", "x"}, []string{"/usr/bin/vtysh", "--vty_socket", "/x", "-c", "x"}},
		{bird, []string{"birdc", "show", "route"}, []string{"birdc", "-s", "/s/routers/tor2/bird.ctl", "show", "route"}},
		{frr, []string{"ip", "route"}, []string{"ip", "route"}},
		{frr, nil, nil},
	} {
		if got := RouterArgv(c.r, c.in); !slices.Equal(got, c.want) {
			t.Errorf("RouterArgv(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func testTorConfig(password string) torConfig {
	s := layout{dir: "/s"}
	r1, r2 := newRouter(1, ToRFRR, s), newRouter(2, ToRFRR, s)
	return torConfig{Router: r1, Peer: r2, RackASN: RackASN(1), ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), Password: password}
}

// The rendered configurations say what docs/peering.md shows, and the
// daemons themselves accept them (FRR's dry run, BIRD's parse-only mode)
// where they are installed.
func TestFRRConfig(t *testing.T) {
	conf := frrBgpdConfig(testTorConfig("s3cret"))
	for _, want := range []string{
		"router bgp 65101",
		" neighbor NODES remote-as 65001",
		" neighbor NODES password s3cret",
		" bgp listen range 198.18.1.0/24 peer-group NODES",
		" neighbor 198.18.0.252 remote-as 65102",
		" bgp graceful-restart",
		"ip prefix-list POD-CIDRS seq 10 permit 10.244.0.0/16 ge 24 le 24",
		"  neighbor NODES as-override",
		"  neighbor NODES route-map NODES-IN in",
		"  neighbor 198.18.0.252 route-map CORE-OUT out",
	} {
		if !strings.Contains(conf, want+"\n") {
			t.Errorf("bgpd.conf lacks %q:\n%s", want, conf)
		}
	}
	if strings.Contains(frrBgpdConfig(testTorConfig("")), "password") {
		t.Error("bgpd.conf has a password though none was given")
	}
	if _, err := os.Stat(FRRBgpd); err != nil || os.Geteuid() != 0 {
		t.Skip("no FRR or not root: dry run skipped")
	}
	f := filepath.Join(t.TempDir(), "bgpd.conf")
	if err := os.WriteFile(f, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// bgpd -C exits 0 even when lines fail; its errors carry an [EC ...]
	// code.
	out, err := exec.Command(FRRBgpd, "-C", "-f", f, "-S", "-Z").CombinedOutput()
	if err != nil || strings.Contains(string(out), "[EC ") || strings.Contains(string(out), "No such command") {
		t.Errorf("bgpd -C refuses the configuration: %v\n%s\n%s", err, out, conf)
	}
}

func TestBIRDConfig(t *testing.T) {
	c := testTorConfig("s3cret")
	conf := birdConfig(c)
	for _, want := range []string{
		"define POD_CIDRS = [ 10.244.0.0/16{24,24} ];",
		" local 198.18.1.1 as 65101;",
		" neighbor range 198.18.1.0/24 as 65001;",
		` password "s3cret";`,
		" neighbor 198.18.0.252 as 65102;",
		"bgp_path.delete(65001)",
		" ipv4 { import none; export where source = RTS_BGP; };",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("bird.conf lacks %q:\n%s", want, conf)
		}
	}
	if _, err := os.Stat(BIRDBin); err != nil {
		t.Skip("no BIRD: parse check skipped")
	}
	f := filepath.Join(t.TempDir(), "bird.conf")
	if err := os.WriteFile(f, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(BIRDBin, "-p", "-c", f).CombinedOutput(); err != nil {
		t.Errorf("bird -p refuses the configuration: %v\n%s\n%s", err, out, conf)
	}
}
