package kernel

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/meridian-net/meridian/daemon/nft"
)

// dnatMapTable is the Service shape without per-endpoint chains: one data
// map of endpoints keyed (target id . bucket) and one dynamic affinity map
// keyed (target id . client). Target 7 (10.96.0.10) only spreads; target
// 8 (10.96.0.11) first tries the client's recorded endpoint, else picks
// one and records it.
func dnatMapTable(eps map[string]string) nft.Table {
	var els []nft.Element
	for k, v := range eps {
		els = append(els, nft.Element{Key: k, Value: v})
	}
	tcpTo := func(addr string) []nft.Match {
		return []nft.Match{{Keys: []nft.Field{nft.IPDaddr}, Value: addr}, {Keys: []nft.Field{nft.L4Proto}, Value: "tcp"}}
	}
	client := []nft.Field{nft.Const(8), nft.IPSaddr}
	return nft.Table{
		Maps: []nft.Map{
			{Name: "eps", KeyType: []nft.DataType{nft.TypeMark, nft.TypeMark}, DataType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetService}, Elements: els},
			{Name: "aff", KeyType: []nft.DataType{nft.TypeMark, nft.TypeIPv4Addr}, DataType: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetService}, Dynamic: true, Timeout: time.Hour},
		},
		Chains: []nft.Chain{
			{Name: nft.ChainNATOutput, Type: nft.TypeNAT, Hook: nft.HookOutput, Priority: nft.PriorityDstNAT, Rules: []nft.Rule{
				{Match: tcpTo("10.96.0.10"), Action: nft.Action{Kind: nft.ActDNATMap, Keys: []nft.Field{nft.Const(7), nft.Numgen(2)}, Map: "eps"}},
				{Match: tcpTo("10.96.0.11"), Action: nft.Action{Kind: nft.ActJump, Chain: "sticky"}},
			}},
			{Name: "sticky", Rules: []nft.Rule{
				{Counter: true, Action: nft.Action{Kind: nft.ActDNATMap, Keys: client, Map: "aff"}, Comment: "affine"},
				{Counter: true, Action: nft.Action{Kind: nft.ActDNATMap, Keys: []nft.Field{nft.Const(8), nft.Numgen(2)}, Map: "eps",
					Record: &nft.SetUpdate{Set: "aff", Keys: client}}, Comment: "pick"},
			}},
		},
	}
}

// TestDNATMapAndAffinityRecord sends real TCP connections through
// `dnat ip to <id> . numgen random mod 2 map @eps` and through the
// affinity pair (lookup the client in @aff, else pick from @eps and
// record): the first spreads over both endpoints, the second keeps each
// client on the endpoint it got first, and syncs keep what was learned.
func TestDNATMapAndAffinityRecord(t *testing.T) {
	n, c := newNS(t)
	h := loUp(t, n)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	eps := []string{"10.244.1.2", "10.244.1.3"}
	clients := []string{"10.244.1.10", "10.244.1.11"}
	for _, a := range slices.Concat(eps, clients) {
		addr, _ := netlink.ParseAddr(a + "/32")
		if err := h.AddrAdd(lo, addr); err != nil {
			t.Fatalf("add %s: %v", a, err)
		}
	}
	_, vips, _ := net.ParseCIDR("10.96.0.0/16")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: vips, Scope: netlink.SCOPE_LINK, Src: net.ParseIP(eps[0])}); err != nil {
		t.Fatalf("route: %v", err)
	}
	endpoints := map[string]string{
		"7 . 0": "10.244.1.2 . 8080", "7 . 1": "10.244.1.3 . 8081",
		"8 . 0": "10.244.1.2 . 8080", "8 . 1": "10.244.1.3 . 8081",
	}
	desired := dnatMapTable(endpoints)
	mustApply(t, c, desired)

	accepted := make(chan string, 1)
	err = n.Do(func(ns.NetNS) error {
		for i, ep := range eps {
			l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ep, 8080+i))
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					conn, err := l.Accept()
					if err != nil {
						return
					}
					accepted <- conn.LocalAddr().String()
					conn.Close()
				}
			}()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// connect from client to vip and return the endpoint that accepted.
	connect := func(client, vip string) string {
		t.Helper()
		var got string
		err := n.Do(func(ns.NetNS) error {
			d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(client)}}
			conn, err := d.Dial("tcp", vip)
			if err != nil {
				return fmt.Errorf("connect from %s to %s: %w", client, vip, err)
			}
			defer conn.Close()
			if conn.RemoteAddr().String() != vip {
				return fmt.Errorf("remote address %s, want the virtual IP %s (conntrack undoes the DNAT)", conn.RemoteAddr(), vip)
			}
			select {
			case got = <-accepted:
			case <-time.After(2 * time.Second):
				return fmt.Errorf("no endpoint accepted %s -> %s", client, vip)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	hits := map[string]int{}
	for range 24 {
		hits[connect(clients[0], "10.96.0.10:80")]++
	}
	// All 24 random picks on one endpoint: probability 2^-23.
	if hits["10.244.1.2:8080"] == 0 || hits["10.244.1.3:8081"] == 0 || len(hits) != 2 {
		t.Errorf("dnat map spread = %v, want both endpoints with their ports", hits)
	}

	first := map[string]string{}
	for _, cl := range clients {
		first[cl] = connect(cl, "10.96.0.11:80")
		for i := range 12 {
			if got := connect(cl, "10.96.0.11:80"); got != first[cl] {
				t.Fatalf("client %s connect %d went to %s, first to %s: affinity not kept", cl, i, got, first[cl])
			}
		}
	}
	// The affine rule's counter sees every connect (a miss included), the
	// pick rule's only the two first ones.
	if got := counts(t, c); got["pick"] != 2 || got["affine"] != 2+2*12 {
		t.Errorf("counters %v, want one pick per client and every later connect affine", got)
	}
	recorded := affinityElements(t, n)
	for _, cl := range clients {
		ep := strings.Replace(first[cl], ":", " . ", 1)
		if !slices.Contains(recorded, "8 . "+cl+" : "+ep) {
			t.Errorf("affinity map %q lacks client %s -> %s", recorded, cl, ep)
		}
	}

	// A sync of the same model sends nothing; an endpoint change is one
	// element replaced, no chain or map recreated; the learned elements
	// stay.
	assertDump(t, c, desired)
	endpoints["7 . 1"] = "10.244.1.3 . 9090"
	tx := mustApply(t, c, dnatMapTable(endpoints))
	if len(tx.AddElements) != 1 || len(tx.DeleteElements) != 1 || len(tx.FillChains)+len(tx.FlushChains)+len(tx.AddMaps)+len(tx.DeleteSets) != 0 {
		t.Errorf("endpoint change:\n%s\nwant one element replaced", tx)
	}
	if got := affinityElements(t, n); len(got) != len(recorded) {
		t.Errorf("affinity map after syncs = %q, want %q kept", got, recorded)
	}
	for _, cl := range clients {
		if got := connect(cl, "10.96.0.11:80"); got != first[cl] {
			t.Errorf("client %s after the sync went to %s, want %s", cl, got, first[cl])
		}
	}
}

var affElem = regexp.MustCompile(`(0x[0-9a-f]+|\d+) \. (\d+\.\d+\.\d+\.\d+)(?: expires \S+)? : (\d+\.\d+\.\d+\.\d+) \. (\d+)`)

// affinityElements lists map aff with the nft binary (test only), as
// "<id> . <client> : <addr> . <port>". Only the map: nft 1.0.6 aborts
// listing a chain with a record rule (netlink_parse_concat_expr: the
// lookup result it is given as dynset data has no length for it).
func affinityElements(t *testing.T, n ns.NetNS) []string {
	t.Helper()
	listed := nftList(t, n, "list", "map", "inet", "meridian", "aff")
	var out []string
	for _, m := range affElem.FindAllStringSubmatch(listed, -1) {
		var id uint32
		if _, err := fmt.Sscan(m[1], &id); err != nil {
			t.Fatalf("element id %q: %v", m[1], err)
		}
		out = append(out, fmt.Sprintf("%d . %s : %s . %s", id, m[2], m[3], m[4]))
	}
	slices.Sort(out)
	return out
}
