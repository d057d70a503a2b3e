package gobgp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// netstatPath holds the kernel's TcpExt counters of the network namespace
// this process runs in, where meridiand's BGP sockets live.
const netstatPath = "/proc/self/net/netstat"

// TCPMD5Counters are the kernel's TCP MD5 signature drop counters (RFC
// 2385, Linux TcpExt since 4.x): segments dropped because a key was set for
// the peer but the segment carried no signature (NotFound), carried one
// though no key was set (Unexpected), or carried a wrong one (Failure). A
// password that differs between two BGP speakers shows up as Failure; a
// password on one side only as NotFound or Unexpected. Any of them keeps the
// TCP session from ever being set up, so BGP itself sees only silence.
type TCPMD5Counters struct {
	NotFound   uint64
	Unexpected uint64
	Failure    uint64
}

// Total is the sum of the three drop counters.
func (c TCPMD5Counters) Total() uint64 { return c.NotFound + c.Unexpected + c.Failure }

// Sub returns the counts in c beyond base, saturating at zero for a
// counter that went backwards (a namespace re-created under the process).
func (c TCPMD5Counters) Sub(base TCPMD5Counters) TCPMD5Counters {
	sub := func(a, b uint64) uint64 {
		if a < b {
			return 0
		}
		return a - b
	}
	return TCPMD5Counters{
		NotFound:   sub(c.NotFound, base.NotFound),
		Unexpected: sub(c.Unexpected, base.Unexpected),
		Failure:    sub(c.Failure, base.Failure),
	}
}

// ParseTCPMD5Counters reads the TCP MD5 counters out of the format of
// /proc/net/netstat: pairs of lines, a header "TcpExt: Name Name ..." then
// "TcpExt: value value ...". A kernel built without CONFIG_TCP_MD5SIG
// still lists them (as zero); a TcpExt section without them, or none, is
// an error, as is a value line that does not match its header.
func ParseTCPMD5Counters(r io.Reader) (TCPMD5Counters, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var header []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "TcpExt:" {
			header = nil
			continue
		}
		if header == nil {
			header = fields[1:]
			continue
		}
		values := fields[1:]
		if len(values) != len(header) {
			return TCPMD5Counters{}, fmt.Errorf("TcpExt has %d names but %d values", len(header), len(values))
		}
		var (
			c     TCPMD5Counters
			found int
		)
		for i, name := range header {
			var dst *uint64
			switch name {
			case "TCPMD5NotFound":
				dst = &c.NotFound
			case "TCPMD5Unexpected":
				dst = &c.Unexpected
			case "TCPMD5Failure":
				dst = &c.Failure
			default:
				continue
			}
			v, err := strconv.ParseUint(values[i], 10, 64)
			if err != nil {
				return TCPMD5Counters{}, fmt.Errorf("TcpExt %s: %w", name, err)
			}
			*dst = v
			found++
		}
		if found == 0 {
			return TCPMD5Counters{}, errors.New("TcpExt has no TCP MD5 counters")
		}
		return c, nil
	}
	if err := sc.Err(); err != nil {
		return TCPMD5Counters{}, fmt.Errorf("read netstat: %w", err)
	}
	return TCPMD5Counters{}, errors.New("no TcpExt counters")
}

// ReadTCPMD5Counters reads the counters of the calling process's network
// namespace.
func ReadTCPMD5Counters() (TCPMD5Counters, error) {
	f, err := os.Open(netstatPath)
	if err != nil {
		return TCPMD5Counters{}, fmt.Errorf("open netstat: %w", err)
	}
	defer f.Close()
	c, err := ParseTCPMD5Counters(f)
	if err != nil {
		return TCPMD5Counters{}, fmt.Errorf("parse %s: %w", netstatPath, err)
	}
	return c, nil
}

// md5Hint is the last error shown for a session that has a TCP MD5
// password and is not established while the node counted MD5 drops since
// the speaker started (delta). The counters are the node's, not the
// session's, so it says what the node saw rather than blaming the peer.
// It returns "" when there is nothing to say.
func md5Hint(hasPassword, established bool, delta TCPMD5Counters) string {
	if !hasPassword || established || delta.Total() == 0 {
		return ""
	}
	return fmt.Sprintf("no session; this node counted %d TCP MD5 signature failures (not found %d, unexpected %d, wrong %d): check the password on both sides",
		delta.Total(), delta.NotFound, delta.Unexpected, delta.Failure)
}
