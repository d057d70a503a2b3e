package container

import (
	"fmt"
	"slices"
	"strings"
)

// capabilityNumbers are the kernel's capability numbers
// (include/uapi/linux/capability.h, up to CAP_CHECKPOINT_RESTORE in 5.9).
var capabilityNumbers = map[string]int{
	"CHOWN":              0,
	"DAC_OVERRIDE":       1,
	"DAC_READ_SEARCH":    2,
	"FOWNER":             3,
	"FSETID":             4,
	"KILL":               5,
	"SETGID":             6,
	"SETUID":             7,
	"SETPCAP":            8,
	"LINUX_IMMUTABLE":    9,
	"NET_BIND_SERVICE":   10,
	"NET_BROADCAST":      11,
	"NET_ADMIN":          12,
	"NET_RAW":            13,
	"IPC_LOCK":           14,
	"IPC_OWNER":          15,
	"SYS_MODULE":         16,
	"SYS_RAWIO":          17,
	"SYS_CHROOT":         18,
	"SYS_PTRACE":         19,
	"SYS_PACCT":          20,
	"SYS_ADMIN":          21,
	"SYS_BOOT":           22,
	"SYS_NICE":           23,
	"SYS_RESOURCE":       24,
	"SYS_TIME":           25,
	"SYS_TTY_CONFIG":     26,
	"MKNOD":              27,
	"LEASE":              28,
	"AUDIT_WRITE":        29,
	"AUDIT_CONTROL":      30,
	"SETFCAP":            31,
	"MAC_OVERRIDE":       32,
	"MAC_ADMIN":          33,
	"SYSLOG":             34,
	"WAKE_ALARM":         35,
	"BLOCK_SUSPEND":      36,
	"AUDIT_READ":         37,
	"PERFMON":            38,
	"BPF":                39,
	"CHECKPOINT_RESTORE": 40,
}

// DefaultCapabilities is the set containerd gives a container that asks for
// nothing (containerd pkg/oci defaultUnixCaps), the set Kubernetes pods get
// on a containerd node.
var DefaultCapabilities = []string{
	"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
	"NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}

// AllCapabilities lists every capability this package knows, sorted.
func AllCapabilities() []string {
	all := make([]string, 0, len(capabilityNumbers))
	for n := range capabilityNumbers {
		all = append(all, n)
	}
	slices.Sort(all)
	return all
}

// canonicalCapability accepts what a pod's securityContext may say
// ("NET_ADMIN", "net_admin", "CAP_NET_ADMIN") and returns the bare upper-case
// name, as containerd's CRI plugin normalises them.
func canonicalCapability(name string) (string, error) {
	n := strings.TrimPrefix(strings.ToUpper(name), "CAP_")
	if _, ok := capabilityNumbers[n]; !ok {
		return "", fmt.Errorf("unknown capability %q", name)
	}
	return n, nil
}

// EffectiveCapabilities is the capability set of a container, by
// containerd's CRI rule (internal/cri/opts WithCapabilities): privileged
// gets every capability; otherwise start from DefaultCapabilities, "ALL" in
// add gives every capability, "ALL" in drop removes every one, then the
// named adds are added and the named drops removed last, so a capability
// both added and dropped is dropped. Names may carry the CAP_ prefix and any
// case; an unknown name is an error. The result is sorted, without
// duplicates and without the prefix.
func EffectiveCapabilities(privileged bool, add, drop []string) ([]string, error) {
	if privileged {
		return AllCapabilities(), nil
	}
	set := map[string]bool{}
	for _, c := range DefaultCapabilities {
		set[c] = true
	}
	var adds, drops []string
	for _, c := range add {
		if strings.EqualFold(c, "ALL") {
			for _, n := range AllCapabilities() {
				set[n] = true
			}
			continue
		}
		n, err := canonicalCapability(c)
		if err != nil {
			return nil, fmt.Errorf("add: %w", err)
		}
		adds = append(adds, n)
	}
	for _, c := range drop {
		if strings.EqualFold(c, "ALL") {
			clear(set)
			continue
		}
		n, err := canonicalCapability(c)
		if err != nil {
			return nil, fmt.Errorf("drop: %w", err)
		}
		drops = append(drops, n)
	}
	for _, n := range adds {
		set[n] = true
	}
	for _, n := range drops {
		delete(set, n)
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}
