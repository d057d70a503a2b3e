package nft

import (
	"log/slog"
	"testing"
)

func TestSyncer(t *testing.T) {
	f := NewFake()
	s := NewSyncer(f, slog.New(slog.DiscardHandler))

	res, err := s.Sync(serviceTable("10.244.1.2"))
	if err != nil || !res.Dumped || res.Ops == 0 {
		t.Fatalf("first sync = %+v, %v; want a dump and ops", res, err)
	}
	if res, err := s.Sync(serviceTable("10.244.1.2")); err != nil || res.Dumped || res.Ops != 0 {
		t.Fatalf("unchanged sync = %+v, %v; want nothing sent, no dump", res, err)
	}
	if res, err := s.Sync(serviceTable("10.244.1.2", "10.244.2.3")); err != nil || res.Dumped || res.Ops != 6 {
		t.Fatalf("endpoint added = %+v, %v; want 6 ops from the cache", res, err)
	}

	bad := serviceTable("10.244.1.2")
	bad.Chains[0].Rules = append(bad.Chains[0].Rules, Rule{Action: Action{Kind: ActJump, Chain: "missing"}})
	if _, err := s.Sync(bad); err == nil {
		t.Fatal("sync of a broken table succeeded")
	}
	// Someone else edits the table meanwhile; the failed sync made the
	// Syncer distrust its cache, so the next sync reads the truth.
	other := NewSyncer(f, slog.New(slog.DiscardHandler))
	if _, err := other.Sync(serviceTable("10.244.9.9")); err != nil {
		t.Fatal(err)
	}
	res, err = s.Sync(serviceTable("10.244.1.2"))
	if err != nil || !res.Dumped {
		t.Fatalf("sync after failure = %+v, %v; want a dump first", res, err)
	}
	got, _ := f.Dump()
	if want := serviceTable("10.244.1.2"); got.String() != want.String() {
		t.Errorf("table after recovery:\n%s\nwant:\n%s", got, want)
	}

	if _, err := s.Sync(Table{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.Dump(); !got.Empty() {
		t.Errorf("Sync(Table{}) left %s", got)
	}
}
