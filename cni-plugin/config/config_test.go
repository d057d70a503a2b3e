package config

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/meridian-net/meridian/cni-plugin/ipam"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		wantCode uint // 0: success
		wantMsg  string
		check    func(t *testing.T, c *NetConf)
	}{
		{
			name: "defaults",
			in:   `{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"meridian-cni"}`,
			check: func(t *testing.T, c *NetConf) {
				if c.StateDir != DefaultStateDir || c.MTU != DefaultMTU || c.HostVethPrefix != DefaultHostVethPrefix {
					t.Errorf("defaults not applied: %+v", c)
				}
				if c.Name != "k8s-pod-network" || c.CNIVersion != "1.0.0" {
					t.Errorf("standard fields: %+v", c.PluginConf)
				}
			},
		},
		{
			name: "all fields set",
			in:   `{"cniVersion":"1.1.0","name":"n","type":"meridian-cni","stateDir":"/run/mer/../meridian","mtu":9000,"hostVethPrefix":"ab_9"}`,
			check: func(t *testing.T, c *NetConf) {
				if c.StateDir != "/run/meridian" {
					t.Errorf("stateDir not cleaned: %q", c.StateDir)
				}
				if c.MTU != 9000 || c.HostVethPrefix != "ab_9" {
					t.Errorf("fields: %+v", c)
				}
			},
		},
		{
			name: "0.4.0 accepted, unknown fields ignored",
			in:   `{"cniVersion":"0.4.0","name":"n","type":"meridian-cni","runtimeConfig":{"x":1},"capabilities":{"portMappings":true}}`,
		},
		{
			name: "mtu bounds inclusive",
			in:   `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","mtu":576}`,
			check: func(t *testing.T, c *NetConf) {
				if c.MTU != 576 {
					t.Errorf("mtu %d", c.MTU)
				}
			},
		},
		{
			name: "mtu upper bound",
			in:   `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","mtu":65535}`,
		},
		{
			name: "prevResult parsed",
			in: `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","prevResult":{"cniVersion":"1.0.0",
				"interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.244.1.2/32","interface":0}]}}`,
			check: func(t *testing.T, c *NetConf) {
				r, err := types100.GetResult(c.PrevResult)
				if err != nil {
					t.Fatal(err)
				}
				if len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.244.1.2/32" {
					t.Errorf("prevResult ips: %v", r.IPs)
				}
			},
		},
		{name: "malformed json", in: `{"cniVersion":`, wantCode: types.ErrDecodingFailure},
		{name: "not an object", in: `[1,2]`, wantCode: types.ErrDecodingFailure},
		{name: "empty input", in: ``, wantCode: types.ErrDecodingFailure},
		{name: "trailing data", in: `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni"} {}`, wantCode: types.ErrDecodingFailure},
		{name: "mtu wrong type", in: `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","mtu":"1500"}`, wantCode: types.ErrDecodingFailure},
		{name: "mtu fraction", in: `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","mtu":1500.5}`, wantCode: types.ErrDecodingFailure},
		{name: "prevResult bad", in: `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","prevResult":{"ips":[{"address":"nope"}]}}`, wantCode: types.ErrDecodingFailure},
		{name: "unknown version", in: `{"cniVersion":"9.9.9","name":"n","type":"meridian-cni"}`, wantCode: types.ErrIncompatibleCNIVersion, wantMsg: "9.9.9"},
		{name: "old version", in: `{"cniVersion":"0.3.1","name":"n","type":"meridian-cni"}`, wantCode: types.ErrIncompatibleCNIVersion},
		{name: "missing version", in: `{"name":"n","type":"meridian-cni"}`, wantCode: types.ErrIncompatibleCNIVersion},
		{name: "missing name", in: `{"cniVersion":"1.0.0","type":"meridian-cni"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "name"},
		{name: "bad name", in: `{"cniVersion":"1.0.0","name":"a/b","type":"meridian-cni"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "name"},
		{name: "wrong type", in: `{"cniVersion":"1.0.0","name":"n","type":"ptp"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "meridian-cni"},
		{name: "relative stateDir", in: `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","stateDir":"var/lib"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "stateDir"},
		{name: "mtu too small", in: `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","mtu":575}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "mtu"},
		{name: "mtu too big", in: `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","mtu":65536}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "mtu"},
		{name: "mtu negative", in: `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","mtu":-1}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "mtu"},
		{name: "prefix too long", in: `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","hostVethPrefix":"calic"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "hostVethPrefix"},
		{name: "prefix with dot", in: `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","hostVethPrefix":"a.b"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "hostVethPrefix"},
		{name: "prefix with slash", in: `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","hostVethPrefix":"a/"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "hostVethPrefix"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.in))
			if tc.wantCode == 0 {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if tc.check != nil {
					tc.check(t, c)
				}
				return
			}
			var ce *types.Error
			if !errors.As(err, &ce) {
				t.Fatalf("Parse error %v (%T), want *types.Error code %d", err, err, tc.wantCode)
			}
			if ce.Code != tc.wantCode {
				t.Errorf("code %d (%s), want %d", ce.Code, ce.Msg, tc.wantCode)
			}
			if !strings.Contains(ce.Msg, tc.wantMsg) {
				t.Errorf("message %q does not mention %q", ce.Msg, tc.wantMsg)
			}
			if c != nil {
				t.Errorf("got a config alongside the error: %+v", c)
			}
		})
	}
}

// FuzzParse checks that no input panics Parse, every failure carries one of
// the spec codes Parse promises, and every success satisfies the invariants
// the rest of the plugin relies on.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.0.0","name":"n","type":"meridian-cni"}`,
		`{"cniVersion":"1.1.0","name":"n","type":"meridian-cni","stateDir":"/x","mtu":9000,"hostVethPrefix":"mer"}`,
		`{"cniVersion":"0.4.0","name":"n","type":"meridian-cni","prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.1/32"}]}}`,
		`{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","mtu":-7}`,
		`{"cniVersion":"2.0.0"}`,
		`null`,
		`{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			var ce *types.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is %T, not *types.Error", err, err)
			}
			switch ce.Code {
			case types.ErrDecodingFailure, types.ErrInvalidNetworkConfig, types.ErrIncompatibleCNIVersion:
			default:
				t.Fatalf("unexpected code %d: %s", ce.Code, ce.Msg)
			}
			return
		}
		if c.MTU < MinMTU || c.MTU > MaxMTU {
			t.Fatalf("accepted mtu %d", c.MTU)
		}
		if c.HostVethPrefix == "" || len(c.HostVethPrefix) > MaxHostVethPrefix {
			t.Fatalf("accepted prefix %q", c.HostVethPrefix)
		}
		if !filepath.IsAbs(c.StateDir) || filepath.Clean(c.StateDir) != c.StateDir {
			t.Fatalf("accepted stateDir %q", c.StateDir)
		}
		if c.Type != PluginType || c.Name == "" {
			t.Fatalf("accepted type %q name %q", c.Type, c.Name)
		}
	})
}

// Without "mtu" in the conflist, the MTU meridiand wrote into node.json is
// used; the conflist's wins when set; without either, DefaultMTU.
func TestMTUFromNodeState(t *testing.T) {
	dir := t.TempDir()
	conf := func(extra string) string {
		return `{"cniVersion":"1.0.0","name":"n","type":"meridian-cni","stateDir":"` + dir + `"` + extra + `}`
	}
	parse := func(in string) int {
		t.Helper()
		c, err := Parse([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		return c.MTU
	}
	if got := parse(conf("")); got != DefaultMTU {
		t.Errorf("no node.json: mtu %d, want %d", got, DefaultMTU)
	}
	for _, tc := range []struct {
		nodeMTU, want int
	}{{1480, 1480}, {1450, 1450}, {0, DefaultMTU}, {100, DefaultMTU}, {70000, DefaultMTU}} {
		if err := (ipam.NodeState{NodeName: "node-1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, MTU: tc.nodeMTU}).Write(dir); err != nil {
			t.Fatal(err)
		}
		if got := parse(conf("")); got != tc.want {
			t.Errorf("node.json mtu %d: mtu %d, want %d", tc.nodeMTU, got, tc.want)
		}
		if got := parse(conf(`,"mtu":9000`)); got != 9000 {
			t.Errorf("node.json mtu %d and conflist 9000: mtu %d, want the conflist's", tc.nodeMTU, got)
		}
	}
}
