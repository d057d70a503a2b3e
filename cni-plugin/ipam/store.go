// Package ipam hands out pod addresses from the node's pod CIDR.
//
// The pod CIDR comes from <stateDir>/node.json, written by meridiand
// (NodeState). Allocations live under <stateDir>/ipam/, one file per address
// named after it and holding the owning attachment, so they survive plugin
// crashes and reboots of meridiand alike. Every plugin process serialises on
// an flock(2) of <stateDir>/ipam/lock, so concurrent ADDs from separate
// processes never pick the same address.
package ipam

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	// DirName is the allocation directory inside the state directory.
	DirName = "ipam"

	lockFile   = "lock"
	cursorFile = "last-reserved"
	tmpPrefix  = ".tmp-"
)

// ErrExhausted means every usable address of the pool is allocated.
var ErrExhausted = errors.New("no free address")

// Attachment identifies one pod interface: the runtime's container ID and
// the interface name inside the container (the CNI spec's attachment key).
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// Allocation is one reserved address. Attachment is zero when the file on
// disk could not be decoded; the address then still counts as used.
type Allocation struct {
	Addr netip.Addr
	Attachment
}

// Store is the on-disk allocation state under <stateDir>/ipam.
type Store struct {
	dir string
}

// NewStore returns the store under stateDir; it touches nothing on disk
// until the first operation.
func NewStore(stateDir string) *Store {
	return &Store{dir: filepath.Join(stateDir, DirName)}
}

// Dir is the directory holding the allocation files.
func (s *Store) Dir() string { return s.dir }

// Allocate reserves an address of pool for a. If a already holds an address
// inside pool (a repeated ADD, or an ADD retried after the plugin crashed
// half-way) that address is returned with fresh=false, so the caller knows
// not to release it should this ADD fail. A reservation a holds outside pool
// is left over from an earlier pod CIDR and is dropped.
func (s *Store) Allocate(pool netip.Prefix, a Attachment) (addr netip.Addr, fresh bool, err error) {
	if !pool.IsValid() || !pool.Addr().Is4() {
		return netip.Addr{}, false, fmt.Errorf("pool %s is not an IPv4 prefix", pool)
	}
	pool = pool.Masked()
	if a.ContainerID == "" {
		return netip.Addr{}, false, errors.New("allocate: empty container ID")
	}
	unlock, err := s.lock()
	if err != nil {
		return netip.Addr{}, false, err
	}
	defer unlock()

	allocs, err := s.list(true)
	if err != nil {
		return netip.Addr{}, false, err
	}
	used := make(map[netip.Addr]bool, len(allocs))
	for _, al := range allocs {
		if al.Attachment == a {
			if pool.Contains(al.Addr) {
				return al.Addr, false, nil
			}
			if err := s.remove(al.Addr); err != nil {
				return netip.Addr{}, false, err
			}
			continue
		}
		used[al.Addr] = true
	}

	cursor := s.readCursor()
	for {
		cand, ok := Next(pool, used, cursor)
		if !ok {
			return netip.Addr{}, false, fmt.Errorf("%w in %s", ErrExhausted, pool)
		}
		err := s.reserve(cand, a)
		if errors.Is(err, fs.ErrExist) {
			// Only a writer that ignores the lock gets here; never hand out
			// an address whose file exists.
			used[cand] = true
			continue
		}
		if err != nil {
			return netip.Addr{}, false, err
		}
		if err := s.writeCursor(cand); err != nil {
			return netip.Addr{}, false, errors.Join(err, s.remove(cand))
		}
		return cand, true, nil
	}
}

// Lookup returns the address a holds, if any.
func (s *Store) Lookup(a Attachment) (netip.Addr, bool, error) {
	unlock, err := s.lock()
	if err != nil {
		return netip.Addr{}, false, err
	}
	defer unlock()
	allocs, err := s.list(false)
	if err != nil {
		return netip.Addr{}, false, err
	}
	for _, al := range allocs {
		if al.Attachment == a {
			return al.Addr, true, nil
		}
	}
	return netip.Addr{}, false, nil
}

// Release frees every address held by a container: all of its interfaces
// when a.IfName is empty, else only that one. Releasing what is not held is
// not an error, so DEL can be repeated.
func (s *Store) Release(a Attachment) ([]netip.Addr, error) {
	if a.ContainerID == "" {
		return nil, errors.New("release: empty container ID")
	}
	freed, err := s.releaseWhere(func(al Allocation) bool {
		return al.ContainerID == a.ContainerID && (a.IfName == "" || al.IfName == a.IfName)
	})
	addrs := make([]netip.Addr, 0, len(freed))
	for _, al := range freed {
		addrs = append(addrs, al.Addr)
	}
	return addrs, err
}

// GC frees every allocation whose attachment is not in valid (the CNI 1.1
// GC command's cni.dev/valid-attachments), including unreadable files, and
// returns what it freed.
func (s *Store) GC(valid []Attachment) ([]Allocation, error) {
	keep := make(map[Attachment]bool, len(valid))
	for _, a := range valid {
		keep[a] = true
	}
	return s.releaseWhere(func(al Allocation) bool { return !keep[al.Attachment] })
}

// List returns every allocation on disk, whatever the current pool.
func (s *Store) List() ([]Allocation, error) {
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.list(false)
}

func (s *Store) releaseWhere(match func(Allocation) bool) ([]Allocation, error) {
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	allocs, err := s.list(false)
	if err != nil {
		return nil, err
	}
	var freed []Allocation
	var errs []error
	for _, al := range allocs {
		if !match(al) {
			continue
		}
		if err := s.remove(al.Addr); err != nil {
			errs = append(errs, err)
			continue
		}
		freed = append(freed, al)
	}
	return freed, errors.Join(errs...)
}

// lock takes the cross-process lock. flock locks belong to the open file
// description, so goroutines of one process exclude each other too, and the
// kernel drops the lock when a plugin process dies holding it.
func (s *Store) lock() (func(), error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create ipam dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(s.dir, lockFile), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open ipam lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock ipam store: %w", err)
	}
	// Closing the descriptor releases the flock.
	return func() { f.Close() }, nil
}

// list reads every allocation file. With sweep, temporary files are removed:
// under the lock nobody is writing one, so any found was left by a crash.
func (s *Store) list(sweep bool) ([]Allocation, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list ipam dir: %w", err)
	}
	var out []Allocation
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, tmpPrefix) {
			if sweep {
				_ = os.Remove(filepath.Join(s.dir, name))
			}
			continue
		}
		addr, err := netip.ParseAddr(name)
		if err != nil {
			continue // lock, cursor
		}
		al := Allocation{Addr: addr}
		if b, err := os.ReadFile(filepath.Join(s.dir, name)); err == nil {
			// An undecodable file keeps a zero attachment: the address stays
			// used, since handing it out twice is worse than leaking it.
			_ = json.Unmarshal(b, &al.Attachment)
		}
		out = append(out, al)
	}
	return out, nil
}

// reserve creates the file for addr holding a. The content is written to a
// temporary file first and then hard-linked into place: link(2) fails with
// EEXIST like O_EXCL, but the file appears complete or not at all, so a crash
// never leaves a reservation that cannot be traced to its container.
//
// Nothing is fsynced: the reservations only have to outlive a plugin crash,
// which the page cache guarantees; after a power cut every pod is gone and
// the runtime's DEL or GC frees what was left.
func (s *Store) reserve(addr netip.Addr, a Attachment) error {
	b, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("encode reservation: %w", err)
	}
	f, err := os.CreateTemp(s.dir, tmpPrefix+"*")
	if err != nil {
		return fmt.Errorf("reserve %s: %w", addr, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, werr := f.Write(b)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("reserve %s: %w", addr, err)
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return fmt.Errorf("reserve %s: %w", addr, err)
	}
	if err := os.Link(tmp, filepath.Join(s.dir, addr.String())); err != nil {
		return fmt.Errorf("reserve %s: %w", addr, err)
	}
	return nil
}

func (s *Store) remove(addr netip.Addr) error {
	err := os.Remove(filepath.Join(s.dir, addr.String()))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("release %s: %w", addr, err)
	}
	return nil
}

// readCursor returns the last address handed out; an unreadable cursor
// only means allocation starts from the bottom of the pool.
func (s *Store) readCursor() netip.Addr {
	b, err := os.ReadFile(filepath.Join(s.dir, cursorFile))
	if err != nil {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(b)))
	if err != nil {
		return netip.Addr{}
	}
	return a
}

func (s *Store) writeCursor(a netip.Addr) error {
	path := filepath.Join(s.dir, cursorFile)
	tmp := filepath.Join(s.dir, tmpPrefix+cursorFile)
	if err := os.WriteFile(tmp, []byte(a.String()+"\n"), 0o644); err != nil {
		return fmt.Errorf("write cursor: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write cursor: %w", err)
	}
	return nil
}

// Next picks the address to hand out: the first usable address of pool after
// cursor that is not in used, wrapping around, so a just-released address is
// not reused at once (a stale conntrack entry or peer ARP cache may still
// point at it). The network and broadcast addresses are never usable; in a
// /31 or /32 every address is (RFC 3021). A cursor outside pool starts the
// search at the bottom. Used addresses outside pool do not matter.
func Next(pool netip.Prefix, used map[netip.Addr]bool, cursor netip.Addr) (netip.Addr, bool) {
	first, last, ok := usableRange(pool)
	if !ok {
		return netip.Addr{}, false
	}
	start := first
	if cursor.Is4() && pool.Contains(cursor) {
		c := v4(cursor)
		if c >= first && c < last {
			start = c + 1
		}
	}
	size := uint64(last-first) + 1
	for i := uint64(0); i < size; i++ {
		n := uint64(start-first) + i
		cand := addrFrom(first + uint32(n%size))
		if !used[cand] {
			return cand, true
		}
	}
	return netip.Addr{}, false
}

// Usable counts the addresses of pool that Next can hand out.
func Usable(pool netip.Prefix) int {
	first, last, ok := usableRange(pool)
	if !ok {
		return 0
	}
	return int(last-first) + 1
}

func usableRange(pool netip.Prefix) (first, last uint32, ok bool) {
	if !pool.IsValid() || !pool.Addr().Is4() {
		return 0, 0, false
	}
	pool = pool.Masked()
	bits := pool.Bits()
	base := v4(pool.Addr())
	hostMask := uint32(1)<<(32-bits) - 1
	if bits == 0 {
		hostMask = ^uint32(0)
	}
	first, last = base, base|hostMask
	if bits <= 30 {
		first, last = first+1, last-1
	}
	return first, last, true
}

func v4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addrFrom(u uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}
