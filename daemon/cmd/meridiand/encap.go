package main

import (
	"flag"
	"fmt"

	"github.com/meridian-net/meridian/daemon/encap"
)

// encapFlags are the encapsulation defaults; a BGPConfiguration's
// spec.encapsulation and spec.encapsulationType override them.
type encapFlags struct {
	mode   string
	typ    string
	podMTU int
}

func (f *encapFlags) register() {
	flag.StringVar(&f.mode, "encapsulation", string(encap.DefaultMode),
		"when pod traffic to other nodes is tunnelled: Never, CrossSubnet (only to nodes whose next hop is not on a connected subnet and whose pod CIDR no ToR announced) or Always; BGPConfiguration spec.encapsulation overrides it")
	flag.StringVar(&f.typ, "encapsulation-type", string(encap.DefaultType),
		"the tunnel: IPIP (tunl0) or VXLAN (UDP 4789, for networks that drop IP protocol 4); BGPConfiguration spec.encapsulationType overrides it")
	flag.IntVar(&f.podMTU, "pod-mtu", 0,
		"MTU of pod interfaces written for meridian-cni (a conflist \"mtu\" still wins); 0 derives it from the node's link MTU minus the tunnel overhead (20 IPIP, 50 VXLAN) unless encapsulation is Never")
}

// encapConfig is the parsed encapFlags.
type encapConfig struct {
	mode   encap.Mode
	typ    encap.Type
	podMTU int
}

// parse validates the flags.
func (f *encapFlags) parse() (encap.Mode, encap.Type, error) {
	m, err := encap.ParseMode(f.mode)
	if err != nil {
		return "", "", fmt.Errorf("--encapsulation: %w", err)
	}
	t, err := encap.ParseType(f.typ)
	if err != nil {
		return "", "", fmt.Errorf("--encapsulation-type: %w", err)
	}
	if f.podMTU != 0 && (f.podMTU < encap.MinMTU || f.podMTU > 65535) {
		return "", "", fmt.Errorf("--pod-mtu %d outside %d..65535", f.podMTU, encap.MinMTU)
	}
	return m, t, nil
}
