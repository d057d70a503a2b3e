package nft

import (
	"fmt"
	"log/slog"
	"time"
)

// Syncer keeps table inet meridian at a desired state through a Conn,
// sending only differences. It remembers the state its last successful
// Apply reached, so a partial sync costs no read of the kernel; the first
// sync, and the one after any failure, reads the table back with Dump and
// plans against what is really there (adopting it after a restart without
// touching unchanged objects, so conntrack entries of running connections
// keep their DNAT targets). Not safe for concurrent use: one sync loop owns
// it.
type Syncer struct {
	conn  Conn
	log   *slog.Logger
	known *Table // nil: read the kernel before the next plan
}

// NewSyncer wires a Syncer; it does no IO.
func NewSyncer(conn Conn, log *slog.Logger) *Syncer {
	return &Syncer{conn: conn, log: log}
}

// SyncResult says what one Sync did.
type SyncResult struct {
	Dumped   bool // the kernel table was read back first
	Ops      int
	Duration time.Duration
}

// Sync makes the table equal desired. Sync(Table{}) removes the table.
// The Syncer keeps desired for the next plan: the caller must not modify it
// afterwards.
func (s *Syncer) Sync(desired Table) (res SyncResult, err error) {
	start := time.Now()
	defer func() {
		res.Duration = time.Since(start)
		if err != nil {
			s.log.Warn("nft sync failed", "subsys", "nft", "ops", res.Ops, "error", err)
		}
	}()
	if s.known == nil {
		cur, err := s.conn.Dump()
		if err != nil {
			return res, fmt.Errorf("sync nft table: %w", err)
		}
		s.known, res.Dumped = &cur, true
	}
	tx := Plan(*s.known, desired)
	res.Ops = tx.Ops()
	if tx.Empty() {
		return res, nil
	}
	if err := s.conn.Apply(tx); err != nil {
		// The batch was refused as a whole, but what is in the kernel may
		// not be what we think (someone else edited it): read it next time.
		s.known = nil
		return res, fmt.Errorf("sync nft table: %w", err)
	}
	// Kept as given, not copied: Plan never modifies its inputs, and
	// callers hand over a freshly rendered table each sync.
	s.known = &desired
	return res, nil
}
