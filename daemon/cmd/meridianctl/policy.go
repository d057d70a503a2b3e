package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
)

func podPolicies(ctx context.Context, c meridianv1.MeridianClient, namespace, pod string) ([]*meridianv1.PodPolicy, error) {
	stream, err := c.ListPolicies(ctx, &meridianv1.ListPoliciesRequest{Namespace: namespace, Pod: pod})
	if err != nil {
		return nil, err
	}
	msgs, err := recvAll(stream)
	if err != nil {
		return nil, err
	}
	out := make([]*meridianv1.PodPolicy, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, m.GetPod())
	}
	return out, nil
}

// listPolicies prints one row per local pod (table) or per pod, direction
// and allow rule with its hits (wide).
func listPolicies(ctx context.Context, out io.Writer, c meridianv1.MeridianClient, namespace, pod, format string) error {
	pods, err := podPolicies(ctx, c, namespace, pod)
	if err != nil {
		return err
	}
	if structured(format) {
		return printProtos(out, format, pods)
	}
	w := newTable(out)
	if format == formatWide {
		w.row("NAMESPACE", "POD", "DIRECTION", "POLICY", "RULE", "PEER", "PORTS", "PACKETS")
		for _, p := range pods {
			for _, d := range []struct {
				name string
				d    *meridianv1.PolicyDirection
			}{{"ingress", p.GetIngress()}, {"egress", p.GetEgress()}} {
				if !d.d.GetIsolated() {
					w.row(p.GetNamespace(), p.GetName(), d.name, "-", "-", "any", "all", "not isolated")
					continue
				}
				for _, r := range d.d.GetRules() {
					peer := r.GetPeerKind()
					if r.GetPeer() != "" {
						peer += " " + r.GetPeer()
					}
					ports := "all"
					if len(r.GetPorts()) > 0 {
						ports = strings.Join(r.GetPorts(), ",")
					}
					w.row(p.GetNamespace(), p.GetName(), d.name, r.GetPolicy(), "allow#"+strconv.Itoa(int(r.GetIndex())), peer, ports, ruleHits(d.d.GetCounters(), r.GetPolicy(), r.GetIndex()))
				}
				drops := "?"
				if cs := d.d.GetCounters(); cs != nil {
					drops = strconv.FormatUint(cs.GetDroppedPackets(), 10)
					if cs.GetFailedClosed() {
						drops += " (failed closed)"
					}
				}
				w.row(p.GetNamespace(), p.GetName(), d.name, strings.Join(d.d.GetPolicies(), ","), "deny (default)", "anything else", "all", drops)
			}
		}
		return w.Flush()
	}
	w.row("NAMESPACE", "POD", "IPS", "INGRESS", "EGRESS", "DROPPED IN", "DROPPED OUT")
	for _, p := range pods {
		w.row(p.GetNamespace(), p.GetName(), strings.Join(p.GetIps(), ","), directionPolicies(p.GetIngress()), directionPolicies(p.GetEgress()),
			dropped(p.GetIngress()), dropped(p.GetEgress()))
	}
	return w.Flush()
}

func directionPolicies(d *meridianv1.PolicyDirection) string {
	if !d.GetIsolated() {
		return "(not isolated)"
	}
	return strings.Join(d.GetPolicies(), ",")
}

// dropped shows the drop counter; "?" when the kernel counters could not be
// read, "-" when the direction is not isolated (nothing to drop).
func dropped(d *meridianv1.PolicyDirection) string {
	if !d.GetIsolated() {
		return "-"
	}
	cs := d.GetCounters()
	if cs == nil {
		return "?"
	}
	s := strconv.FormatUint(cs.GetDroppedPackets(), 10)
	if cs.GetFailedClosed() {
		s += " (failed closed)"
	}
	return s
}

func ruleHits(cs *meridianv1.PolicyCounters, policy string, index int32) string {
	if cs == nil {
		return "?"
	}
	for _, h := range cs.GetAllowed() {
		if h.GetPolicy() == policy && h.GetIndex() == index {
			return strconv.FormatUint(h.GetPackets(), 10)
		}
	}
	return "0"
}

// flowQuery is one connection as the user wrote it.
type flowQuery struct {
	src, dst netip.Addr
	port     uint16
	proto    string
}

// parsePortProto reads "80/TCP", "53/udp" or "ICMP".
func parsePortProto(s string) (uint16, string, error) {
	if strings.EqualFold(s, "icmp") {
		return 0, "ICMP", nil
	}
	portStr, proto, ok := strings.Cut(s, "/")
	if !ok {
		proto = "TCP"
	}
	proto = strings.ToUpper(proto)
	switch proto {
	case "TCP", "UDP", "SCTP":
	default:
		return 0, "", usageError{fmt.Sprintf("protocol %q in %q is not TCP, UDP or SCTP", proto, s)}
	}
	p, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || p == 0 {
		return 0, "", usageError{fmt.Sprintf("port %q in %q is not a number in 1-65535", portStr, s)}
	}
	return uint16(p), proto, nil
}

func parseAddrArg(what, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, usageError{fmt.Sprintf("%s %q is not an IP address", what, s)}
	}
	return a, nil
}

// parseEvaluateArgs reads SRC DST PORT/PROTO.
func parseEvaluateArgs(args []string) (flowQuery, error) {
	if len(args) != 3 {
		return flowQuery{}, usageError{"usage: policy evaluate SRC DST PORT/PROTO (e.g. 10.244.1.6 10.244.2.9 53/UDP, or ICMP)"}
	}
	var q flowQuery
	var err error
	if q.src, err = parseAddrArg("source", args[0]); err != nil {
		return q, err
	}
	if q.dst, err = parseAddrArg("destination", args[1]); err != nil {
		return q, err
	}
	q.port, q.proto, err = parsePortProto(args[2])
	return q, err
}

func evaluate(ctx context.Context, out io.Writer, c meridianv1.MeridianClient, q flowQuery, format string) error {
	resp, err := c.Evaluate(ctx, &meridianv1.EvaluateRequest{Source: q.src.String(), Destination: q.dst.String(), Protocol: q.proto, Port: uint32(q.port)})
	if err != nil {
		return err
	}
	if structured(format) {
		return printProtos(out, format, []*meridianv1.EvaluateResponse{resp})
	}
	verdict := "ALLOW"
	if !resp.GetAllowed() {
		verdict = "DENY"
	}
	fmt.Fprintf(out, "%s  %s -> %s %s (as judged by node %s)\n", verdict, q.src, q.dst, portProto(q), resp.GetNode())
	fmt.Fprintf(out, "  egress:  %s\n", directionText(resp.GetEgress(), "source", q.src))
	if s := resp.GetServiceFrontend(); s != "" {
		fmt.Fprintf(out, "  ingress: not judged: %s is a Service address, not a pod\n", q.dst)
	} else {
		fmt.Fprintf(out, "  ingress: %s\n", directionText(resp.GetIngress(), "destination", q.dst))
	}
	if s := resp.GetServiceFrontend(); s != "" {
		fmt.Fprintf(out, "  note: %s:%d is a frontend of Service %s; policy sees the packet after DNAT, so evaluate its endpoints (meridianctl trace does)\n", q.dst, q.port, s)
	}
	return nil
}

func portProto(q flowQuery) string {
	if q.proto == "ICMP" {
		return "ICMP"
	}
	return fmt.Sprintf("%d/%s", q.port, q.proto)
}

// directionText explains one direction's verdict, or why this node did not
// judge it.
func directionText(d *meridianv1.DirectionVerdict, role string, a netip.Addr) string {
	if d == nil {
		return fmt.Sprintf("not judged here: the %s %s is not a pod on this node (its own node judges it)", role, a)
	}
	verdict := "allow"
	if !d.GetAllowed() {
		verdict = "deny"
	}
	switch d.GetReason() {
	case "notIsolated":
		return fmt.Sprintf("%s pod %s: no policy selects it in this direction", verdict, d.GetPod())
	case "loopback":
		return fmt.Sprintf("%s pod %s to itself: never filtered", verdict, d.GetPod())
	case "allowedByRule":
		var rules []string
		for _, r := range d.GetRules() {
			rules = append(rules, fmt.Sprintf("%s rule %d", r.GetPolicy(), r.GetIndex()))
		}
		return fmt.Sprintf("%s pod %s: allowed by %s", verdict, d.GetPod(), strings.Join(rules, ", "))
	case "defaultDeny":
		return fmt.Sprintf("%s pod %s: isolated by %s and no rule allows it", verdict, d.GetPod(), strings.Join(d.GetPolicies(), ", "))
	}
	return fmt.Sprintf("%s pod %s: %s", verdict, d.GetPod(), d.GetReason())
}
