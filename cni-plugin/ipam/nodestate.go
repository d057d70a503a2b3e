package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
)

// NodeStateFile is the name of the node state file inside the state
// directory. meridiand writes it; meridian-cni only reads it.
const NodeStateFile = "node.json"

// ErrNoPodCIDR means node.json is absent or lists no IPv4 pod CIDR: meridiand
// has not yet learnt the node's Spec.PodCIDRs, so ADD should be retried.
var ErrNoPodCIDR = errors.New("node has no pod CIDR yet")

// NodeState is the contract between meridiand and meridian-cni, stored as
// <stateDir>/node.json, e.g.
// {"nodeName":"node-1","podCIDRs":["10.244.1.0/24"],"mtu":1480}.
type NodeState struct {
	NodeName string         `json:"nodeName"`
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
	// MTU is the pod interface MTU meridiand derived from the node's link
	// and the encapsulation (or its --pod-mtu); 0 when unknown. A conflist
	// "mtu" takes precedence.
	MTU int `json:"mtu,omitempty"`
}

// ReadNodeState reads <stateDir>/node.json. A missing file is reported as an
// error wrapping fs.ErrNotExist.
func ReadNodeState(stateDir string) (NodeState, error) {
	var s NodeState
	b, err := os.ReadFile(filepath.Join(stateDir, NodeStateFile))
	if err != nil {
		return s, fmt.Errorf("read node state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("decode node state %s: %w", filepath.Join(stateDir, NodeStateFile), err)
	}
	return s, nil
}

// Write stores s as <stateDir>/node.json atomically: a reader (a concurrent
// CNI ADD) sees either the old or the new file, never a torn one.
func (s NodeState) Write(stateDir string) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode node state: %w", err)
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(stateDir, NodeStateFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write node state: %w", err)
	}
	return nil
}

// IPv4PodCIDR returns the first IPv4 pod CIDR, masked.
func (s NodeState) IPv4PodCIDR() (netip.Prefix, bool) {
	for _, p := range s.PodCIDRs {
		if p.IsValid() && p.Addr().Is4() {
			return p.Masked(), true
		}
	}
	return netip.Prefix{}, false
}

// PodCIDR reads node.json and returns the node's IPv4 pod CIDR, or an error
// wrapping ErrNoPodCIDR when the file is absent or lists none.
func PodCIDR(stateDir string) (netip.Prefix, error) {
	s, err := ReadNodeState(stateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return netip.Prefix{}, fmt.Errorf("%w: %s does not exist", ErrNoPodCIDR, filepath.Join(stateDir, NodeStateFile))
	}
	if err != nil {
		return netip.Prefix{}, err
	}
	p, ok := s.IPv4PodCIDR()
	if !ok {
		return netip.Prefix{}, fmt.Errorf("%w: %s lists no IPv4 pod CIDR", ErrNoPodCIDR, filepath.Join(stateDir, NodeStateFile))
	}
	return p, nil
}

// writeFileAtomic writes data to a temporary file in the same directory,
// syncs it and renames it over path, then syncs the directory so the rename
// survives a power cut.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
