package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// tableRef names a proxy's table and the map that holds one element per
// Service port frontend (address . protocol . port), which is what "the
// table holds every Service" is counted on. Both are read over netlink:
// `nft list` takes seconds at 10k Services.
type tableRef struct {
	family    nftables.TableFamily
	table     string
	frontends string
	// also are tables to remove before a cold start (kube-proxy's ip6 one).
	also []nftables.Table
}

var (
	kubeProxyTable = tableRef{
		family: nftables.TableFamilyIPv4, table: "kube-proxy", frontends: "service-ips",
		also: []nftables.Table{{Family: nftables.TableFamilyIPv6, Name: "kube-proxy"}},
	}
	meridianTable = tableRef{family: nftables.TableFamilyINet, table: "meridian", frontends: "services-frontends"}
)

// nftIn opens a google/nftables connection to a namespace.
func nftIn(netnsName string) (*nftables.Conn, func(), error) {
	h, err := netns.GetFromName(netnsName)
	if err != nil {
		return nil, nil, fmt.Errorf("open netns %s: %w", netnsName, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("nftables in %s: %w", netnsName, err)
	}
	return c, func() { h.Close() }, nil
}

// removeTables deletes the proxy's tables so that its start is cold.
func removeTables(netnsName string, ref tableRef) error {
	c, done, err := nftIn(netnsName)
	if err != nil {
		return err
	}
	defer done()
	tables := append([]nftables.Table{{Family: ref.family, Name: ref.table}}, ref.also...)
	for _, t := range tables {
		c.DelTable(&t)
		if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete table %s in %s: %w", t.Name, netnsName, err)
		}
	}
	return nil
}

// countFrontends counts the frontend map's elements whose address is one
// of want. A table or map not there yet counts 0.
func countFrontends(netnsName string, ref tableRef, want map[netip.Addr]bool) (int, error) {
	c, done, err := nftIn(netnsName)
	if err != nil {
		return 0, err
	}
	defer done()
	set, err := c.GetSetByName(&nftables.Table{Family: ref.family, Name: ref.table}, ref.frontends)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, nil
		}
		return 0, fmt.Errorf("get map %s: %w", ref.frontends, err)
	}
	els, err := c.GetSetElements(set)
	if err != nil {
		return 0, fmt.Errorf("list map %s: %w", ref.frontends, err)
	}
	n := 0
	for _, e := range els {
		if len(e.Key) < 4 {
			continue
		}
		if want[netip.AddrFrom4([4]byte(e.Key[:4]))] {
			n++
		}
	}
	return n, nil
}

// chainWatch reports what the kernel commits, from nftables' netlink
// multicast group (events arrive once their transaction is committed): one
// endpoint change is timed by the moment its new endpoint is in the table,
// without reading 100k chains per poll.
type chainWatch struct {
	mon    *nftables.Monitor
	events chan *nftables.MonitorEvent
	done   func()
}

func watchChains(netnsName string) (*chainWatch, error) {
	c, done, err := nftIn(netnsName)
	if err != nil {
		return nil, err
	}
	// Every object and action: google/nftables v0.3.0 hands events over
	// only on the NEWGEN message that ends a transaction, and its filter
	// ((flags & 1) << type, by Go's precedence) drops NEWGEN, and with it
	// every event, unless the flags have bit 0, which only "any" has.
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(4096))
	events, err := c.AddMonitor(mon)
	if err != nil {
		done()
		return nil, fmt.Errorf("monitor nftables in %s: %w", netnsName, err)
	}
	return &chainWatch{mon: mon, events: events, done: done}, nil
}

// waitEndpoint returns when a chain for addr is committed.
func (w *chainWatch) waitEndpoint(ctx context.Context, addr netip.Addr, timeout time.Duration) (time.Time, error) {
	deadline := time.After(timeout)
	for {
		select {
		case ev, ok := <-w.events:
			if !ok {
				return time.Time{}, errors.New("nftables monitor closed")
			}
			if ev.Type == nftables.MonitorEventTypeOOB {
				return time.Time{}, fmt.Errorf("nftables monitor: %w", ev.Error)
			}
			if EventShowsEndpoint(ev, addr) {
				return time.Now(), nil
			}
		case <-deadline:
			return time.Time{}, fmt.Errorf("no chain for %s after %s", addr, timeout)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

func (w *chainWatch) close() {
	_ = w.mon.Close()
	// Drain so the monitor's goroutines can end.
	go func() {
		for range w.events {
		}
	}()
	w.done()
}

// EventShowsEndpoint reports whether a committed object carries endpoint
// addr: Meridian makes a chain per endpoint (ep-<id>-10-244-248-1-8080);
// kube-proxy v1.37 (without session affinity) DNATs with
// `numgen random mod N map { 0 : 10.244.248.1 . 8080, ... }`, whose
// anonymous map elements have the address . port as data.
func EventShowsEndpoint(ev *nftables.MonitorEvent, addr netip.Addr) bool {
	switch d := ev.Data.(type) {
	case *nftables.Chain:
		return ev.Type == nftables.MonitorEventTypeNewChain && ChainNamesEndpoint(d.Name, addr)
	case []nftables.SetElement:
		if ev.Type != nftables.MonitorEventTypeNewSetElem {
			return false
		}
		a := addr.AsSlice()
		for _, e := range d {
			if bytes.HasPrefix(e.Val, a) || bytes.HasPrefix(e.Key, a) {
				return true
			}
		}
	}
	return false
}
