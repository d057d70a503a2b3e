package nodeagent

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestStateStoreRoundTrip(t *testing.T) {
	s := stateStore{dir: filepath.Join(t.TempDir(), "pods")}
	if got, err := s.load(); err != nil || len(got) != 0 {
		t.Fatalf("load of missing dir: %v %v", got, err)
	}
	a := podState{UID: "uid-a", Namespace: "default", Name: "a", Netns: PodNetnsName("uid-a"), IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}}
	b := podState{UID: "uid-b", Namespace: "kube-system", Name: "b", Netns: PodNetnsName("uid-b")}
	for _, st := range []podState{a, b} {
		if err := s.save(st); err != nil {
			t.Fatal(err)
		}
	}
	a.IPs = append(a.IPs, netip.MustParseAddr("fd00::5"))
	if err := s.save(a); err != nil {
		t.Fatal(err)
	}
	// A corrupt file is reported but does not hide the good ones.
	if err := os.WriteFile(filepath.Join(s.dir, "broken.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := s.load()
	if err == nil {
		t.Error("corrupt state file not reported")
	}
	slices.SortFunc(got, func(x, y podState) int { return cmpString(string(x.UID), string(y.UID)) })
	if len(got) != 2 || got[0].key() != "default/a" || !slices.Equal(got[0].IPs, a.IPs) || got[1].key() != "kube-system/b" {
		t.Fatalf("loaded %+v", got)
	}
	if err := s.remove("uid-a"); err != nil {
		t.Fatal(err)
	}
	if err := s.remove("uid-a"); err != nil {
		t.Errorf("removing an absent state: %v", err)
	}
	entries, _ := os.ReadDir(s.dir)
	for _, e := range entries {
		if e.Name() != "uid-b.json" && e.Name() != "broken.json" {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
