package apiserver

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
)

// The request parsers either accept a value that the RPC can use as is or
// refuse it with InvalidArgument and a message; never a panic, another
// code or an empty message. testdata/fuzz holds the seeds found so far.

func checkRefusal(t *testing.T, err error) {
	t.Helper()
	if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() == "" {
		t.Fatalf("refusal %v is not InvalidArgument with a message", err)
	}
}

func FuzzParseEvaluate(f *testing.F) {
	f.Add("10.244.1.6", "10.244.1.5", "TCP", uint32(8080))
	f.Add("10.244.1.6", "10.244.1.5", "icmp", uint32(0))
	f.Add("::ffff:10.0.0.1", "10.0.0.2", "udp", uint32(53))
	f.Add("fe80::1%eth0", "fe80::2", "SCTP", uint32(1))
	f.Add("10.0.0.1", "fd00::1", "TCP", uint32(65536))
	f.Add("", "", "", uint32(0))
	f.Fuzz(func(t *testing.T, src, dst, proto string, port uint32) {
		pkt, err := parseEvaluate(&meridianv1.EvaluateRequest{Source: src, Destination: dst, Protocol: proto, Port: port})
		if err != nil {
			checkRefusal(t, err)
			return
		}
		if !pkt.Src.IsValid() || !pkt.Dst.IsValid() || pkt.Src.Is4() != pkt.Dst.Is4() || pkt.Src.Zone() != "" || pkt.Src.Is4In6() {
			t.Fatalf("accepted addresses %v -> %v", pkt.Src, pkt.Dst)
		}
		switch pkt.Protocol {
		case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
			if pkt.DstPort == 0 || uint32(pkt.DstPort) != port {
				t.Fatalf("accepted port %d for %d", pkt.DstPort, port)
			}
		case "ICMP":
			if pkt.DstPort != 0 {
				t.Fatalf("ICMP with port %d", pkt.DstPort)
			}
		default:
			t.Fatalf("accepted protocol %q", pkt.Protocol)
		}
		if !strings.EqualFold(string(pkt.Protocol), proto) {
			t.Fatalf("protocol %q became %q", proto, pkt.Protocol)
		}
	})
}

func FuzzParseRouteFilter(f *testing.F) {
	f.Add("10.244.0.0/16", "10.244.1.1", int32(1))
	f.Add("10.244.1.1/16", "", int32(0))
	f.Add("fd00::/8", "fd00::1", int32(2))
	f.Add("0.0.0.0/0", "255.255.255.255", int32(3))
	f.Add("10.0.0.0/33", "10.0.0.1%x", int32(-1))
	f.Fuzz(func(t *testing.T, prefix, contains string, source int32) {
		flt, err := parseRouteFilter(prefix, contains, meridianv1.Route_Source(source))
		if err != nil {
			checkRefusal(t, err)
			return
		}
		if prefix != "" && (!flt.prefix.IsValid() || !flt.prefix.Addr().Is4() || flt.prefix != flt.prefix.Masked()) {
			t.Fatalf("accepted prefix %q as %v", prefix, flt.prefix)
		}
		if contains != "" && !flt.contains.Is4() {
			t.Fatalf("accepted contains %q as %v", contains, flt.contains)
		}
		if flt.contains.IsValid() && flt.prefix.IsValid() && flt.keep(flt.prefix) != flt.prefix.Contains(flt.contains) {
			t.Fatalf("keep(%v) with contains %v disagrees with Contains", flt.prefix, flt.contains)
		}
		if source < 0 || source > 2 {
			t.Fatalf("accepted source %d", source)
		}
	})
}
