package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

var protoNumbers = map[string]byte{"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132}

// ProtoNumber returns the IP protocol number of a name nft prints
// ("tcp") or of a decimal number.
func ProtoNumber(s string) (byte, error) {
	if n, ok := protoNumbers[s]; ok {
		return n, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("unknown protocol %q", s)
	}
	return byte(n), nil
}

// ProtoName is the inverse of ProtoNumber.
func ProtoName(n byte) string {
	for name, v := range protoNumbers {
		if v == n {
			return name
		}
	}
	return strconv.Itoa(int(n))
}

// Len is the number of bytes a value of the type occupies in the kernel.
func (t DataType) Len() int {
	switch t {
	case TypeIPv4Addr, TypeMark:
		return 4
	case TypeInetProto:
		return 1
	case TypeInetService:
		return 2
	}
	return 0
}

// EncodeValue encodes one value of type t as the kernel stores it: network
// byte order for addresses and ports, host byte order for marks (as nft
// does).
func EncodeValue(t DataType, s string) ([]byte, error) {
	switch t {
	case TypeIPv4Addr:
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("bad ipv4_addr %q", s)
		}
		b := a.As4()
		return b[:], nil
	case TypeInetProto:
		n, err := ProtoNumber(s)
		if err != nil {
			return nil, err
		}
		return []byte{n}, nil
	case TypeInetService:
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("bad inet_service %q", s)
		}
		return binary.BigEndian.AppendUint16(nil, uint16(n)), nil
	case TypeMark:
		n, err := strconv.ParseUint(s, 0, 32)
		if err != nil {
			return nil, fmt.Errorf("bad mark %q", s)
		}
		return binary.NativeEndian.AppendUint32(nil, uint32(n)), nil
	}
	return nil, fmt.Errorf("unsupported data type %q", t)
}

// DecodeValue is the inverse of EncodeValue, giving canonical text.
func DecodeValue(t DataType, b []byte) (string, error) {
	if len(b) < t.Len() || t.Len() == 0 {
		return "", fmt.Errorf("decode %s: %d bytes", t, len(b))
	}
	switch t {
	case TypeIPv4Addr:
		return netip.AddrFrom4([4]byte(b[:4])).String(), nil
	case TypeInetProto:
		return ProtoName(b[0]), nil
	case TypeInetService:
		return strconv.Itoa(int(binary.BigEndian.Uint16(b))), nil
	case TypeMark:
		return strconv.FormatUint(uint64(binary.NativeEndian.Uint32(b)), 10), nil
	}
	return "", fmt.Errorf("unsupported data type %q", t)
}

// EncodeKey encodes a (possibly concatenated) key: each part padded to 4
// bytes when there is more than one, as the kernel lays out concatenations.
func EncodeKey(types []DataType, s string) ([]byte, error) {
	parts := strings.Split(s, " . ")
	if len(parts) != len(types) {
		return nil, fmt.Errorf("key %q has %d parts, type %s has %d", s, len(parts), typeString(types), len(types))
	}
	var out []byte
	for i, t := range types {
		b, err := EncodeValue(t, parts[i])
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", s, err)
		}
		out = append(out, b...)
		if len(types) > 1 {
			for len(out)%4 != 0 {
				out = append(out, 0)
			}
		}
	}
	return out, nil
}

// DecodeKey is the inverse of EncodeKey.
func DecodeKey(types []DataType, b []byte) (string, error) {
	parts := make([]string, len(types))
	off := 0
	for i, t := range types {
		n := t.Len()
		if off+n > len(b) {
			return "", fmt.Errorf("decode %s: key of %d bytes too short", typeString(types), len(b))
		}
		s, err := DecodeValue(t, b[off:off+n])
		if err != nil {
			return "", err
		}
		parts[i] = s
		off += n
		if len(types) > 1 {
			off = (off + 3) &^ 3
		}
	}
	return strings.Join(parts, " . "), nil
}

// IntervalBounds returns the first address of an interval element ("a.b.c.d/n"
// or a single address) and the first address after it, as the kernel stores
// an interval: a start element and an end element flagged as such. last is
// true when the interval runs to 255.255.255.255 and has no end element.
func IntervalBounds(key string) (start, end netip.Addr, last bool, err error) {
	p, err := netip.ParsePrefix(key)
	if err != nil {
		a, aerr := netip.ParseAddr(key)
		if aerr != nil || !a.Is4() {
			return netip.Addr{}, netip.Addr{}, false, fmt.Errorf("bad interval %q", key)
		}
		p = netip.PrefixFrom(a, 32)
	}
	if !p.Addr().Is4() || p.Masked() != p {
		return netip.Addr{}, netip.Addr{}, false, fmt.Errorf("bad interval %q: want a masked IPv4 prefix", key)
	}
	start = p.Addr()
	u := binary.BigEndian.Uint32(start.AsSlice()) + uint32(1)<<(32-p.Bits()) - 1
	if u == 0xffffffff {
		return start, netip.Addr{}, true, nil
	}
	return start, netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, u+1))), false, nil
}

// IntervalKey is the inverse of IntervalBounds: canonical text for the
// addresses [start, end) (end invalid means to the top of the space). Ranges
// that are not one prefix are returned as "a-b", which Plan treats as
// foreign and replaces.
func IntervalKey(start, end netip.Addr) string {
	s := binary.BigEndian.Uint32(start.AsSlice())
	var last uint32 = 0xffffffff
	if end.IsValid() {
		last = binary.BigEndian.Uint32(end.AsSlice()) - 1
	}
	size := uint64(last) - uint64(s) + 1
	if size == 1<<32 || size&(size-1) == 0 && s%uint32(size) == 0 {
		bits := 32
		for n := size; n > 1; n >>= 1 {
			bits--
		}
		if bits == 32 {
			return start.String()
		}
		return netip.PrefixFrom(start, bits).String()
	}
	return start.String() + "-" + netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, last))).String()
}
