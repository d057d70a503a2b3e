package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/meridian-net/meridian/daemon/nft"
)

// kelem is one kernel set element as dumped.
type kelem struct {
	key, val    []byte
	verdict     string
	intervalEnd bool
}

// listElements dumps a set's elements with a raw NFT_MSG_GETSETELEM on the
// connection Dump already holds, decoding verdict values directly (google/
// nftables hands them back as undecoded nested attributes).
func (c *Conn) listElements(conn *netlink.Conn, set string) ([]kelem, error) {
	msgs, err := dump(conn, unix.NFT_MSG_GETSETELEM,
		netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(nft.TableName + "\x00")},
		netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(set + "\x00")},
	)
	if err != nil {
		return nil, fmt.Errorf("list elements of %s: %w", set, err)
	}
	var out []kelem
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				continue
			}
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					var e kelem
					list.Nested(func(el *netlink.AttributeDecoder) error {
						el.ByteOrder = binary.BigEndian
						for el.Next() {
							switch el.Type() {
							case unix.NFTA_SET_ELEM_KEY:
								el.Nested(func(d *netlink.AttributeDecoder) error {
									for d.Next() {
										if d.Type() == unix.NFTA_DATA_VALUE {
											e.key = d.Bytes()
										}
									}
									return nil
								})
							case unix.NFTA_SET_ELEM_DATA:
								el.Nested(func(d *netlink.AttributeDecoder) error {
									for d.Next() {
										switch d.Type() {
										case unix.NFTA_DATA_VALUE:
											e.val = d.Bytes()
										case unix.NFTA_DATA_VERDICT:
											v, err := decodeVerdict(d.Bytes())
											if err != nil {
												return err
											}
											e.verdict = v
										}
									}
									return nil
								})
							case unix.NFTA_SET_ELEM_FLAGS:
								e.intervalEnd = el.Uint32()&unix.NFT_SET_ELEM_INTERVAL_END != 0
							}
						}
						return nil
					})
					out = append(out, e)
				}
				return nil
			})
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("list elements of %s: %w", set, err)
		}
	}
	return out, nil
}

// krule is one kernel rule as dumped: only what Dump and Counters read
// back.
type krule struct {
	chain    string
	handle   uint64
	userData []byte
	counter  bool // the rule has a counter expression
	packets  uint64
	bytes    uint64
}

// dumpBuffer is the receive buffer for dumps. The kernel sizes each dump
// datagram by the largest buffer the socket has been read with, up to
// 32 KiB (netlink_recvmsg, max_recvmsg_len); mdlayher/netlink by default
// reads each datagram into a buffer of exactly its peeked size, which keeps
// the kernel at NLMSG_GOODSIZE (3.7 KiB). nf_tables resumes a dump by
// walking the table from its start to where the last datagram ended, so
// nine times as many datagrams means nine times as many walks.
const dumpBuffer = 32 << 10

// dialDump opens the netfilter netlink socket Dump reads through.
func dialDump(netnsFd int) (*netlink.Conn, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFd, MessageBufferSize: dumpBuffer})
	if err != nil {
		return nil, fmt.Errorf("dial netlink: %w", err)
	}
	return conn, nil
}

// kchain is one chain of table inet meridian as dumped.
type kchain struct {
	name     string
	typ      string
	hook     *uint32 // nil for a regular chain
	priority int32
}

// listChains dumps the chains of table inet meridian, in the kernel's
// order, with one NFT_MSG_GETCHAIN request.
func listChains(conn *netlink.Conn) ([]kchain, error) {
	msgs, err := dump(conn, unix.NFT_MSG_GETCHAIN, netlink.Attribute{Type: unix.NFTA_CHAIN_TABLE, Data: []byte(nft.TableName + "\x00")})
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	out := make([]kchain, 0, len(msgs))
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("list chains: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		var c kchain
		var table string
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_CHAIN_TABLE:
				table = ad.String()
			case unix.NFTA_CHAIN_NAME:
				c.name = ad.String()
			case unix.NFTA_CHAIN_TYPE:
				c.typ = ad.String()
			case unix.NFTA_CHAIN_HOOK:
				ad.Nested(func(h *netlink.AttributeDecoder) error {
					h.ByteOrder = binary.BigEndian
					for h.Next() {
						switch h.Type() {
						case unix.NFTA_HOOK_HOOKNUM:
							n := h.Uint32()
							c.hook = &n
						case unix.NFTA_HOOK_PRIORITY:
							c.priority = int32(h.Uint32())
						}
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("list chains: %w", err)
		}
		if table == nft.TableName {
			out = append(out, c)
		}
	}
	return out, nil
}

// listRules dumps every rule of table inet meridian, in chain order.
func listRules(conn *netlink.Conn) ([]krule, error) {
	chains, err := listChains(conn)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(chains))
	for i, c := range chains {
		names[i] = c.name
	}
	byChain, err := listChainRules(conn, names, true)
	if err != nil {
		return nil, err
	}
	var out []krule
	for _, rs := range byChain {
		out = append(out, rs...)
	}
	return out, nil
}

// listChainRules dumps the rules of each of chains, in order: out[i] are
// the rules of chains[i]. Only with counters does it decode the rules'
// expressions for their counter values (a third of the decoding time).
//
// One dump per chain, not one for the table: the kernel resumes a
// table-wide rule dump (nf_tables_dump_rules) by walking every chain and
// rule before the point it stopped at, once per datagram, which made
// reading 10k Services' 110k chains take minutes, while a dump naming its
// chain finds it in the chain hash table and walks only that chain.
//
// With a dump per chain the cost is the round trips, so they skip
// mdlayher/netlink's Execute (netpoller, per-message allocation, 4-5x the
// syscall time) and talk to the socket directly: the kernel answers a dump
// request inside sendmsg and continues it inside recvmsg, so every answer
// is already queued when read.
func listChainRules(conn *netlink.Conn, chains []string, counters bool) ([][]krule, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	out := make([][]krule, len(chains))
	var rerr error
	err = raw.Control(func(fd uintptr) {
		buf := make([]byte, dumpBuffer)
		var req []byte
		for i, chain := range chains {
			req = ruleDumpRequest(req[:0], chain, uint32(i+1))
			if err := unix.Sendto(int(fd), req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
				rerr = fmt.Errorf("list rules of chain %s: send: %w", chain, err)
				return
			}
			rules, err := readRuleDump(int(fd), buf, chain, uint32(i+1), counters)
			if err != nil {
				rerr = fmt.Errorf("list rules of chain %s: %w", chain, err)
				return
			}
			out[i] = rules
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	return out, rerr
}

// ruleDumpRequest appends an NFT_MSG_GETRULE dump request for one chain of
// table inet meridian to b.
func ruleDumpRequest(b []byte, chain string, seq uint32) []byte {
	attr := func(b []byte, typ uint16, s string) []byte {
		n := unix.NLA_HDRLEN + len(s) + 1
		b = binary.NativeEndian.AppendUint16(b, uint16(n))
		b = binary.NativeEndian.AppendUint16(b, typ)
		b = append(b, s...)
		b = append(b, 0)
		for range nlaAlign(n) - n {
			b = append(b, 0)
		}
		return b
	}
	start := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0) // length, set below
	b = binary.NativeEndian.AppendUint16(b, unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETRULE)
	b = binary.NativeEndian.AppendUint16(b, unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // the kernel routes by socket
	b = append(b, unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0)
	b = attr(b, unix.NFTA_RULE_TABLE, nft.TableName)
	b = attr(b, unix.NFTA_RULE_CHAIN, chain)
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

func nlaAlign(n int) int { return (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1) }

// dumpWait bounds the wait for a dump datagram the kernel should already
// have queued (see listChainRules).
const dumpWait = 5 * time.Second

// readRuleDump reads the answer to the rule dump request seq, up to its
// NLMSG_DONE, from the netlink socket fd.
func readRuleDump(fd int, buf []byte, chain string, seq uint32, counters bool) ([]krule, error) {
	var out []krule
	for {
		n, _, flags, _, err := unix.Recvmsg(fd, buf, nil, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if k, err := unix.Poll(pfd, int(dumpWait/time.Millisecond)); err != nil && !errors.Is(err, unix.EINTR) {
				return nil, fmt.Errorf("poll: %w", err)
			} else if k == 0 {
				return nil, fmt.Errorf("no answer within %v", dumpWait)
			}
			continue
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		if flags&unix.MSG_TRUNC != 0 {
			return nil, fmt.Errorf("receive: datagram longer than %d bytes", len(buf))
		}
		for b := buf[:n]; len(b) > 0; {
			if len(b) < unix.NLMSG_HDRLEN {
				return nil, errors.New("receive: short netlink message")
			}
			l := int(binary.NativeEndian.Uint32(b))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return nil, errors.New("receive: bad netlink message length")
			}
			m := netlink.Message{Header: netlink.Header{
				Length:   uint32(l),
				Type:     netlink.HeaderType(binary.NativeEndian.Uint16(b[4:])),
				Flags:    netlink.HeaderFlags(binary.NativeEndian.Uint16(b[6:])),
				Sequence: binary.NativeEndian.Uint32(b[8:]),
			}, Data: b[unix.NLMSG_HDRLEN:l]}
			b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
			if m.Header.Sequence != seq {
				return nil, fmt.Errorf("receive: answer to request %d, want %d", m.Header.Sequence, seq)
			}
			if m.Header.Flags&netlink.DumpInterrupted != 0 {
				return nil, errors.New("dump interrupted by a ruleset change")
			}
			switch m.Header.Type {
			case netlink.Done:
				return out, nil
			case netlink.Error:
				if len(m.Data) < 4 {
					return nil, errors.New("receive: short netlink error")
				}
				if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
					return nil, unix.Errno(-code)
				}
				return out, nil
			}
			r, table, err := decodeRule(m, counters)
			if err != nil {
				return nil, err
			}
			if table == nft.TableName && r.chain == chain {
				out = append(out, r)
			}
		}
	}
}

// decodeRule reads one NFT_MSG_NEWRULE message: the rule and its table,
// and with counters the rule's counter.
func decodeRule(m netlink.Message, counters bool) (krule, string, error) {
	var r krule
	var table string
	if len(m.Data) < 4 {
		return r, "", nil
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return r, "", fmt.Errorf("decode rule: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_TABLE:
			table = ad.String()
		case unix.NFTA_RULE_CHAIN:
			r.chain = ad.String()
		case unix.NFTA_RULE_HANDLE:
			r.handle = ad.Uint64()
		case unix.NFTA_RULE_USERDATA:
			r.userData = ad.Bytes()
		case unix.NFTA_RULE_EXPRESSIONS:
			if counters {
				ad.Nested(r.decodeCounter)
			}
		}
	}
	if err := ad.Err(); err != nil {
		return r, "", fmt.Errorf("decode rule: %w", err)
	}
	return r, table, nil
}

// decodeCounter finds the counter expression in a rule's expression list
// (NFTA_LIST_ELEM { NFTA_EXPR_NAME "counter", NFTA_EXPR_DATA { bytes,
// packets } }) and keeps its values.
func (r *krule) decodeCounter(list *netlink.AttributeDecoder) error {
	for list.Next() {
		list.Nested(func(e *netlink.AttributeDecoder) error {
			e.ByteOrder = binary.BigEndian
			var name string
			var data []byte
			for e.Next() {
				switch e.Type() {
				case unix.NFTA_EXPR_NAME:
					name = e.String()
				case unix.NFTA_EXPR_DATA:
					data = e.Bytes()
				}
			}
			if name != "counter" {
				return nil
			}
			d, err := netlink.NewAttributeDecoder(data)
			if err != nil {
				return err
			}
			d.ByteOrder = binary.BigEndian
			r.counter = true
			for d.Next() {
				switch d.Type() {
				case unix.NFTA_COUNTER_BYTES:
					r.bytes = d.Uint64()
				case unix.NFTA_COUNTER_PACKETS:
					r.packets = d.Uint64()
				}
			}
			return d.Err()
		})
	}
	return nil
}

// dump sends one nf_tables GET request with the dump flag for the inet
// family: the raw form of the listings google/nftables gets wrong or does
// one chain at a time.
func dump(conn *netlink.Conn, msgType uint16, attrs ...netlink.Attribute) ([]netlink.Message, error) {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	return conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, data...),
	})
}

// genID reads the ruleset generation, which every committed transaction
// in the namespace bumps: equal before and after a series of dumps means
// they all saw the same ruleset.
func genID(conn *netlink.Conn) (uint32, error) {
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			Flags: netlink.Request,
		},
		Data: []byte{unix.NFPROTO_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("read ruleset generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("read ruleset generation: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
		if err := ad.Err(); err != nil {
			return 0, fmt.Errorf("read ruleset generation: %w", err)
		}
	}
	return 0, fmt.Errorf("read ruleset generation: no generation in the answer")
}
