// Package config parses and validates the network configuration that the
// container runtime hands meridian-cni on stdin.
//
// Every failure is a *types.Error carrying the CNI spec's error code, so the
// plugin's main can return it unchanged and the runtime sees the right code.
package config

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/meridian-net/meridian/cni-plugin/ipam"
)

// PluginType is the value the "type" field must carry.
const PluginType = "meridian-cni"

// Defaults and limits for meridian-cni's own fields.
const (
	DefaultStateDir       = "/var/lib/meridian"
	DefaultMTU            = 1500
	DefaultHostVethPrefix = "mer"

	// MinMTU is the smallest datagram every IPv4 host must accept (RFC 791).
	MinMTU = 576
	// MaxMTU is the largest MTU the kernel's 16-bit IPv4 total length allows.
	MaxMTU = 65535
	// MaxHostVethPrefix leaves room for the 11 hex characters of the hashed
	// suffix inside IFNAMSIZ-1 (15) characters.
	MaxHostVethPrefix = 4
)

// SupportedVersions are the CNI spec versions meridian-cni speaks. 0.4.0 is
// the oldest with CHECK; STATUS and GC need 1.1.0.
var SupportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// NetConf is the parsed configuration: the CNI fields plus meridian's own.
type NetConf struct {
	types.PluginConf

	// StateDir holds node.json (written by meridiand) and the IPAM store.
	StateDir string `json:"stateDir,omitempty"`
	// MTU is set on both ends of the pod's veth pair. Unset, it is the MTU
	// meridiand published in the node state (the node's link MTU minus the
	// tunnel overhead when encapsulation can be used), else DefaultMTU.
	MTU int `json:"mtu,omitempty"`
	// HostVethPrefix starts the name of every host-side veth, so they are
	// recognisable as Meridian's (Calico uses "cali").
	HostVethPrefix string `json:"hostVethPrefix,omitempty"`
}

// Parse decodes stdin data into a NetConf, fills in defaults and validates.
// Errors carry the spec's codes: 6 (ErrDecodingFailure) for undecodable
// input, 1 (ErrIncompatibleCNIVersion) for a version meridian-cni does not
// speak and 7 (ErrInvalidNetworkConfig) for an invalid field.
func Parse(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	// json.Unmarshal, unlike a Decoder, refuses trailing data after the
	// object: the runtime sent something we do not understand, so act on none of it.
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode network config: %v", err), "")
	}

	if !slices.Contains(SupportedVersions, conf.CNIVersion) {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion,
			fmt.Sprintf("unsupported cniVersion %q", conf.CNIVersion),
			fmt.Sprintf("supported versions: %v", SupportedVersions))
	}
	if conf.Name == "" {
		return nil, invalid("missing network name")
	}
	if err := utils.ValidateNetworkName(conf.Name); err != nil {
		return nil, invalid(fmt.Sprintf("invalid network name %q: %s", conf.Name, err.Msg))
	}
	if conf.Type != PluginType {
		return nil, invalid(fmt.Sprintf("type is %q, want %q", conf.Type, PluginType))
	}

	if conf.StateDir == "" {
		conf.StateDir = DefaultStateDir
	}
	if !filepath.IsAbs(conf.StateDir) {
		return nil, invalid(fmt.Sprintf("stateDir %q is not an absolute path", conf.StateDir))
	}
	conf.StateDir = filepath.Clean(conf.StateDir)

	if conf.MTU == 0 {
		conf.MTU = nodeMTU(conf.StateDir)
	}
	if conf.MTU < MinMTU || conf.MTU > MaxMTU {
		return nil, invalid(fmt.Sprintf("mtu %d outside %d..%d", conf.MTU, MinMTU, MaxMTU))
	}

	if conf.HostVethPrefix == "" {
		conf.HostVethPrefix = DefaultHostVethPrefix
	}
	if err := validatePrefix(conf.HostVethPrefix); err != nil {
		return nil, err
	}

	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode prevResult: %v", err), "")
		}
	}
	return conf, nil
}

// validatePrefix keeps to characters that are safe both in an interface
// name and in a /proc/sys/net/ipv4/conf/<name>/ path ('.' would be a path
// separator in sysctl notation, '/' and whitespace are refused by the kernel).
func validatePrefix(p string) error {
	if len(p) > MaxHostVethPrefix {
		return invalid(fmt.Sprintf("hostVethPrefix %q longer than %d characters", p, MaxHostVethPrefix))
	}
	for _, c := range []byte(p) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		if !ok {
			return invalid(fmt.Sprintf("hostVethPrefix %q may hold only letters, digits, '-' and '_'", p))
		}
	}
	return nil
}

func invalid(msg string) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, msg, "")
}

// nodeMTU is the MTU meridiand wrote into the node state, or DefaultMTU when
// there is none (no node.json yet, an older meridiand) or it is out of
// range. An unreadable node state is not an error here: ADD reports it when
// it needs the pod CIDR from the same file.
func nodeMTU(stateDir string) int {
	s, err := ipam.ReadNodeState(stateDir)
	if err != nil || s.MTU < MinMTU || s.MTU > MaxMTU {
		return DefaultMTU
	}
	return s.MTU
}
