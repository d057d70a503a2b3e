package routes

import (
	"bytes"
	"fmt"
	"os"

	"github.com/containernetworking/plugins/pkg/ns"
)

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// EnableIPv4Forwarding turns on IPv4 forwarding in the network namespace
// at nsPath (a /proc/<pid>/ns/net or /var/run/netns/<name> path), or in the
// caller's if nsPath is empty. Without it the routes Apply installs are
// useless: the node would drop pod traffic instead of routing it.
//
// /proc/sys/net resolves to the network namespace of the thread that opens
// it, so the write happens on a locked OS thread switched into nsPath.
func EnableIPv4Forwarding(nsPath string) error {
	if nsPath == "" {
		if err := enableIPv4Forwarding(); err != nil {
			return fmt.Errorf("enable ipv4 forwarding: %w", err)
		}
		return nil
	}
	err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error { return enableIPv4Forwarding() })
	if err != nil {
		return fmt.Errorf("enable ipv4 forwarding in %s: %w", nsPath, err)
	}
	return nil
}

func enableIPv4Forwarding() error {
	cur, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return err
	}
	if string(bytes.TrimSpace(cur)) == "1" {
		// Already on (the usual case on a restart): nothing to write.
		return nil
	}
	return os.WriteFile(ipForwardPath, []byte("1"), 0o644)
}
