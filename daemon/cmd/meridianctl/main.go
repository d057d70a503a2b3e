// Command meridianctl inspects Meridian on the node it runs on through
// meridiand's gRPC API (meridian.v1) on a Unix socket.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
	"github.com/meridian-net/meridian/daemon/apiserver"
	"github.com/meridian-net/meridian/daemon/routes"
)

const defaultSocket = "/var/run/meridian/meridian.sock"

func usage() {
	fmt.Fprintf(os.Stderr, `usage: meridianctl [--socket PATH] COMMAND [flags]

commands:
  routes [-o table|json] [--prefix CIDR] [--source kernel|rib]
                            kernel routes meridiand owns (protocol %d) and its BGP RIB;
                            without a daemon socket, the kernel routes read directly
  peers  [-o table|json]    BGP sessions
  ipam   [-o table|json]    pod addresses allocated on this node

--socket defaults to $MERIDIAN_SOCKET, else %s.
`, routes.Protocol, defaultSocket)
}

func main() {
	def := defaultSocket
	if s := os.Getenv("MERIDIAN_SOCKET"); s != "" {
		def = s
	}
	global := flag.NewFlagSet("meridianctl", flag.ExitOnError)
	global.Usage = usage
	socket := global.String("socket", def, "meridiand API socket")
	_ = global.Parse(os.Args[1:])
	args := global.Args()
	if len(args) < 1 {
		usage()
		os.Exit(2)
	}
	cmd := args[0]
	if cmd == "help" {
		usage()
		return
	}
	if cmd != "routes" && cmd != "peers" && cmd != "ipam" {
		fmt.Fprintf(os.Stderr, "meridianctl: unknown command %q\n", cmd)
		usage()
		os.Exit(2)
	}
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	fs.StringVar(socket, "socket", *socket, "meridiand API socket")
	out := fs.String("o", "table", "output format: table or json")
	var prefix, source *string
	if cmd == "routes" {
		prefix = fs.String("prefix", "", "only routes inside this CIDR")
		source = fs.String("source", "", "only rows from kernel or rib (default both)")
	}
	_ = fs.Parse(args[1:])
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "meridianctl %s: unexpected arguments %q\n", cmd, fs.Args())
		os.Exit(2)
	}
	if *out != "table" && *out != "json" {
		fmt.Fprintf(os.Stderr, "meridianctl %s: unknown output format %q (want table or json)\n", cmd, *out)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var err error
	switch cmd {
	case "routes":
		err = listRoutes(ctx, os.Stdout, *socket, *prefix, *source, *out)
	case "peers":
		err = listPeers(ctx, os.Stdout, *socket, *out)
	case "ipam":
		err = listIPAM(ctx, os.Stdout, *socket, *out)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "meridianctl %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

func dial(socket string) (meridianv1.MeridianClient, io.Closer, error) {
	if _, err := os.Stat(socket); err != nil {
		return nil, nil, fmt.Errorf("no meridiand API at %s (is meridiand running with --api-socket %s?): %w", socket, socket, err)
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", socket, err)
	}
	return meridianv1.NewMeridianClient(conn), conn, nil
}

// recvAll reads a server stream to its end.
func recvAll[T any](stream interface{ Recv() (*T, error) }) ([]*T, error) {
	var out []*T
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

func listRoutes(ctx context.Context, out io.Writer, socket, prefix, source, format string) error {
	var src meridianv1.Route_Source
	switch source {
	case "":
	case "kernel":
		src = meridianv1.Route_SOURCE_KERNEL
	case "rib":
		src = meridianv1.Route_SOURCE_RIB
	default:
		return fmt.Errorf("unknown --source %q (want kernel or rib)", source)
	}
	var rows []*meridianv1.Route
	if _, err := os.Stat(socket); errors.Is(err, os.ErrNotExist) && src != meridianv1.Route_SOURCE_RIB {
		// Without a daemon the kernel still answers; that is when an
		// operator most needs to see what the last meridiand left there.
		fmt.Fprintf(os.Stderr, "meridianctl: no API socket at %s; reading kernel routes directly (no BGP RIB)\n", socket)
		var err error
		if rows, err = kernelRoutes(prefix); err != nil {
			return err
		}
	} else {
		c, conn, err := dial(socket)
		if err != nil {
			return err
		}
		defer conn.Close()
		stream, err := c.ListRoutes(ctx, &meridianv1.ListRoutesRequest{Prefix: prefix, Source: src})
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
	if format == "json" {
		return printJSON(out, rows)
	}
	w := newTable(out)
	fmt.Fprintln(w, "SOURCE\tPREFIX\tNEXT HOPS\tTYPE\tPEER\tAS PATH\tLOCAL PREF\tFLAGS")
	for _, r := range rows {
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
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sourceName(r.GetSource()), r.GetPrefix(), strings.Join(r.GetNextHops(), ","),
			kindName(r.GetKind()), r.GetPeer(), strings.Join(as, " "), lp, flags)
	}
	return w.Flush()
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

func listPeers(ctx context.Context, out io.Writer, socket, format string) error {
	c, conn, err := dial(socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := c.ListPeers(ctx, &meridianv1.ListPeersRequest{})
	if err != nil {
		return err
	}
	msgs, err := recvAll(stream)
	if err != nil {
		return err
	}
	peers := make([]*meridianv1.Peer, 0, len(msgs))
	for _, m := range msgs {
		peers = append(peers, m.GetPeer())
	}
	if format == "json" {
		return printJSON(out, peers)
	}
	w := newTable(out)
	fmt.Fprintln(w, "NAME\tADDRESS\tASN\tSTATE\tEND OF RIB")
	for _, p := range peers {
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%t\n", p.GetName(), p.GetAddress(), p.GetAsn(), p.GetState(), p.GetEndOfRib())
	}
	return w.Flush()
}

func listIPAM(ctx context.Context, out io.Writer, socket, format string) error {
	c, conn, err := dial(socket)
	if err != nil {
		return err
	}
	defer conn.Close()
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
	if format == "json" {
		return printJSON(out, as)
	}
	w := newTable(out)
	fmt.Fprintln(w, "ADDRESS\tCONTAINER\tIFNAME")
	for _, a := range as {
		fmt.Fprintf(w, "%s\t%s\t%s\n", a.GetAddress(), a.GetContainerId(), a.GetIfname())
	}
	return w.Flush()
}

// printJSON writes the rows as one JSON array in the proto's JSON mapping
// (lowerCamelCase names, enums by name), indented the same way every run:
// protojson deliberately varies its own whitespace.
func printJSON[T proto.Message](w io.Writer, rows []T) error {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, r := range rows {
		if i > 0 {
			buf.WriteByte(',')
		}
		b, err := protojson.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode JSON: %w", err)
		}
		buf.Write(b)
	}
	buf.WriteByte(']')
	var out bytes.Buffer
	if err := json.Indent(&out, buf.Bytes(), "", "  "); err != nil {
		return fmt.Errorf("indent JSON: %w", err)
	}
	out.WriteByte('\n')
	_, err := out.WriteTo(w)
	return err
}

// table aligns columns like kubectl and drops the padding tabwriter leaves
// after the last non-empty cell, so lines end with text.
type table struct {
	*tabwriter.Writer
	buf bytes.Buffer
	out io.Writer
}

func newTable(out io.Writer) *table {
	t := &table{out: out}
	t.Writer = tabwriter.NewWriter(&t.buf, 0, 4, 2, ' ', 0)
	return t
}

func (t *table) Flush() error {
	if err := t.Writer.Flush(); err != nil {
		return err
	}
	var b strings.Builder
	for line := range strings.Lines(t.buf.String()) {
		b.WriteString(strings.TrimRight(line, " \n"))
		b.WriteByte('\n')
	}
	_, err := io.WriteString(t.out, b.String())
	return err
}
