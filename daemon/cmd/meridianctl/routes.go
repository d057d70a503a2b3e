package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
	"github.com/meridian-net/meridian/daemon/apiserver"
	"github.com/meridian-net/meridian/daemon/routes"
)

func parseSource(source string) (meridianv1.Route_Source, error) {
	switch source {
	case "":
		return meridianv1.Route_SOURCE_UNSPECIFIED, nil
	case "kernel":
		return meridianv1.Route_SOURCE_KERNEL, nil
	case "rib":
		return meridianv1.Route_SOURCE_RIB, nil
	}
	return 0, usageError{fmt.Sprintf("unknown --source %q (want kernel or rib)", source)}
}

func listRoutes(ctx context.Context, out io.Writer, tgt target, prefix, contains, source, format string) error {
	src, err := parseSource(source)
	if err != nil {
		return err
	}
	var rows []*meridianv1.Route
	if _, err := os.Stat(tgt.socket); !tgt.remote() && errors.Is(err, os.ErrNotExist) && src != meridianv1.Route_SOURCE_RIB && contains == "" {
		// Without a daemon the kernel still answers; that is when an
		// operator most needs to see what the last meridiand left there.
		fmt.Fprintf(os.Stderr, "meridianctl: no API socket at %s; reading kernel routes directly (no BGP RIB)\n", tgt.socket)
		if rows, err = kernelRoutes(prefix); err != nil {
			return err
		}
	} else {
		c, conn, err := connect(ctx, tgt)
		if err != nil {
			return err
		}
		defer conn.Close()
		stream, err := c.ListRoutes(ctx, &meridianv1.ListRoutesRequest{Prefix: prefix, Contains: contains, Source: src})
		if err != nil {
			return err
		}
		msgs, err := recvAll(stream)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			rows = append(rows, m.GetRoute())
		}
	}
	if structured(format) {
		return printProtos(out, format, rows)
	}
	w := newTable(out)
	w.row(routeHeader(format, false)...)
	for _, r := range rows {
		w.row(routeCells(r, format)...)
	}
	return w.Flush()
}

func routeHeader(format string, event bool) []string {
	h := []string{"SOURCE", "PREFIX", "NEXT HOPS", "TYPE", "PEER", "FLAGS"}
	if format == formatWide {
		h = append(h, "AS PATH", "LOCAL PREF", "ENCAP", "DEVICE")
	}
	if event {
		h = append([]string{"EVENT"}, h...)
	}
	return h
}

func routeCells(r *meridianv1.Route, format string) []string {
	var lp, flags string
	var as []string
	if r.GetSource() == meridianv1.Route_SOURCE_RIB {
		lp = strconv.FormatUint(uint64(r.GetLocalPref()), 10)
		for _, a := range r.GetAsPath() {
			as = append(as, strconv.FormatUint(uint64(a), 10))
		}
		var f []string
		if r.GetBest() {
			f = append(f, "best")
		}
		if r.GetStale() {
			f = append(f, "stale")
		}
		flags = strings.Join(f, ",")
	}
	cells := []string{sourceName(r.GetSource()), r.GetPrefix(), strings.Join(r.GetNextHops(), ","), kindName(r.GetKind()), r.GetPeer(), flags}
	if format == formatWide {
		cells = append(cells, strings.Join(as, " "), lp, encapName(r.GetEncapsulation()), r.GetDevice())
	}
	return cells
}

// encapName is how a kernel route leaves the node; "" where it does not
// apply (RIB rows, blackholes).
func encapName(e meridianv1.Route_Encapsulation) string {
	switch e {
	case meridianv1.Route_ENCAPSULATION_NATIVE:
		return "native"
	case meridianv1.Route_ENCAPSULATION_IPIP:
		return "ipip"
	case meridianv1.Route_ENCAPSULATION_VXLAN:
		return "vxlan"
	}
	return ""
}

func sourceName(s meridianv1.Route_Source) string {
	switch s {
	case meridianv1.Route_SOURCE_KERNEL:
		return "kernel"
	case meridianv1.Route_SOURCE_RIB:
		return "rib"
	}
	return "?"
}

func kindName(k meridianv1.Route_Kind) string {
	switch k {
	case meridianv1.Route_KIND_BGP:
		return "bgp"
	case meridianv1.Route_KIND_BLACKHOLE:
		return "blackhole"
	}
	return "unknown"
}

// kernelRoutes reads Meridian's routes from this network namespace.
func kernelRoutes(prefix string) ([]*meridianv1.Route, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	rs, err := routes.NewApplier(h, slog.New(slog.DiscardHandler)).Current()
	if err != nil {
		return nil, err
	}
	return apiserver.KernelRows(rs, prefix)
}

// watchRoutes prints the route table, then one line per change; with -o
// json or yaml one document per event.
func watchRoutes(ctx context.Context, out io.Writer, c meridianv1.MeridianClient, prefix, contains, source, format string) error {
	src, err := parseSource(source)
	if err != nil {
		return err
	}
	stream, err := c.WatchRoutes(ctx, &meridianv1.WatchRoutesRequest{Prefix: prefix, Contains: contains, Source: src})
	if err != nil {
		return err
	}
	var initial []*meridianv1.Route
	synced := false
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if structured(format) {
			if err := printProtos(out, format, []*meridianv1.WatchRoutesResponse{m}); err != nil {
				return err
			}
			if format == formatYAML {
				fmt.Fprintln(out, "---")
			}
			continue
		}
		switch {
		case m.GetType() == meridianv1.WatchRoutesResponse_EVENT_TYPE_SYNCED:
			// The snapshot aligns as a table; changes then come one line
			// each as they happen.
			synced = true
			w := newTable(out)
			w.row(routeHeader(format, true)...)
			for _, r := range initial {
				w.row(append([]string{"="}, routeCells(r, format)...)...)
			}
			if err := w.Flush(); err != nil {
				return err
			}
		case !synced:
			initial = append(initial, m.GetRoute())
		default:
			sign := "+"
			if m.GetType() == meridianv1.WatchRoutesResponse_EVENT_TYPE_REMOVED {
				sign = "-"
			}
			w := newTable(out)
			w.row(append([]string{sign}, routeCells(m.GetRoute(), format)...)...)
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
}

func listPeers(ctx context.Context, out io.Writer, c meridianv1.MeridianClient, format string) error {
	peers, err := peers(ctx, c)
	if err != nil {
		return err
	}
	if structured(format) {
		return printProtos(out, format, peers)
	}
	w := newTable(out)
	head := []string{"NAME", "ADDRESS", "ASN", "STATE", "UPTIME", "END OF RIB", "RECEIVED", "ACCEPTED"}
	if format == formatWide {
		head = append(head, "REJECTED", "ADVERTISED", "GR", "LAST ERROR")
	}
	w.row(head...)
	for _, p := range peers {
		row := []string{p.GetName(), p.GetAddress(), strconv.FormatUint(uint64(p.GetAsn()), 10), p.GetState(),
			shortDuration(p.GetUptime().AsDuration()), strconv.FormatBool(p.GetEndOfRib()),
			strconv.FormatUint(uint64(p.GetReceived()), 10), strconv.FormatUint(uint64(p.GetAccepted()), 10)}
		if format == formatWide {
			var rej []string
			for _, reason := range slices.Sorted(maps.Keys(p.GetRejected())) {
				rej = append(rej, fmt.Sprintf("%s=%d", reason, p.GetRejected()[reason]))
			}
			row = append(row, orDash(strings.Join(rej, ",")), strconv.FormatUint(uint64(p.GetAdvertised()), 10),
				grFlags(p.GetGracefulRestart()), orDash(p.GetLastError()))
		}
		w.row(row...)
	}
	return w.Flush()
}

// grFlags shows a session's graceful restart state in one column:
// "negotiated", and "peer-restarting" while its paths are kept stale,
// "local-restarting" while this node holds its updates back.
func grFlags(gr *meridianv1.GracefulRestartState) string {
	var flags []string
	if gr.GetNegotiated() {
		flags = append(flags, "negotiated")
	}
	if gr.GetPeerRestarting() {
		flags = append(flags, "peer-restarting")
	}
	if gr.GetLocalRestarting() {
		flags = append(flags, "local-restarting")
	}
	return orDash(strings.Join(flags, ","))
}

// shortDuration renders an uptime the way kubectl renders ages: two units
// at most ("45s", "3m20s", "5h12m", "2d4h"), "-" for none.
func shortDuration(d time.Duration) string {
	d = d.Truncate(time.Second)
	switch {
	case d <= 0:
		return "-"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
}

func peers(ctx context.Context, c meridianv1.MeridianClient) ([]*meridianv1.Peer, error) {
	stream, err := c.ListPeers(ctx, &meridianv1.ListPeersRequest{})
	if err != nil {
		return nil, err
	}
	msgs, err := recvAll(stream)
	if err != nil {
		return nil, err
	}
	out := make([]*meridianv1.Peer, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, m.GetPeer())
	}
	return out, nil
}

func listIPAM(ctx context.Context, out io.Writer, c meridianv1.MeridianClient, format string) error {
	stream, err := c.ListIPAM(ctx, &meridianv1.ListIPAMRequest{})
	if err != nil {
		return err
	}
	msgs, err := recvAll(stream)
	if err != nil {
		return err
	}
	as := make([]*meridianv1.Allocation, 0, len(msgs))
	for _, m := range msgs {
		as = append(as, m.GetAllocation())
	}
	if structured(format) {
		return printProtos(out, format, as)
	}
	w := newTable(out)
	w.row("ADDRESS", "CONTAINER", "IFNAME")
	for _, a := range as {
		w.row(a.GetAddress(), a.GetContainerId(), a.GetIfname())
	}
	return w.Flush()
}
