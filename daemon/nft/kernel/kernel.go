// Package kernel is the real nft.Conn: it programs table inet meridian in
// one network namespace through github.com/google/nftables over netlink,
// never through the nft binary, and touches no other table.
package kernel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/daemon/nft"
)

// udataRuleText is the rule userdata type under which Meridian stores the
// rule's text (nft.Rule.Text) so Dump can read the model back without
// decompiling expressions. nft ignores userdata types it does not know
// (it only reads comment and ebtables policy), so `nft list` is unaffected.
const udataRuleText userdata.Type = 0x6d

// maxUserdata is the kernel's NFT_USERDATA_MAXLEN for a rule.
const maxUserdata = 256

// Conn programs table inet meridian in the namespace of a netns fd.
type Conn struct {
	netnsFd int
	log     *slog.Logger
	mu      sync.Mutex // one transaction at a time
}

var _ nft.Conn = (*Conn)(nil)

// New returns a Conn for the network namespace open as netnsFd (0 means
// the caller's namespace). The caller keeps the fd open while using Conn.
// New does no IO.
func New(netnsFd int, log *slog.Logger) *Conn {
	return &Conn{netnsFd: netnsFd, log: log}
}

func (c *Conn) table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: nft.TableName}
}

// sockBuffers sizes a netlink socket for a batch of ops operations. The
// whole batch goes out in one sendmsg, which fails with EMSGSIZE beyond the
// send buffer (212992 bytes by default: about 2k ops), and every message
// is acknowledged, so the receive buffer must hold ops acks or the kernel
// drops them (ENOBUFS). nft does the same (mnl_set_sndbuffer); the FORCE
// variants need CAP_NET_ADMIN, which programming nftables needs anyway.
func sockBuffers(ops int) nftables.SockOption {
	return func(nc *netlink.Conn) error {
		raw, err := nc.SyscallConn()
		if err != nil {
			return fmt.Errorf("netlink socket buffers: %w", err)
		}
		size := min(max(ops*1024, 1<<20), 1<<30)
		var serr error
		err = raw.Control(func(fd uintptr) {
			for _, opt := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
				if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[0], size); e != nil {
					// Without CAP_NET_ADMIN: as much as net.core.[rw]mem_max allows.
					serr = errors.Join(serr, unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[1], size))
				}
			}
		})
		if err != nil {
			return fmt.Errorf("netlink socket buffers: %w", err)
		}
		if serr != nil {
			return fmt.Errorf("netlink socket buffers: %w", serr)
		}
		return nil
	}
}

func (c *Conn) nftConn(opts ...nftables.ConnOption) (*nftables.Conn, error) {
	if c.netnsFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(c.netnsFd))
	}
	nc, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink: %w", err)
	}
	return nc, nil
}

var hooks = map[string]nftables.ChainHook{
	nft.HookPrerouting:  *nftables.ChainHookPrerouting,
	nft.HookInput:       *nftables.ChainHookInput,
	nft.HookForward:     *nftables.ChainHookForward,
	nft.HookOutput:      *nftables.ChainHookOutput,
	nft.HookPostrouting: *nftables.ChainHookPostrouting,
}

// Apply sends tx as one netlink batch: the kernel commits all of it or, on
// any error, none of it.
func (c *Conn) Apply(tx nft.Transaction) error {
	if tx.Empty() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		// Rendering a full sync costs as much as sending it; only when asked.
		c.log.Debug("apply nft transaction", "subsys", "nft", "ops", tx.Ops(), "tx", tx.String())
	}

	nc, err := c.nftConn(nftables.WithSockOptions(sockBuffers(tx.Ops())))
	if err != nil {
		return err
	}
	tbl := c.table()
	chainRef := func(name string) *nftables.Chain { return &nftables.Chain{Name: name, Table: tbl} }
	setIDs := map[string]uint32{}

	if tx.DeleteTable {
		nc.DelTable(tbl)
	}
	if !tx.OnlyDeletesTable() {
		// NEWTABLE without NLM_F_EXCL: creates the table if missing, leaves
		// an existing one (and everything in it) alone.
		nc.AddTable(tbl)
	}
	for _, ch := range tx.AddChains {
		kc := chainRef(ch.Name)
		if ch.Base() {
			h, ok := hooks[ch.Hook]
			if !ok {
				return fmt.Errorf("apply nft transaction: chain %s: unknown hook %q", ch.Name, ch.Hook)
			}
			prio := nftables.ChainPriority(ch.Priority)
			accept := nftables.ChainPolicyAccept
			kc.Type, kc.Hooknum, kc.Priority, kc.Policy = nftables.ChainType(ch.Type), &h, &prio, &accept
		}
		nc.AddChain(kc)
	}
	for _, op := range tx.DeleteElements {
		s, err := setRef(tbl, op.Name, op.KeyType, op.DataType, op.Interval)
		if err != nil {
			return fmt.Errorf("apply nft transaction: %w", err)
		}
		els, err := encodeElements(op, false)
		if err != nil {
			return fmt.Errorf("apply nft transaction: delete elements of %s: %w", op.Name, err)
		}
		for _, part := range chunks(els) {
			if err := nc.SetDeleteElements(s, part); err != nil {
				return fmt.Errorf("apply nft transaction: delete elements of %s: %w", op.Name, err)
			}
		}
	}
	for _, name := range tx.FlushChains {
		nc.FlushChain(chainRef(name))
	}
	for _, name := range tx.DeleteSets {
		nc.DelSet(&nftables.Set{Table: tbl, Name: name})
	}
	addSet := func(name string, kt, dt []nft.DataType, interval bool, elems []nft.Element, dynamic bool, timeout time.Duration) error {
		s, err := setRef(tbl, name, kt, dt, interval)
		if err != nil {
			return err
		}
		// Dynamic: NFT_SET_EVAL, a set rules may add to (dynset). Timeout:
		// NFT_SET_TIMEOUT and the lifetime the kernel gives each element
		// added without one of its own.
		s.Dynamic, s.HasTimeout, s.Timeout = dynamic, timeout > 0, timeout
		els, err := encodeElements(nft.ElementOp{Name: name, KeyType: kt, DataType: dt, Interval: interval, Elements: elems}, true)
		if err != nil {
			return fmt.Errorf("elements of %s: %w", name, err)
		}
		if err := nc.AddSet(s, nil); err != nil {
			return fmt.Errorf("add set %s: %w", name, err)
		}
		setIDs[name] = s.ID
		for _, part := range chunks(els) {
			if err := nc.SetAddElements(s, part); err != nil {
				return fmt.Errorf("add elements to %s: %w", name, err)
			}
		}
		return nil
	}
	for _, s := range tx.AddSets {
		els := s.Elements
		if s.Dynamic {
			els = nil // see nft.Set: only the packet path fills it
		}
		if err := addSet(s.Name, s.KeyType, nil, s.Interval, els, s.Dynamic, s.Timeout); err != nil {
			return fmt.Errorf("apply nft transaction: %w", err)
		}
	}
	// Map elements go after the rules. Each element added to a map is
	// checked against every rule that looks the map up, and a rule that
	// starts looking a map up walks every element already there: either
	// order costs elements × lookup rules, but the per-rule walk of a hash
	// costs several times more than the per-element list of lookups
	// (services-endpoints at 10k Services: 100k elements × 10k rules).
	addLater := slices.Clone(tx.AddElements)
	for _, m := range tx.AddMaps {
		if err := addSet(m.Name, m.KeyType, m.DataType, false, nil, m.Dynamic, m.Timeout); err != nil {
			return fmt.Errorf("apply nft transaction: %w", err)
		}
		if !m.Dynamic && len(m.Elements) > 0 { // see nft.Map: only the packet path fills a dynamic one
			addLater = append(addLater, nft.ElementOp{Name: m.Name, KeyType: m.KeyType, DataType: m.DataType, Elements: m.Elements})
		}
	}
	for _, ch := range tx.FillChains {
		for _, r := range ch.Rules {
			exprs, err := renderRule(r, setIDs)
			if err != nil {
				return fmt.Errorf("apply nft transaction: chain %s: rule %q: %w", ch.Name, r, err)
			}
			ud := userdata.Append(nil, udataRuleText, []byte(r.Text()))
			if r.Comment != "" {
				ud = userdata.AppendString(ud, userdata.TypeComment, r.Comment)
			}
			if len(r.Text()) > 255 || len(ud) > maxUserdata {
				// The text is how Dump reads the rule back; without it
				// every sync would see a difference and rewrite the chain.
				return fmt.Errorf("apply nft transaction: chain %s: rule %q: text and comment exceed %d bytes of rule userdata", ch.Name, r, maxUserdata)
			}
			nc.AddRule(&nftables.Rule{Table: tbl, Chain: chainRef(ch.Name), Exprs: exprs, UserData: ud})
		}
	}
	for _, op := range addLater {
		s, err := setRef(tbl, op.Name, op.KeyType, op.DataType, op.Interval)
		if err != nil {
			return fmt.Errorf("apply nft transaction: %w", err)
		}
		els, err := encodeElements(op, true)
		if err != nil {
			return fmt.Errorf("apply nft transaction: add elements to %s: %w", op.Name, err)
		}
		for _, part := range chunks(els) {
			if err := nc.SetAddElements(s, part); err != nil {
				return fmt.Errorf("apply nft transaction: add elements to %s: %w", op.Name, err)
			}
		}
	}
	for _, name := range tx.DeleteChains {
		nc.DelChain(chainRef(name))
	}
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("apply nft transaction (%d ops): %w", tx.Ops(), err)
	}
	return nil
}

// chunks splits elements so that each NEWSETELEM/DELSETELEM message stays
// under the 64 KiB a netlink attribute length can express: the element list
// is one nested attribute, and a longer one wraps its u16 length and is
// silently truncated by the kernel (seen: 637 of 10k elements kept).
func chunks(els []nftables.SetElement) [][]nftables.SetElement {
	const limit = 48 << 10
	var out [][]nftables.SetElement
	start, size := 0, 0
	for i, e := range els {
		n := 64 + len(e.Key) + len(e.Val) + len(e.KeyEnd)
		if e.VerdictData != nil {
			n += len(e.VerdictData.Chain)
		}
		if size+n > limit && i > start {
			out = append(out, els[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(els) {
		out = append(out, els[start:])
	}
	return out
}

func setRef(tbl *nftables.Table, name string, kt, dt []nft.DataType, interval bool) (*nftables.Set, error) {
	k, err := setType(kt)
	if err != nil {
		return nil, fmt.Errorf("set %s key: %w", name, err)
	}
	s := &nftables.Set{Table: tbl, Name: name, KeyType: k, Interval: interval,
		// The concat flag makes google/nftables send the field lengths,
		// which nft needs to print a concatenated key.
		Concatenation: len(kt) > 1 && interval}
	if len(kt) == 1 && kt[0] == nft.TypeMark {
		// Marks are host byte order; the userdata tells nft so when it
		// prints them (the kernel compares bytes either way).
		s.KeyByteOrder = binaryutil.NativeEndian
	}
	if len(dt) > 0 {
		d, err := setType(dt)
		if err != nil {
			return nil, fmt.Errorf("map %s data: %w", name, err)
		}
		s.IsMap, s.DataType = true, d
	}
	return s, nil
}

// Dump reads table inet meridian back: chains with their rules, sets and
// maps with their elements. A missing table is an empty Table.
//
// It takes one dump per chain, set and map (see listChainRules), and so
// checks that the ruleset generation is the same before and after: if a
// transaction committed in between (someone else edited the namespace's
// ruleset), the parts might not fit together, and it reads again.
func (c *Conn) Dump() (nft.Table, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	conn, err := dialDump(c.netnsFd)
	if err != nil {
		return nft.Table{}, fmt.Errorf("dump nft table: %w", err)
	}
	defer conn.Close()
	const attempts = 3
	for range attempts {
		before, err := genID(conn)
		if err != nil {
			return nft.Table{}, fmt.Errorf("dump nft table: %w", err)
		}
		t, err := c.dumpTable(conn)
		if err != nil {
			return nft.Table{}, fmt.Errorf("dump nft table: %w", err)
		}
		after, err := genID(conn)
		if err != nil {
			return nft.Table{}, fmt.Errorf("dump nft table: %w", err)
		}
		if before == after {
			return t, nil
		}
	}
	return nft.Table{}, fmt.Errorf("dump nft table: the ruleset changed during each of %d reads", attempts)
}

// dumpTable is one read of the table for Dump.
func (c *Conn) dumpTable(conn *netlink.Conn) (nft.Table, error) {
	var out nft.Table
	chains, err := listChains(conn)
	if err != nil {
		return nft.Table{}, err
	}
	if len(chains) == 0 {
		// The chain dump names no missing table; the set dump does.
		if _, err := listSets(conn); errors.Is(err, unix.ENOENT) {
			return nft.Table{}, nil
		}
	}
	names := make([]string, len(chains))
	for i, kc := range chains {
		names[i] = kc.name
	}
	rules, err := listChainRules(conn, names, false)
	if err != nil {
		return nft.Table{}, err
	}
	out.Chains = make([]nft.Chain, 0, len(chains))
	for i, kc := range chains {
		krs := rules[i]
		ch := nft.Chain{Name: kc.name}
		if len(krs) > 0 {
			ch.Rules = make([]nft.Rule, len(krs))
			for i, kr := range krs {
				ch.Rules[i] = ruleFromKernel(kr)
			}
		}
		if kc.hook != nil {
			ch.Type = kc.typ
			for name, h := range hooks {
				if uint32(h) == *kc.hook {
					ch.Hook = name
				}
			}
			ch.Priority = int(kc.priority)
		}
		out.Chains = append(out.Chains, ch)
	}

	sets, err := listSets(conn)
	if err != nil {
		return nft.Table{}, err
	}
	for _, s := range sets {
		if s.anonymous {
			continue
		}
		if s.dynamic {
			// What the packet path learned (session affinity) is not part
			// of the model: returning it would make Plan delete it.
			if s.isMap {
				out.Maps = append(out.Maps, nft.Map{Name: s.name, KeyType: s.keyType, DataType: s.dataType, Dynamic: true, Timeout: s.timeout})
			} else {
				out.Sets = append(out.Sets, nft.Set{Name: s.name, KeyType: s.keyType, Interval: s.interval, Dynamic: true, Timeout: s.timeout})
			}
			continue
		}
		kels, err := c.listElements(conn, s.name)
		if err != nil {
			return nft.Table{}, err
		}
		els, err := decodeElements(s, kels)
		if err != nil {
			return nft.Table{}, fmt.Errorf("elements of %s: %w", s.name, err)
		}
		if s.isMap {
			out.Maps = append(out.Maps, nft.Map{Name: s.name, KeyType: s.keyType, DataType: s.dataType, Elements: els})
		} else {
			out.Sets = append(out.Sets, nft.Set{Name: s.name, KeyType: s.keyType, Interval: s.interval, Timeout: s.timeout, Elements: els})
		}
	}
	return out.Sorted(), nil
}

// Counters reads the counter of every rule of table inet meridian that has
// one, in one netlink dump: Index is the rule's position in its chain and
// Comment its model comment, which is how callers tell rules apart. A
// missing table has no counters.
func (c *Conn) Counters() ([]nft.RuleCounter, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Large datagrams: the kernel restarts its walk for every one.
	conn, err := dialDump(c.netnsFd)
	if err != nil {
		return nil, fmt.Errorf("read nft counters: %w", err)
	}
	defer conn.Close()
	rules, err := listRules(conn)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read nft counters: %w", err)
	}
	var out []nft.RuleCounter
	index := map[string]int{}
	for _, kr := range rules {
		i := index[kr.chain]
		index[kr.chain]++
		if !kr.counter {
			continue
		}
		comment, _ := userdata.GetString(kr.userData, userdata.TypeComment)
		out = append(out, nft.RuleCounter{Chain: kr.chain, Index: i, Comment: comment, Packets: kr.packets, Bytes: kr.bytes})
	}
	return out, nil
}

// ruleFromKernel reads the model back from the rule's userdata. A rule
// Meridian did not write (or could not parse) comes back as a rule with
// only a comment saying so, which never equals a desired rule, so the next
// Plan rewrites its chain.
func ruleFromKernel(kr krule) nft.Rule {
	text, ok := userdata.GetString(kr.userData, udataRuleText)
	comment, _ := userdata.GetString(kr.userData, userdata.TypeComment)
	if !ok {
		return nft.Rule{Comment: fmt.Sprintf("foreign rule handle %d", kr.handle)}
	}
	r, err := nft.ParseRule(text)
	if err != nil {
		return nft.Rule{Comment: fmt.Sprintf("unparsable rule handle %d: %v", kr.handle, err)}
	}
	r.Comment = comment
	return r
}

type setInfo struct {
	name      string
	anonymous bool
	interval  bool
	isMap     bool
	dynamic   bool
	timeout   time.Duration
	keyType   []nft.DataType
	dataType  []nft.DataType
}

// listSets dumps the sets of table inet meridian with a raw NFT_MSG_GETSET:
// google/nftables v0.3.0 GetSets overwrites a verdict map's key type with
// "verdict" (setsFromMsg), losing the key Meridian needs to read back.
func listSets(conn *netlink.Conn) ([]setInfo, error) {
	msgs, err := dump(conn, unix.NFT_MSG_GETSET, netlink.Attribute{Type: unix.NFTA_SET_TABLE, Data: []byte(nft.TableName + "\x00")})
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	var out []setInfo
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("list sets: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		var s setInfo
		var table string
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_SET_TABLE:
				table = ad.String()
			case unix.NFTA_SET_NAME:
				s.name = ad.String()
			case unix.NFTA_SET_FLAGS:
				f := ad.Uint32()
				s.anonymous = f&unix.NFT_SET_ANONYMOUS != 0
				s.interval = f&unix.NFT_SET_INTERVAL != 0
				s.isMap = f&unix.NFT_SET_MAP != 0
				s.dynamic = f&unix.NFT_SET_EVAL != 0
			case unix.NFTA_SET_TIMEOUT:
				s.timeout = time.Duration(ad.Uint64()) * time.Millisecond
			case unix.NFTA_SET_KEY_TYPE:
				s.keyType, err = typesFromMagic(ad.Uint32())
			case unix.NFTA_SET_DATA_TYPE:
				if v := ad.Uint32(); v == unix.NFT_DATA_VERDICT {
					s.dataType = []nft.DataType{nft.TypeVerdict}
				} else {
					s.dataType, err = typesFromMagic(v)
				}
			}
			if err != nil {
				return nil, fmt.Errorf("list sets: set %s: %w", s.name, err)
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("list sets: %w", err)
		}
		if table == nft.TableName {
			out = append(out, s)
		}
	}
	return out, nil
}

func decodeElements(s setInfo, kels []kelem) ([]nft.Element, error) {
	if s.interval {
		return decodeIntervals(kels)
	}
	var out []nft.Element
	for _, ke := range kels {
		k, err := nft.DecodeKey(s.keyType, ke.key)
		if err != nil {
			return nil, err
		}
		e := nft.Element{Key: k}
		if s.isMap {
			if len(s.dataType) == 1 && s.dataType[0] == nft.TypeVerdict {
				e.Value = ke.verdict
			} else {
				e.Value, err = nft.DecodeKey(s.dataType, ke.val)
			}
			if err != nil {
				return nil, fmt.Errorf("element %s: %w", k, err)
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// decodeVerdict parses the nested NFTA_VERDICT_CODE / NFTA_VERDICT_CHAIN
// attributes that google/nftables hands back as a map element's value.
func decodeVerdict(b []byte) (string, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "", err
	}
	ad.ByteOrder = binary.BigEndian
	var code int32
	var chain string
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			code = int32(ad.Uint32())
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	if err := ad.Err(); err != nil {
		return "", err
	}
	return verdictString(code, chain)
}

// decodeIntervals pairs each start element with the end element that
// follows it in address order.
func decodeIntervals(kels []kelem) ([]nft.Element, error) {
	type bound struct {
		a   netip.Addr
		end bool
	}
	var bs []bound
	for _, ke := range kels {
		if len(ke.key) != 4 {
			return nil, errors.New("interval element is not an ipv4 address")
		}
		bs = append(bs, bound{netip.AddrFrom4([4]byte(ke.key)), ke.intervalEnd})
	}
	slices.SortFunc(bs, func(x, y bound) int {
		if c := x.a.Compare(y.a); c != 0 {
			return c
		}
		// An end at X sorts before a start at X (adjacent intervals).
		if x.end == y.end {
			return 0
		}
		if x.end {
			return -1
		}
		return 1
	})
	var out []nft.Element
	for i := 0; i < len(bs); i++ {
		if bs[i].end {
			continue
		}
		start, end := bs[i].a, netip.Addr{}
		if i+1 < len(bs) && bs[i+1].end {
			end = bs[i+1].a
			i++
		}
		out = append(out, nft.Element{Key: nft.IntervalKey(start, end)})
	}
	return out, nil
}
