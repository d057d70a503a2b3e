package nodeagent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// podState is what the agent keeps on disk per pod with a netns, so that
// after a restart it knows which netns are its own and can run CNI DEL for
// pods that went away meanwhile. It is written before the netns is created:
// every pod netns this node's agent made has a state file.
type podState struct {
	UID       types.UID    `json:"uid"`
	Namespace string       `json:"namespace"`
	Name      string       `json:"name"`
	Netns     string       `json:"netns"`
	IPs       []netip.Addr `json:"ips,omitempty"`
}

func (s podState) key() string { return s.Namespace + "/" + s.Name }

// stateStore keeps podState files in one directory, one per pod UID.
type stateStore struct {
	dir string
}

func (s stateStore) path(uid types.UID) string {
	return filepath.Join(s.dir, string(uid)+".json")
}

// save writes atomically: a crash leaves the old file or the new one.
func (s stateStore) save(st podState) error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode state of pod %s: %w", st.key(), err)
	}
	tmp, err := os.CreateTemp(s.dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("write state of pod %s: %w", st.key(), err)
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write state of pod %s: %w", st.key(), err)
	}
	if err := os.Rename(tmp.Name(), s.path(st.UID)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write state of pod %s: %w", st.key(), err)
	}
	return nil
}

func (s stateStore) remove(uid types.UID) error {
	if err := os.Remove(s.path(uid)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove state of pod %s: %w", uid, err)
	}
	return nil
}

// load reads every state file. Unreadable files are reported in the joined
// error but do not hide the others.
func (s stateStore) load() ([]podState, error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state dir: %w", err)
	}
	var out []podState
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".json") || strings.HasPrefix(name, ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var st podState
		if err := json.Unmarshal(b, &st); err != nil {
			errs = append(errs, fmt.Errorf("decode %s: %w", name, err))
			continue
		}
		if st.UID == "" || st.Netns == "" {
			errs = append(errs, fmt.Errorf("decode %s: no uid or netns", name))
			continue
		}
		out = append(out, st)
	}
	return out, errors.Join(errs...)
}
