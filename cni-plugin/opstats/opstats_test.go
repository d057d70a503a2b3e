package opstats

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestAppendDrainRoundTrip(t *testing.T) {
	dir := t.TempDir()
	start := time.Unix(1700000000, 123456789)
	want := []Record{
		{Op: OpAdd, Start: start, Duration: 42 * time.Millisecond},
		{Op: OpDel, Code: 7, Start: start.Add(time.Second), Duration: time.Microsecond},
		{Op: OpCheck, Code: 101, Start: start.Add(2 * time.Second), Duration: 3 * time.Second},
	}
	for _, r := range want {
		if err := Append(dir, r); err != nil {
			t.Fatal(err)
		}
	}
	got, skipped, err := Drain(dir)
	if err != nil || skipped != 0 {
		t.Fatalf("Drain: %v, skipped %d", err, skipped)
	}
	if len(got) != len(want) {
		t.Fatalf("drained %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Op != want[i].Op || got[i].Code != want[i].Code || !got[i].Start.Equal(want[i].Start) || got[i].Duration != want[i].Duration {
			t.Errorf("record %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	again, _, err := Drain(dir)
	if err != nil || len(again) != 0 {
		t.Errorf("second Drain = %d records, %v; want the file emptied", len(again), err)
	}
}

// Plugins append while the daemon drains: every record is read exactly once.
func TestConcurrentAppendAndDrain(t *testing.T) {
	dir := t.TempDir()
	const writers, each = 8, 200
	var wg sync.WaitGroup
	dropped := make(chan error, writers*each)
	for range writers {
		wg.Go(func() {
			for range each {
				if err := Append(dir, Record{Op: OpAdd, Start: time.Now(), Duration: time.Millisecond}); err != nil {
					dropped <- err
				}
			}
		})
	}
	total := 0
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		recs, skipped, err := Drain(dir)
		if err != nil || skipped != 0 {
			t.Fatalf("Drain: %v, skipped %d", err, skipped)
		}
		total += len(recs)
	}
	close(dropped)
	lost := 0
	for err := range dropped {
		lost++
		t.Logf("dropped: %v", err)
	}
	if total+lost != writers*each {
		t.Errorf("drained %d + dropped %d records, want %d", total, lost, writers*each)
	}
	// Drops only happen when the lock is held for 20 ms; a drain of a
	// small file takes microseconds.
	if lost > writers*each/10 {
		t.Errorf("%d of %d records dropped", lost, writers*each)
	}
}

func TestAppendDropsWhenFull(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), make([]byte, MaxFileSize), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Append(dir, Record{Op: OpAdd}); err == nil {
		t.Fatal("Append to a full file succeeded")
	}
	st, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil || st.Size() != MaxFileSize {
		t.Fatalf("file size %v (%v), want it left at %d", st.Size(), err, MaxFileSize)
	}
}

func TestAppendNeedsStateDir(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "absent")
	if err := Append(missing, Record{Op: OpAdd}); err == nil {
		t.Fatal("Append created records in a directory that does not exist")
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("Append made %s", missing)
	}
}

// A torn tail and a record of an unknown version are skipped, the others
// kept.
func TestDrainSkipsDamage(t *testing.T) {
	dir := t.TempDir()
	good := Record{Op: OpDel, Start: time.Unix(1, 0), Duration: time.Second}.marshal()
	future := good
	future[0] = version + 1
	var b []byte
	b = append(b, good[:]...)
	b = append(b, future[:]...)
	b = append(b, good[:10]...)
	if err := os.WriteFile(filepath.Join(dir, FileName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	recs, skipped, err := Drain(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Op != OpDel || skipped != RecordSize+10 {
		t.Fatalf("Drain = %+v, skipped %d; want the one good record and %d bytes skipped", recs, skipped, RecordSize+10)
	}
}

func TestOpString(t *testing.T) {
	for op, want := range map[Op]string{OpAdd: "add", OpDel: "del", OpCheck: "check", 9: "op9"} {
		if got := op.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", op, got, want)
		}
	}
}
