// Command meridianctl inspects Meridian on the node it runs on through
// meridiand's gRPC API (meridian.v1) on a Unix socket: routes, BGP peers,
// IPAM, Services, NetworkPolicy, one flow traced end to end, and a doctor
// that walks the usual debugging checklist.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
	"github.com/meridian-net/meridian/daemon/routes"
)

const defaultSocket = "/var/run/meridian/meridian.sock"

func usage(w io.Writer) {
	fmt.Fprintf(w, `usage: meridianctl [--socket PATH | --server HOST:PORT | --node NAME] [TLS flags] COMMAND [flags] [-o table|wide|json|yaml]

commands:
  routes [--prefix CIDR] [--contains IP] [--source kernel|rib] [--watch]
              kernel routes meridiand owns (protocol %d) and its BGP RIB; --watch
              streams changes; without a daemon socket, the kernel routes are
              read directly
  peers       BGP sessions
  ipam        pod addresses allocated on this node
  services [-n NAMESPACE] [NAME]
              Service frontends, targets and endpoints as programmed in nftables
  policy [-n NAMESPACE] [POD]
              the NetworkPolicies selecting each local pod, their rules and drops
  policy evaluate SRC DST PORT/PROTO
              allow or deny one connection, with the deciding policies and rules
  trace SRC DST:PORT/PROTO
              one flow from this node: Service NAT, route and next hop, policy
  doctor      check this node for the usual problems, each with what to do
  completion bash|zsh
              print a shell completion script

--socket defaults to $MERIDIAN_SOCKET, else %s.
--server HOST:PORT dials a meridiand's TCP listener (--api-listen) instead;
--node NAME finds that node's InternalIP through the Kubernetes API
(--kubeconfig, else $KUBECONFIG or ~/.kube/config) and dials it on
--api-port (default %d). Both use mutual TLS: --tls-cert and --tls-key (this
client's certificate), --ca (the CA of the daemon's certificate) and, when
the daemon's certificate does not name the address dialled,
--tls-server-name.
`, routes.Protocol, defaultSocket, defaultAPIPort)
}

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit code.
func run(ctx context.Context, argv []string, stdout, stderr io.Writer) int {
	def := defaultSocket
	if s := os.Getenv("MERIDIAN_SOCKET"); s != "" {
		def = s
	}
	global := flag.NewFlagSet("meridianctl", flag.ContinueOnError)
	global.SetOutput(stderr)
	global.Usage = func() { usage(stderr) }
	tgt := &target{socket: def, apiPort: defaultAPIPort}
	tgt.register(global)
	if err := global.Parse(argv); err != nil {
		return 2
	}
	args := global.Args()
	if len(args) < 1 {
		usage(stderr)
		return 2
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	case "completion":
		if len(args) != 1 {
			fmt.Fprintln(stderr, "meridianctl completion: want bash or zsh")
			return 2
		}
		if err := completion(stdout, args[0]); err != nil {
			fmt.Fprintf(stderr, "meridianctl completion: %v\n", err)
			return 2
		}
		return 0
	case "__complete":
		// Dynamic completion for the shell scripts: names the daemon knows.
		completeNames(ctx, stdout, *tgt, args)
		return 0
	}
	c, ok := commands[cmd]
	if !ok {
		fmt.Fprintf(stderr, "meridianctl: unknown command %q\n", cmd)
		usage(stderr)
		return 2
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	// The connection flags are taken after the command too, kubectl-like.
	tgt.register(fs)
	opts := &options{}
	fs.StringVar(&opts.format, "o", formatTable, "output format: "+strings.Join(formats, ", "))
	if c.flags != nil {
		c.flags(fs, opts)
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if err := checkFormat(opts.format); err != nil {
		fmt.Fprintf(stderr, "meridianctl %s: %v\n", cmd, err)
		return 2
	}
	if err := tgt.check(); err != nil {
		fmt.Fprintf(stderr, "meridianctl %s: %v\n", cmd, err)
		return 2
	}
	opts.args, opts.target = pos, *tgt

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if !opts.watch {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	if err := c.run(ctx, stdout, opts); err != nil {
		var u usageError
		if errors.As(err, &u) {
			fmt.Fprintf(stderr, "meridianctl %s: %v\n", cmd, err)
			return 2
		}
		if errors.Is(err, context.Canceled) && opts.watch {
			return 0
		}
		fmt.Fprintf(stderr, "meridianctl %s: %s\n", cmd, errorText(err))
		return 1
	}
	return 0
}

// errorText shortens gRPC's "rpc error: code = X desc = msg" to "X: msg",
// keeping any context wrapped around it.
func errorText(err error) string {
	msg := err.Error()
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		msg = strings.Replace(msg, "rpc error: code = "+s.Code().String()+" desc = ", s.Code().String()+": ", 1)
	}
	return msg
}

// options are the flags and arguments of one command.
type options struct {
	target target
	format string
	args   []string
	// routes
	prefix, contains, source string
	watch                    bool
	// services, policy
	namespace string
	// doctor
	cluster, host bool
}

type command struct {
	flags func(*flag.FlagSet, *options)
	run   func(ctx context.Context, out io.Writer, o *options) error
}

var commands = map[string]command{
	"routes": {
		flags: func(fs *flag.FlagSet, o *options) {
			fs.StringVar(&o.prefix, "prefix", "", "only routes inside this CIDR")
			fs.StringVar(&o.contains, "contains", "", "only routes whose prefix contains this address")
			fs.StringVar(&o.source, "source", "", "only rows from kernel or rib (default both)")
			fs.BoolVar(&o.watch, "watch", false, "print the table, then every change as it happens")
		},
		run: func(ctx context.Context, out io.Writer, o *options) error {
			if err := noArgs(o); err != nil {
				return err
			}
			if o.watch {
				return withClient(ctx, o, func(c meridianv1.MeridianClient) error {
					return watchRoutes(ctx, out, c, o.prefix, o.contains, o.source, o.format)
				})
			}
			return listRoutes(ctx, out, o.target, o.prefix, o.contains, o.source, o.format)
		},
	},
	"peers": {run: func(ctx context.Context, out io.Writer, o *options) error {
		if err := noArgs(o); err != nil {
			return err
		}
		return withClient(ctx, o, func(c meridianv1.MeridianClient) error { return listPeers(ctx, out, c, o.format) })
	}},
	"ipam": {run: func(ctx context.Context, out io.Writer, o *options) error {
		if err := noArgs(o); err != nil {
			return err
		}
		return withClient(ctx, o, func(c meridianv1.MeridianClient) error { return listIPAM(ctx, out, c, o.format) })
	}},
	"services": {
		flags: namespaceFlag,
		run: func(ctx context.Context, out io.Writer, o *options) error {
			if len(o.args) > 1 {
				return usageError{fmt.Sprintf("want at most one Service name, got %q", o.args)}
			}
			name := ""
			if len(o.args) == 1 {
				name = o.args[0]
			}
			return withClient(ctx, o, func(c meridianv1.MeridianClient) error {
				return listServices(ctx, out, c, o.namespace, name, o.format)
			})
		},
	},
	"policy": {
		flags: namespaceFlag,
		run: func(ctx context.Context, out io.Writer, o *options) error {
			if len(o.args) > 0 && o.args[0] == "evaluate" {
				q, err := parseEvaluateArgs(o.args[1:])
				if err != nil {
					return err
				}
				return withClient(ctx, o, func(c meridianv1.MeridianClient) error { return evaluate(ctx, out, c, q, o.format) })
			}
			if len(o.args) > 1 {
				return usageError{fmt.Sprintf("want at most one pod name, got %q", o.args)}
			}
			pod := ""
			if len(o.args) == 1 {
				pod = o.args[0]
			}
			return withClient(ctx, o, func(c meridianv1.MeridianClient) error {
				return listPolicies(ctx, out, c, o.namespace, pod, o.format)
			})
		},
	},
	"trace": {run: func(ctx context.Context, out io.Writer, o *options) error {
		q, err := parseTraceArgs(o.args)
		if err != nil {
			return err
		}
		return withClient(ctx, o, func(c meridianv1.MeridianClient) error { return trace(ctx, out, c, q, o.format) })
	}},
	"doctor": {
		flags: func(fs *flag.FlagSet, o *options) {
			fs.BoolVar(&o.cluster, "cluster", true, "also check what the Kubernetes API holds (CoreDNS pods, Service selectors and target ports, kube-proxy on the node) through --kubeconfig")
			fs.BoolVar(&o.host, "host", true, "also check the node meridianctl runs on (pod MTU against the uplink, local endpoints refusing connections); only with the local socket")
		},
		run: func(ctx context.Context, out io.Writer, o *options) error {
			if err := noArgs(o); err != nil {
				return err
			}
			return withClient(ctx, o, func(c meridianv1.MeridianClient) error {
				return doctor(ctx, out, c, o.format, func(node string, svcs []*meridianv1.Service) []finding { return extraChecks(ctx, o, node, svcs) })
			})
		},
	},
}

func namespaceFlag(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.namespace, "n", "", "only this namespace")
	fs.StringVar(&o.namespace, "namespace", "", "only this namespace")
}

// usageError is a mistake on the command line (exit code 2).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func noArgs(o *options) error {
	if len(o.args) > 0 {
		return usageError{fmt.Sprintf("unexpected arguments %q", o.args)}
	}
	return nil
}

// parseInterspersed parses flags wherever they are among the arguments,
// as kubectl does (`policy evaluate A B 80/TCP -o json`).
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

// dial connects to the daemon's Unix socket.
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

func withClient(ctx context.Context, o *options, f func(meridianv1.MeridianClient) error) error {
	c, conn, err := connect(ctx, o.target)
	if err != nil {
		return err
	}
	defer conn.Close()
	return f(c)
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
