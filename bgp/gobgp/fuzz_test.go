package gobgp

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/osrg/gobgp/v3/pkg/apiutil"
	bgppacket "github.com/osrg/gobgp/v3/pkg/packet/bgp"

	"github.com/meridian-net/meridian/bgp"
)

// FuzzPathFromUpdate feeds arbitrary path-attribute bytes through what
// happens to a peer's UPDATE before meridiand uses it: GoBGP's parser and
// validator as its FSM runs them (dropping what RFC 7606 treats as
// withdrawn or resets the session for, keeping what survives attribute
// discard), GoBGP's conversion into the API path that ListPath hands out,
// and pathFromAPI. Whatever the bytes, pathFromAPI must not panic, and a
// path it returns must be the announced prefix with a usable next hop and
// canonical communities.
func FuzzPathFromUpdate(f *testing.F) {
	nh := netip.MustParseAddr("192.0.2.1")
	seeds := [][]byte{
		joinAttrs(originAttr(0), asPathAttr(65001), nextHopAttr(nh)),
		joinAttrs(originAttr(0), asPathAttr(65001), nextHopAttr(nh),
			attr(flagOptional|flagTransitive, attrCommunity, append(u32(65000<<16|100), u32(65535<<16|65281)...)),
			attr(flagOptional|flagTransitive, attrLargeComm, append(append(u32(4200000000), u32(1)...), u32(2)...)),
			attr(flagTransitive, 5, u32(200)), // LOCAL_PREF
			attr(flagOptional, attrMED, u32(7))),
		joinAttrs(originAttr(7), asPathAttr(65001), nextHopAttr(nh)),
		joinAttrs(originAttr(0), asPathAttr(65001), nextHopAttr(nh), attr(flagOptional|flagTransitive, attrCommunity, []byte{1, 2, 3})),
		joinAttrs(originAttr(0), asPathAttr(65001), nextHopAttr(nh), attr(flagOptional|flagTransitive, attrCommunity, nil)),
		joinAttrs(originAttr(0), asPathAttr(65001), nextHopAttr(nh), attr(flagOptional|flagTransitive, attrAggregator, []byte{0, 0, 1, 2, 3})),
		joinAttrs(originAttr(0), asPathAttr(65001), nextHopAttr(nh), attrLen(flagOptional, attrMED, 9, u32(2))),
		joinAttrs(originAttr(0), asPathAttr(), attr(flagOptional, 14, nil)), // empty MP_REACH_NLRI
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, attrs []byte) {
		if len(attrs) > 4000 {
			return
		}
		for _, p := range pathsFromUpdate(attrs, fuzzPrefix, nh) {
			if p.Prefix != fuzzPrefix {
				t.Fatalf("prefix %s, announced %s", p.Prefix, fuzzPrefix)
			}
			if !p.NextHop.IsValid() {
				t.Fatalf("path without a next hop: %+v", p)
			}
			if p.PeerAddress != nh {
				t.Fatalf("peer %s, want %s", p.PeerAddress, nh)
			}
			if !slices.IsSortedFunc(p.Communities, bgp.Community.Compare) || len(slices.Compact(slices.Clone(p.Communities))) != len(p.Communities) {
				t.Fatalf("communities not canonical: %v", p.Communities)
			}
			for _, c := range p.Communities {
				if !c.Valid() {
					t.Fatalf("community %+v does not fit its attribute", c)
				}
			}
		}
	})
}

var fuzzPrefix = netip.MustParsePrefix("10.244.1.0/24")

// pathsFromUpdate runs an UPDATE announcing prefix with the given
// attribute bytes through GoBGP's parser, validator and API conversion,
// as for a path learned from peer, and then pathFromAPI. It returns the
// paths pathFromAPI accepted; an UPDATE GoBGP would not use gives none.
func pathsFromUpdate(attrs []byte, prefix netip.Prefix, peer netip.Addr) []bgp.Path {
	rfs := map[bgppacket.RouteFamily]bgppacket.BGPAddPathMode{bgppacket.RF_IPv4_UC: bgppacket.BGP_ADD_PATH_NONE}
	msg := updateRaw(len(attrs), attrs, prefix)
	hdr := &bgppacket.BGPHeader{}
	if err := hdr.DecodeFromBytes(msg); err != nil {
		return nil
	}
	m, err := bgppacket.ParseBGPBody(hdr, msg[19:])
	if !survives(err) || m == nil {
		return nil
	}
	upd, ok := m.Body.(*bgppacket.BGPUpdate)
	if !ok {
		return nil
	}
	if ok, err := bgppacket.ValidateUpdateMsg(upd, rfs, true, false, false); !ok && !survives(err) {
		return nil
	}
	var out []bgp.Path
	for _, n := range upd.NLRI {
		ap, err := apiutil.NewPath(n, false, upd.PathAttributes, time.Now())
		if err != nil {
			continue
		}
		ap.NeighborIp = peer.String()
		if p, err := pathFromAPI(ap); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// The fuzz pipeline does carry a well-formed UPDATE through, attributes
// and all, and drops a treat-as-withdraw one.
func TestPathsFromUpdate(t *testing.T) {
	nh := netip.MustParseAddr("192.0.2.1")
	full := joinAttrs(originAttr(0), asPathAttr(65001), nextHopAttr(nh),
		attr(flagOptional|flagTransitive, attrCommunity, append(u32(65000<<16|200), u32(65000<<16|100)...)),
		attr(flagOptional|flagTransitive, attrLargeComm, append(append(u32(4200000000), u32(1)...), u32(2)...)),
		attr(flagOptional, attrMED, u32(7)))
	ps := pathsFromUpdate(full, fuzzPrefix, nh)
	want := []bgp.Community{{A: 65000, B: 100}, {A: 65000, B: 200}, {Large: true, A: 4200000000, B: 1, C: 2}}
	if len(ps) != 1 || ps[0].NextHop != nh || ps[0].MED != 7 || !slices.Equal(ps[0].ASPath, []uint32{65001}) || !slices.Equal(ps[0].Communities, want) {
		t.Fatalf("well-formed UPDATE: %+v", ps)
	}
	bad := joinAttrs(originAttr(0), asPathAttr(65001), nextHopAttr(nh), attr(flagOptional|flagTransitive, attrCommunity, []byte{1, 2, 3}))
	if ps := pathsFromUpdate(bad, fuzzPrefix, nh); len(ps) != 0 {
		t.Fatalf("treat-as-withdraw UPDATE gave paths: %+v", ps)
	}
}

func joinAttrs(as ...[]byte) []byte {
	var out []byte
	for _, a := range as {
		out = append(out, a...)
	}
	return out
}

// survives reports whether GoBGP's FSM goes on to use an UPDATE that
// parsed or validated with err: only attribute-discard keeps it.
func survives(err error) bool {
	if err == nil {
		return true
	}
	var me *bgppacket.MessageError
	return errors.As(err, &me) && me.ErrorHandling == bgppacket.ERROR_HANDLING_ATTRIBUTE_DISCARD
}
