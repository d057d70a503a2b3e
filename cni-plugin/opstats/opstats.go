// Package opstats carries meridian-cni's per-operation measurements to
// meridiand, which exports them as Prometheus metrics. The plugin lives for
// one operation and has no listener, so each ADD, DEL or CHECK appends one
// fixed-size record to a file in the node's state directory, and meridiand
// drains the file (reads and truncates it under the same flock).
//
// A file rather than a socket to meridiand: an operation's record is kept
// while meridiand is down or restarting (often exactly when ADDs fail) and
// counted once it is back. Recording never blocks or fails an operation: a
// lock held too long, a full file or any I/O error drops the record.
package opstats

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// FileName is the records file inside the node's state directory.
const FileName = "cni-ops.bin"

// RecordSize is the length of one record on disk.
const RecordSize = 24

// MaxFileSize caps the file while nobody drains it (meridiand down): about
// 43,000 operations, after which new records are dropped rather than let
// the node's disk fill.
const MaxFileSize = 1 << 20

// version is the first byte of every record; a reader skips records of
// another version (a plugin newer than its daemon during an upgrade).
const version = 1

// Op is the CNI command measured.
type Op uint8

const (
	OpAdd Op = iota + 1
	OpDel
	OpCheck
)

// String is the op label of the metrics.
func (o Op) String() string {
	switch o {
	case OpAdd:
		return "add"
	case OpDel:
		return "del"
	case OpCheck:
		return "check"
	}
	return fmt.Sprintf("op%d", uint8(o))
}

// Record is one operation: when it started, how long it took, and its CNI
// error code (0 for success; the spec's codes, and the plugin's own from
// 100).
type Record struct {
	Op       Op
	Code     uint16
	Start    time.Time
	Duration time.Duration
}

// Layout, little endian: version u8, op u8, code u16, 4 reserved bytes,
// start (Unix nanoseconds) i64, duration (nanoseconds) i64.
func (r Record) marshal() [RecordSize]byte {
	var b [RecordSize]byte
	b[0] = version
	b[1] = byte(r.Op)
	binary.LittleEndian.PutUint16(b[2:4], r.Code)
	binary.LittleEndian.PutUint64(b[8:16], uint64(r.Start.UnixNano()))
	binary.LittleEndian.PutUint64(b[16:24], uint64(r.Duration.Nanoseconds()))
	return b
}

func unmarshal(b []byte) (Record, bool) {
	if len(b) != RecordSize || b[0] != version {
		return Record{}, false
	}
	return Record{
		Op:       Op(b[1]),
		Code:     binary.LittleEndian.Uint16(b[2:4]),
		Start:    time.Unix(0, int64(binary.LittleEndian.Uint64(b[8:16]))),
		Duration: time.Duration(binary.LittleEndian.Uint64(b[16:24])),
	}, true
}

// lockTries and lockWait bound how long Append waits for a drain in
// progress (which holds the lock for one read and truncate).
const (
	lockTries = 20
	lockWait  = time.Millisecond
)

// Append adds r to the records file in stateDir. The directory must exist
// (the plugin's IPAM store and meridiand make it); Append does not create
// it, so a wrong stateDir does not leave files around. The error is for
// tests: the plugin ignores it.
func Append(stateDir string, r Record) error {
	f, err := os.OpenFile(filepath.Join(stateDir, FileName), os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("open CNI records: %w", err)
	}
	defer f.Close()
	if err := tryLock(f); err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat CNI records: %w", err)
	}
	if st.Size()+RecordSize > MaxFileSize {
		return errors.New("CNI records file full: nobody drains it (is meridiand running?)")
	}
	b := r.marshal()
	// One write of the whole record: with O_APPEND and the lock, records
	// never interleave.
	if _, err := f.Write(b[:]); err != nil {
		return fmt.Errorf("append CNI record: %w", err)
	}
	return nil
}

func tryLock(f *os.File) error {
	for range lockTries {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("lock CNI records: %w", err)
		}
		time.Sleep(lockWait)
	}
	return errors.New("lock CNI records: still held after a drain's time; record dropped")
}

// Drain reads every record in stateDir's file and empties it. Records of
// an unknown version and a torn tail (a plugin killed mid-write) are
// skipped; skipped says how many bytes were. A missing file is no records.
func Drain(stateDir string) (recs []Record, skipped int, err error) {
	f, err := os.OpenFile(filepath.Join(stateDir, FileName), os.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open CNI records: %w", err)
	}
	defer f.Close()
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return nil, 0, fmt.Errorf("lock CNI records: %w", err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, 0, fmt.Errorf("read CNI records: %w", err)
	}
	if err := f.Truncate(0); err != nil {
		return nil, 0, fmt.Errorf("truncate CNI records: %w", err)
	}
	for len(b) >= RecordSize {
		if r, ok := unmarshal(b[:RecordSize]); ok {
			recs = append(recs, r)
		} else {
			skipped += RecordSize
		}
		b = b[RecordSize:]
	}
	return recs, skipped + len(b), nil
}
