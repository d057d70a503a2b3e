package apiserver

import (
	"net/netip"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
	"github.com/meridian-net/meridian/policy"
)

// The parsers below turn request fields into values and refuse anything
// else with codes.InvalidArgument and a message that says what was
// expected; fuzz_test.go holds them to that.

// parseAddr reads an IP address field named what.
func parseAddr(what, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, status.Errorf(codes.InvalidArgument, "%s is required (an IP address such as 10.244.1.5)", what)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, status.Errorf(codes.InvalidArgument, "%s %q is not an IP address such as 10.244.1.5", what, s)
	}
	if a.Zone() != "" {
		return netip.Addr{}, status.Errorf(codes.InvalidArgument, "%s %q: zoned addresses do not occur in pod traffic", what, s)
	}
	return a.Unmap(), nil
}

// parseContains reads ListRoutesRequest.contains; invalid means no filter.
func parseContains(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := parseAddr("contains", s)
	if err != nil {
		return netip.Addr{}, err
	}
	if !a.Is4() {
		return netip.Addr{}, status.Errorf(codes.InvalidArgument, "contains %q: only IPv4 routes exist", s)
	}
	return a, nil
}

// parseProtoPort reads the protocol and port of an EvaluateRequest: TCP,
// UDP and SCTP need a port in 1..65535; ICMP takes none.
func parseProtoPort(proto string, port uint32) (corev1.Protocol, uint16, error) {
	p := corev1.Protocol(strings.ToUpper(proto))
	switch p {
	case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		if port == 0 || port > 65535 {
			return "", 0, status.Errorf(codes.InvalidArgument, "port %d out of range: %s needs a port in 1-65535", port, p)
		}
		return p, uint16(port), nil
	case "ICMP":
		if port != 0 {
			return "", 0, status.Errorf(codes.InvalidArgument, "port %d given for ICMP, which has no ports", port)
		}
		return p, 0, nil
	case "":
		return "", 0, status.Error(codes.InvalidArgument, "protocol is required (TCP, UDP, SCTP or ICMP)")
	}
	return "", 0, status.Errorf(codes.InvalidArgument, "protocol %q is not TCP, UDP, SCTP or ICMP", proto)
}

// parseEvaluate reads a whole EvaluateRequest into a policy packet.
func parseEvaluate(req *meridianv1.EvaluateRequest) (policy.Packet, error) {
	src, err := parseAddr("source", req.GetSource())
	if err != nil {
		return policy.Packet{}, err
	}
	dst, err := parseAddr("destination", req.GetDestination())
	if err != nil {
		return policy.Packet{}, err
	}
	if src.Is4() != dst.Is4() {
		return policy.Packet{}, status.Errorf(codes.InvalidArgument, "source %s and destination %s are of different IP families", src, dst)
	}
	proto, port, err := parseProtoPort(req.GetProtocol(), req.GetPort())
	if err != nil {
		return policy.Packet{}, err
	}
	return policy.Packet{Src: src, Dst: dst, Protocol: proto, DstPort: port}, nil
}

// routeFilter is a ListRoutesRequest or WatchRoutesRequest, parsed.
type routeFilter struct {
	prefix   netip.Prefix
	contains netip.Addr
	source   meridianv1.Route_Source
}

func parseRouteFilter(prefix, contains string, source meridianv1.Route_Source) (routeFilter, error) {
	var f routeFilter
	var err error
	if f.prefix, err = parseFilter(prefix); err != nil {
		return f, err
	}
	if f.contains, err = parseContains(contains); err != nil {
		return f, err
	}
	if _, ok := meridianv1.Route_Source_name[int32(source)]; !ok {
		return f, status.Errorf(codes.InvalidArgument, "unknown route source %d", source)
	}
	f.source = source
	return f, nil
}

func (f routeFilter) keep(p netip.Prefix) bool {
	return within(p, f.prefix) && (!f.contains.IsValid() || p.Contains(f.contains))
}
