package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
)

// traceReport explains one flow as this node handles it: which Service
// frontend and target its destination hits (and the endpoints the kernel
// picks from at random), then for each possible destination the route and
// the policy verdicts.
type traceReport struct {
	Source      string      `json:"source"`
	Destination string      `json:"destination"`
	Protocol    string      `json:"protocol"`
	Port        uint16      `json:"port,omitempty"`
	Node        string      `json:"node,omitempty"`
	NAT         *traceNAT   `json:"nat,omitempty"`
	Paths       []tracePath `json:"paths"`
	Notes       []string    `json:"notes,omitempty"`
}

type traceNAT struct {
	Service  string `json:"service"`
	Frontend string `json:"frontend"`
	Kind     string `json:"kind"`
	Target   string `json:"target"`
	Verdict  string `json:"verdict"`
	Reason   string `json:"reason,omitempty"`
	// Endpoints are those the kernel picks from at random (address:port@node).
	Endpoints []string `json:"endpoints"`
	// Masquerade is whether this source is SNATed to the node, and
	// MasqueradeRule the frontend's rule that decided.
	Masquerade     bool   `json:"masquerade"`
	MasqueradeRule string `json:"masqueradeRule"`
	AffinitySecs   uint32 `json:"affinityTimeoutSeconds,omitempty"`
}

type tracePath struct {
	Destination string        `json:"destination"`
	Node        string        `json:"node,omitempty"`
	Local       bool          `json:"local,omitempty"`
	Route       traceRoute    `json:"route"`
	Egress      *traceVerdict `json:"egress,omitempty"`
	Ingress     *traceVerdict `json:"ingress,omitempty"`
	// Allowed is the verdict of the directions this node judges.
	Allowed bool `json:"allowed"`
}

type traceRoute struct {
	Prefix   string   `json:"prefix,omitempty"`
	Kind     string   `json:"kind"` // bgp, blackhole or none
	NextHops []string `json:"nextHops,omitempty"`
	// Peers are the BGP neighbours whose best path taught the prefix.
	Peers []string `json:"peers,omitempty"`
	// Encapsulation is "none" for a native route, else the tunnel
	// ("ipip", "vxlan") the route's packets are carried in.
	Encapsulation string `json:"encapsulation,omitempty"`
	// Device is the tunnel device of an encapsulated route.
	Device      string `json:"device,omitempty"`
	Explanation string `json:"explanation"`
}

type traceVerdict struct {
	Judged   bool     `json:"judged"`
	Pod      string   `json:"pod,omitempty"`
	Allowed  bool     `json:"allowed"`
	Reason   string   `json:"reason,omitempty"`
	Rules    []string `json:"rules,omitempty"`
	Policies []string `json:"policies,omitempty"`
	Text     string   `json:"explanation"`
}

// parseTraceArgs reads SRC DST:PORT/PROTO; PROTO defaults to TCP.
func parseTraceArgs(args []string) (flowQuery, error) {
	const use = "usage: trace SRC DST:PORT/PROTO (e.g. 10.244.1.6 10.96.0.10:53/UDP)"
	if len(args) != 2 {
		return flowQuery{}, usageError{use}
	}
	var q flowQuery
	var err error
	if q.src, err = parseAddrArg("source", args[0]); err != nil {
		return q, err
	}
	ap, proto, _ := strings.Cut(args[1], "/")
	if proto == "" {
		proto = "TCP"
	}
	addrPort, err := netip.ParseAddrPort(ap)
	if err != nil {
		return q, usageError{fmt.Sprintf("destination %q is not ADDRESS:PORT; %s", ap, use)}
	}
	q.dst = addrPort.Addr()
	q.port, q.proto, err = parsePortProto(fmt.Sprintf("%d/%s", addrPort.Port(), proto))
	return q, err
}

func trace(ctx context.Context, out io.Writer, c meridianv1.MeridianClient, q flowQuery, format string) error {
	rep, err := buildTrace(ctx, c, q)
	if err != nil {
		return err
	}
	if structured(format) {
		return printValue(out, format, rep)
	}
	writeTrace(out, rep)
	return nil
}

type candidate struct {
	addr netip.Addr
	port uint16
	node string
	loc  bool
}

func buildTrace(ctx context.Context, c meridianv1.MeridianClient, q flowQuery) (*traceReport, error) {
	rep := &traceReport{Source: q.src.String(), Destination: q.dst.String(), Protocol: q.proto, Port: q.port}
	st, err := c.GetDataplaneStatus(ctx, &meridianv1.GetDataplaneStatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("read dataplane status: %w", err)
	}
	if !st.GetSynced() {
		return nil, fmt.Errorf("meridiand has not programmed Services and policy yet (last error: %s)", orDash(st.GetLastError()))
	}
	rep.Node = st.GetNode()
	clusterCIDRs := parsePrefixes(st.GetClusterCidrs())
	nodeAddrs := map[netip.Addr]bool{}
	for _, a := range st.GetNodePortAddresses() {
		if p, err := netip.ParseAddr(a); err == nil {
			nodeAddrs[p] = true
		}
	}
	fromCluster := inAny(q.src, clusterCIDRs)

	svcs, err := services(ctx, c, "", "")
	if err != nil {
		return nil, fmt.Errorf("list Services: %w", err)
	}
	cands := []candidate{{addr: q.dst, port: q.port}}
	if nat, port := findFrontend(svcs, q); nat != nil {
		rep.NAT = nat.traceNAT
		f := nat.frontend
		key := f.GetTarget()
		if f.GetPodTarget() != "" && (fromCluster || nodeAddrs[q.src]) {
			key = f.GetPodTarget()
		}
		t := findTarget(port, key)
		nat.Target, nat.Verdict, nat.Reason = key, t.GetVerdict(), t.GetReason()
		nat.Endpoints = []string{}
		for _, e := range t.GetEndpoints() {
			nat.Endpoints = append(nat.Endpoints, endpointString(e))
		}
		nat.AffinitySecs = port.GetAffinityTimeoutSeconds()
		nat.MasqueradeRule = f.GetMasquerade()
		switch f.GetMasquerade() {
		case "always":
			nat.Masquerade = true
		case "offCluster":
			nat.Masquerade = !fromCluster
		case "nodeSource":
			nat.Masquerade = nodeAddrs[q.src]
		}
		cands = nil
		for _, e := range t.GetEndpoints() {
			a, err := netip.ParseAddr(e.GetAddress())
			if err != nil {
				continue
			}
			cands = append(cands, candidate{addr: a, port: uint16(e.GetPort()), node: e.GetNode(), loc: e.GetLocal()})
		}
		if nat.Masquerade {
			rep.Notes = append(rep.Notes, "the source is SNATed to this node's address: an endpoint on another node sees that address, and its node's ingress policy judges it rather than "+q.src.String())
		}
		if t.GetVerdict() != "dnat" {
			rep.Notes = append(rep.Notes, fmt.Sprintf("the connection ends at the Service: %s (%s); no endpoint is tried", t.GetVerdict(), orDash(t.GetReason())))
		}
	} else {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%s:%d/%s is no Service frontend on this node: no NAT", q.dst, q.port, q.proto))
	}
	for _, cd := range cands {
		p := tracePath{Destination: netip.AddrPortFrom(cd.addr, cd.port).String(), Node: cd.node, Local: cd.loc}
		if q.proto == "ICMP" {
			p.Destination = cd.addr.String()
		}
		if p.Route, err = lookupRoute(ctx, c, cd.addr, &rep.Notes); err != nil {
			return nil, err
		}
		resp, err := c.Evaluate(ctx, &meridianv1.EvaluateRequest{Source: q.src.String(), Destination: cd.addr.String(), Protocol: q.proto, Port: uint32(cd.port)})
		if err != nil {
			return nil, fmt.Errorf("evaluate policy for %s: %w", p.Destination, err)
		}
		p.Allowed = resp.GetAllowed()
		p.Egress = traceDirection(resp.GetEgress(), "source", q.src, "")
		p.Ingress = traceDirection(resp.GetIngress(), "destination", cd.addr, cd.node)
		rep.Paths = append(rep.Paths, p)
	}
	return rep, nil
}

// findFrontend is the Service frontend the flow's destination hits, if any.
func findFrontend(svcs []*meridianv1.Service, q flowQuery) (*frontendNAT, *meridianv1.ServicePort) {
	for _, s := range svcs {
		for _, p := range s.GetPorts() {
			for _, f := range p.GetFrontends() {
				a, err := netip.ParseAddr(f.GetAddress())
				if err != nil || a != q.dst || f.GetPort() != uint32(q.port) || f.GetProtocol() != q.proto {
					continue
				}
				return &frontendNAT{traceNAT: &traceNAT{Service: s.GetNamespace() + "/" + s.GetName(), Frontend: frontendString(f), Kind: f.GetKind()}, frontend: f}, p
			}
		}
	}
	return nil, nil
}

// frontendNAT is a report NAT section with the frontend it came from.
type frontendNAT struct {
	*traceNAT
	frontend *meridianv1.Frontend
}

// lookupRoute is the longest prefix among the kernel routes Meridian owns
// that contains a, and the RIB's best paths for it.
func lookupRoute(ctx context.Context, c meridianv1.MeridianClient, a netip.Addr, notes *[]string) (traceRoute, error) {
	if !a.Is4() {
		return traceRoute{Kind: "none", Explanation: "IPv6: Meridian installs no IPv6 routes; the host's routing table decides"}, nil
	}
	req := &meridianv1.ListRoutesRequest{Contains: a.String()}
	rows, err := listRouteRows(ctx, c, req)
	if status.Code(err) == codes.Unavailable {
		// The speaker is down; the kernel still forwards.
		note := "BGP speaker unavailable: routes from the kernel only, without the peer that taught them"
		if len(*notes) == 0 || (*notes)[len(*notes)-1] != note {
			*notes = append(*notes, note)
		}
		req.Source = meridianv1.Route_SOURCE_KERNEL
		rows, err = listRouteRows(ctx, c, req)
	}
	if err != nil {
		return traceRoute{}, fmt.Errorf("look up the route to %s: %w", a, err)
	}
	var best *meridianv1.Route
	bestBits := -1
	for _, r := range rows {
		if r.GetSource() != meridianv1.Route_SOURCE_KERNEL {
			continue
		}
		p, err := netip.ParsePrefix(r.GetPrefix())
		if err == nil && p.Bits() > bestBits {
			best, bestBits = r, p.Bits()
		}
	}
	if best == nil {
		rt := traceRoute{Kind: "none", Explanation: fmt.Sprintf("no route Meridian owns contains %s: the host's routing table decides (a pod on this node is reached by its veth route; anything else follows the host's routes, e.g. the default route)", a)}
		for _, r := range rows {
			if r.GetSource() == meridianv1.Route_SOURCE_RIB {
				rt.Explanation += fmt.Sprintf("; the RIB has %s from %s but it is not installed", r.GetPrefix(), r.GetPeer())
				break
			}
		}
		return rt, nil
	}
	rt := traceRoute{Prefix: best.GetPrefix(), NextHops: best.GetNextHops()}
	switch best.GetKind() {
	case meridianv1.Route_KIND_BLACKHOLE:
		rt.Kind = "blackhole"
		rt.Explanation = fmt.Sprintf("%s is this node's pod CIDR: a pod here with %s is reached through its veth route; with no such pod the blackhole drops it", best.GetPrefix(), a)
		return rt, nil
	case meridianv1.Route_KIND_BGP:
		rt.Kind = "bgp"
	default:
		rt.Kind = "unknown"
	}
	rt.Encapsulation, rt.Device = "none", best.GetDevice()
	how := "native (no encapsulation)"
	if e := encapName(best.GetEncapsulation()); e != "" && e != "native" {
		rt.Encapsulation = e
		how = fmt.Sprintf("encapsulated in %s through %s to the node that owns it (no router on the way knows this pod CIDR)", strings.ToUpper(e), best.GetDevice())
	}
	for _, r := range rows {
		if r.GetSource() == meridianv1.Route_SOURCE_RIB && r.GetPrefix() == best.GetPrefix() && r.GetBest() {
			rt.Peers = append(rt.Peers, r.GetPeer())
		}
	}
	rt.Explanation = fmt.Sprintf("%s via %s, %s", best.GetPrefix(), strings.Join(best.GetNextHops(), ", "), how)
	if len(best.GetNextHops()) > 1 {
		rt.Explanation += ", ECMP: the kernel hashes each flow onto one next hop"
	}
	if len(rt.Peers) > 0 {
		rt.Explanation += ", learned from " + strings.Join(rt.Peers, ", ")
	}
	return rt, nil
}

func listRouteRows(ctx context.Context, c meridianv1.MeridianClient, req *meridianv1.ListRoutesRequest) ([]*meridianv1.Route, error) {
	stream, err := c.ListRoutes(ctx, req)
	if err != nil {
		return nil, err
	}
	msgs, err := recvAll(stream)
	if err != nil {
		return nil, err
	}
	out := make([]*meridianv1.Route, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, m.GetRoute())
	}
	return out, nil
}

func traceDirection(d *meridianv1.DirectionVerdict, role string, a netip.Addr, node string) *traceVerdict {
	v := &traceVerdict{Text: directionText(d, role, a)}
	if d == nil {
		if node != "" {
			v.Text = fmt.Sprintf("not judged here: the %s %s is a pod on node %s, which judges it (meridianctl policy evaluate there)", role, a, node)
		}
		return v
	}
	v.Judged, v.Pod, v.Allowed, v.Reason, v.Policies = true, d.GetPod(), d.GetAllowed(), d.GetReason(), d.GetPolicies()
	for _, r := range d.GetRules() {
		v.Rules = append(v.Rules, fmt.Sprintf("%s#%d", r.GetPolicy(), r.GetIndex()))
	}
	return v
}

func writeTrace(out io.Writer, rep *traceReport) {
	flow := fmt.Sprintf("%s:%d/%s", rep.Destination, rep.Port, rep.Protocol)
	if rep.Protocol == "ICMP" {
		flow = rep.Destination + " ICMP"
	}
	fmt.Fprintf(out, "trace %s -> %s on node %s\n", rep.Source, flow, orDash(rep.Node))
	if n := rep.NAT; n != nil {
		fmt.Fprintf(out, "\nService NAT: %s is the %s frontend of %s\n", n.Frontend, n.Kind, n.Service)
		switch n.Verdict {
		case "dnat":
			how := "picked at random for each new connection"
			if n.AffinitySecs > 0 {
				how = fmt.Sprintf("picked at random, then kept per client for %ds (ClientIP affinity)", n.AffinitySecs)
			}
			fmt.Fprintf(out, "  target %s: DNAT to one of %d endpoint(s), %s:\n", n.Target, len(n.Endpoints), how)
			for _, e := range n.Endpoints {
				fmt.Fprintf(out, "    %s\n", e)
			}
		default:
			fmt.Fprintf(out, "  target %s: %s (%s)\n", n.Target, n.Verdict, orDash(n.Reason))
		}
		masq := "kept"
		if n.Masquerade {
			masq = "SNATed to the node"
		}
		fmt.Fprintf(out, "  masquerade %s: source %s is %s\n", n.MasqueradeRule, rep.Source, masq)
	}
	for i, p := range rep.Paths {
		where := ""
		if p.Node != "" {
			where = " on " + p.Node
			if p.Local {
				where += " (this node)"
			}
		}
		fmt.Fprintf(out, "\npath %d: %s%s\n", i+1, p.Destination, where)
		fmt.Fprintf(out, "  route:   %s\n", p.Route.Explanation)
		fmt.Fprintf(out, "  egress:  %s\n", p.Egress.Text)
		fmt.Fprintf(out, "  ingress: %s\n", p.Ingress.Text)
		verdict := "ALLOW"
		if !p.Allowed {
			verdict = "DENY"
		}
		var judged []string
		if p.Egress.Judged {
			judged = append(judged, "egress")
		}
		if p.Ingress.Judged {
			judged = append(judged, "ingress")
		}
		if len(judged) == 0 {
			judged = []string{"nothing: no pod of this node is involved"}
		}
		fmt.Fprintf(out, "  => %s (this node judged %s)\n", verdict, strings.Join(judged, " and "))
	}
	if len(rep.Notes) > 0 {
		fmt.Fprintln(out)
		for _, n := range rep.Notes {
			fmt.Fprintf(out, "note: %s\n", n)
		}
	}
}

func parsePrefixes(ss []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func inAny(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
