package gobgp

import (
	"os"
	"strings"
	"testing"
)

// A trimmed /proc/net/netstat of kernel 6.x: the TcpExt pair holds the
// counters, the IpExt pair after it must not be mistaken for them.
const netstatSample = `TcpExt: SyncookiesSent EmbryonicRsts TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure TCPAckCompressed
TcpExt: 0 3 7 2 41 9
IpExt: InNoRoutes InTruncatedPkts
IpExt: 5 0
`

func TestParseTCPMD5Counters(t *testing.T) {
	got, err := ParseTCPMD5Counters(strings.NewReader(netstatSample))
	if err != nil {
		t.Fatal(err)
	}
	if want := (TCPMD5Counters{NotFound: 7, Unexpected: 2, Failure: 41}); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if got.Total() != 50 {
		t.Errorf("total %d, want 50", got.Total())
	}

	for name, in := range map[string]string{
		"empty":            "",
		"no TcpExt":        "IpExt: InNoRoutes\nIpExt: 5\n",
		"header only":      "TcpExt: TCPMD5NotFound\n",
		"no MD5 counters":  "TcpExt: SyncookiesSent\nTcpExt: 1\n",
		"short value line": "TcpExt: TCPMD5NotFound TCPMD5Failure\nTcpExt: 1\n",
		"not a number":     "TcpExt: TCPMD5NotFound\nTcpExt: x\n",
		"negative":         "TcpExt: TCPMD5Failure\nTcpExt: -1\n",
	} {
		if c, err := ParseTCPMD5Counters(strings.NewReader(in)); err == nil {
			t.Errorf("%s: parsed %+v, want an error", name, c)
		}
	}
}

func TestTCPMD5CountersSub(t *testing.T) {
	now := TCPMD5Counters{NotFound: 5, Unexpected: 1, Failure: 10}
	base := TCPMD5Counters{NotFound: 2, Unexpected: 3, Failure: 10}
	if got, want := now.Sub(base), (TCPMD5Counters{NotFound: 3}); got != want {
		t.Errorf("sub = %+v, want %+v (a counter going backwards counts as zero)", got, want)
	}
}

func TestMD5Hint(t *testing.T) {
	drops := TCPMD5Counters{NotFound: 1, Failure: 3}
	if got := md5Hint(true, false, drops); !strings.HasPrefix(got, "no session; this node counted 4 TCP MD5 signature failures") ||
		!strings.Contains(got, "not found 1, unexpected 0, wrong 3") || !strings.HasSuffix(got, "check the password on both sides") {
		t.Errorf("hint = %q", got)
	}
	for _, tt := range []struct {
		name                  string
		password, established bool
		delta                 TCPMD5Counters
	}{
		{"no password", false, false, drops},
		{"established", true, true, drops},
		{"no drops", true, false, TCPMD5Counters{}},
	} {
		if got := md5Hint(tt.password, tt.established, tt.delta); got != "" {
			t.Errorf("%s: hint %q, want none", tt.name, got)
		}
	}
}

// The reader parses this machine's own file; every Linux kernel Meridian
// supports lists the counters.
func TestReadTCPMD5Counters(t *testing.T) {
	if _, err := os.Stat(netstatPath); err != nil {
		t.Skipf("no %s: %v", netstatPath, err)
	}
	if _, err := ReadTCPMD5Counters(); err != nil {
		t.Fatal(err)
	}
}
