// Command meridianctl inspects Meridian on the node it runs on. Until the
// gRPC API lands it reads the kernel directly: the routes meridiand owns.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"text/tabwriter"

	"github.com/vishvananda/netlink"

	"github.com/meridian-net/meridian/daemon/routes"
)

func usage() {
	fmt.Fprintf(os.Stderr, `usage: meridianctl COMMAND [flags]

commands:
  routes [-o table|json]   routes meridiand installed on this node (protocol %d)
`, routes.Protocol)
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	switch os.Args[1] {
	case "routes":
		fs := flag.NewFlagSet("routes", flag.ExitOnError)
		out := fs.String("o", "table", "output format: table or json")
		_ = fs.Parse(os.Args[2:])
		if err := listRoutes(*out); err != nil {
			fmt.Fprintf(os.Stderr, "meridianctl routes: %v\n", err)
			os.Exit(1)
		}
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "meridianctl: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
}

func listRoutes(format string) error {
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	rs, err := routes.NewApplier(h, slog.New(slog.DiscardHandler)).Current()
	if err != nil {
		return err
	}
	switch format {
	case "json":
		type row struct {
			Prefix    string   `json:"prefix"`
			NextHops  []string `json:"nextHops,omitempty"`
			Blackhole bool     `json:"blackhole,omitempty"`
		}
		rows := []row{}
		for _, r := range rs {
			x := row{Prefix: r.Dst.String(), Blackhole: r.Blackhole}
			for _, nh := range r.NextHops {
				x.NextHops = append(x.NextHops, nh.String())
			}
			rows = append(rows, x)
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	case "table":
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "PREFIX\tNEXT HOPS\tTYPE")
		for _, r := range rs {
			typ, nhs := "unicast", ""
			if r.Blackhole {
				typ = "blackhole (own pod CIDR)"
			}
			for i, nh := range r.NextHops {
				if i > 0 {
					nhs += ","
				}
				nhs += nh.String()
			}
			fmt.Fprintf(w, "%s\t%s\t%s\n", r.Dst, nhs, typ)
		}
		return w.Flush()
	default:
		return fmt.Errorf("unknown output format %q (want table or json)", format)
	}
}
