// Package bgp holds the speaker-neutral model of Meridian's BGP: the peers a
// node should have, what it advertises and the best paths it learned. Only
// bgp/gobgp imports GoBGP; everything else talks to the Speaker interface so
// the decision code stays pure and testable.
package bgp

import (
	"context"
	"net/netip"
	"slices"
	"time"
)

// DefaultASN is the private ASN nodes use when nothing else is configured
// (RFC 6996 private range, the same default Calico uses).
const DefaultASN uint32 = 64512

// Config is what the speaker needs to start. It does not change while the
// speaker runs; a new router ID or ASN means a new speaker.
type Config struct {
	RouterID netip.Addr
	ASN      uint32
	// ListenAddresses are the local addresses the speaker accepts sessions
	// on; empty means it only dials out.
	ListenAddresses []netip.Addr
	// ListenPort is the TCP port for BGP (179). -1 disables listening,
	// which in-process tests use for the dialling side.
	ListenPort int32
	// GracefulRestartTime is the restart time announced to peers
	// (RFC 4724): how long they keep our routes when our session drops.
	// Zero disables graceful restart. RFC 4724 carries it in 12 bits of
	// seconds, so at most 4095s.
	GracefulRestartTime time.Duration
	// Restarting says this speaker comes back after a crash with its
	// forwarding state intact (RFC 4724 section 4.1): it sets the Restart
	// State and Forwarding State bits in its OPENs and holds back its own
	// updates until its peers sent End-of-RIB, so peers refresh the routes
	// they kept as stale instead of flushing them. The caller sets it when
	// it finds its own routes still installed at start. It needs
	// GracefulRestartTime > 0.
	Restarting bool
	// LocalAddress is the source address of sessions this speaker dials;
	// invalid lets the kernel choose. Peers match sessions by address, so
	// on a host with several addresses it must be the one peers know.
	LocalAddress netip.Addr
}

// Peer is one BGP neighbour the speaker should have.
type Peer struct {
	// Name identifies where the peer came from (a Node name, later a
	// BGPPeer object), for logs and the API.
	Name    string
	Address netip.Addr
	ASN     uint32
	// Port is the neighbour's TCP port; 0 means 179.
	Port uint16
	// Passive makes the speaker wait for the neighbour to connect instead
	// of dialling it. Between two Meridian nodes exactly one side should
	// dial (for example the one with the lower address): after a failed
	// attempt GoBGP refuses incoming connections for a 5s idle hold, and
	// two dialling GoBGP speakers can keep hitting each other's hold for
	// tens of seconds after one of them restarts.
	Passive bool

	// LocalAddress is the source address of this session; invalid means
	// Config.LocalAddress.
	LocalAddress netip.Addr
	// EBGPMultihopTTL is the TTL of packets to an eBGP neighbour that is
	// not on a connected subnet; 0 leaves the default of 1.
	EBGPMultihopTTL uint8
	// Password is the TCP MD5 signature key (RFC 2385); empty for none.
	Password string
	// HoldTime and KeepaliveTime are offered in OPEN; 0 takes the
	// speaker's defaults (90s, a third of the hold time).
	HoldTime      time.Duration
	KeepaliveTime time.Duration
	// GracefulRestart overrides Config.GracefulRestartTime for this
	// session: nil keeps the speaker's setting.
	GracefulRestart *GracefulRestart
	// MaxPrefixes limits what the neighbour may announce; 0 is no limit.
	// With MaxPrefixRestart the speaker closes the session with a Cease
	// (RFC 4486); Warn and Drop are enforced by ImportPolicy.
	MaxPrefixes     uint32
	MaxPrefixAction MaxPrefixAction
	// RouteReflectorClient makes this node reflect routes to the
	// neighbour (RFC 4456); RouteReflectorClusterID is the CLUSTER_ID
	// used, invalid meaning the router ID.
	RouteReflectorClient    bool
	RouteReflectorClusterID netip.Addr
	// External marks a neighbour outside the node mesh (a BGPPeer such as
	// a top-of-rack router) rather than another node: it is sent only the
	// paths this node originates, never what it learned from other nodes
	// or other external peers. A node is no transit: re-exporting another
	// node's pod CIDR or Service address would make the neighbour spread
	// that traffic over nodes that only forward it again or, for a Service
	// with externalTrafficPolicy Local, drop it.
	External bool
}

// GracefulRestart is a per-session graceful restart setting.
type GracefulRestart struct {
	Enabled     bool
	RestartTime time.Duration
}

// MaxPrefixAction is what happens when a neighbour exceeds MaxPrefixes.
type MaxPrefixAction string

const (
	// MaxPrefixRestart closes the session with a Cease "maximum number of
	// prefixes reached" (RFC 4486 subcode 1); the speaker retries later.
	MaxPrefixRestart MaxPrefixAction = "Restart"
	// MaxPrefixWarn accepts everything and only reports the excess.
	MaxPrefixWarn MaxPrefixAction = "Warn"
	// MaxPrefixDrop keeps the session and refuses prefixes beyond the
	// limit (lowest prefixes are kept, so the choice is stable).
	MaxPrefixDrop MaxPrefixAction = "Drop"
)

// Advertisement is one prefix this node originates.
type Advertisement struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	// Communities are attached to the path towards every peer, sorted
	// and without duplicates (SortCommunities).
	Communities []Community
	// LocalPref is the LOCAL_PREF of the path; nil leaves the speaker's
	// default (100). It reaches iBGP peers only: LOCAL_PREF is never sent
	// to an external peer (RFC 4271 section 5.1.5).
	LocalPref *uint32
}

// Equal reports whether a and b originate the same path.
func (a Advertisement) Equal(b Advertisement) bool {
	if a.Prefix != b.Prefix || a.NextHop != b.NextHop || !slices.Equal(a.Communities, b.Communities) {
		return false
	}
	if (a.LocalPref == nil) != (b.LocalPref == nil) {
		return false
	}
	return a.LocalPref == nil || *a.LocalPref == *b.LocalPref
}

// Path is a path in the local RIB as the speaker selected it.
type Path struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	// PeerAddress is the neighbour that sent the path; invalid for paths
	// this node originates.
	PeerAddress netip.Addr
	ASPath      []uint32
	// LocalPref is the LOCAL_PREF attribute, or 100 (the default route
	// selection assumes) when the path carries none, as eBGP paths do.
	LocalPref uint32
	// Best is true for the path the speaker selected; with multipath,
	// every path equal to the best is marked Best.
	Best bool
	// Stale is true for a path kept from a peer that is restarting
	// gracefully (RFC 4724 section 4.2).
	Stale bool
	// Origin is the ORIGIN attribute (0 IGP, 1 EGP, 2 incomplete) and MED
	// the MULTI_EXIT_DISC (0 when absent); multipath compares them.
	Origin uint8
	MED    uint32
	// Communities are the path's COMMUNITIES and LARGE_COMMUNITY values,
	// sorted (SortCommunities); nil when it carries none.
	Communities []Community
	// Rejected is the ImportPolicy reason this path is refused, "" when
	// it is accepted.
	Rejected string
}

// PeerState is the observed state of one session.
type PeerState struct {
	Peer
	State string // "established", "idle", "active", ...
	// EndOfRIB is true once the peer sent End-of-RIB for IPv4 unicast in
	// the current session.
	EndOfRIB bool
	// Received counts the neighbour's IPv4 unicast paths in the RIB,
	// Accepted those the import policy let through, and Rejected the
	// others by reason (see the Reason* constants).
	Received int
	Accepted int
	Rejected map[string]int
	// Advertised counts the IPv4 unicast paths the speaker sends the
	// neighbour.
	Advertised int
	// Uptime is how long the session has been established, as of the
	// Peers call; zero when it is not established.
	Uptime time.Duration
	// GR is the session's graceful restart state (RFC 4724).
	GR GracefulRestartState
	// LastError is why the session last went down or failed to come up
	// ("hold-timer-expired", "notification-received ..."), or a hint when
	// a session with a TCP MD5 password is down while the node counts MD5
	// signature failures. "" when nothing went wrong since the speaker
	// started; it outlives a recovery, as history.
	LastError string
}

// GracefulRestartState says where a session stands in graceful restart.
type GracefulRestartState struct {
	// Negotiated is true when both sides announced graceful restart for
	// IPv4 unicast in the last OPEN exchange.
	Negotiated bool
	// PeerRestarting is true while the neighbour's session is down and
	// its paths are kept as stale (RFC 4724 section 4.2).
	PeerRestarting bool
	// LocalRestarting is true while this speaker is in its own restart
	// and holds its updates back until End-of-RIB (section 4.1).
	LocalRestarting bool
}

// Speaker is what the rest of Meridian needs from a BGP implementation.
// Set* calls are declarative: they diff against what was applied and record
// the new set only after it was applied.
type Speaker interface {
	// Run starts the speaker and blocks until ctx is done, then stops it.
	Run(ctx context.Context) error
	SetPeers(ctx context.Context, peers []Peer) error
	SetAdvertisements(ctx context.Context, ads []Advertisement) error
	// SetImportPolicy decides which learned paths Paths marks Rejected
	// and how Peers counts them. It never touches sessions.
	SetImportPolicy(p ImportPolicy)
	// Paths returns the paths learned from peers, best or not, for IPv4
	// unicast, each judged by the import policy (Path.Rejected). Locally
	// originated paths are not included.
	Paths(ctx context.Context) ([]Path, error)
	Peers(ctx context.Context) ([]PeerState, error)
	// Changes is signalled (coalesced, never blocking the speaker) when
	// paths, peer states or Converged change.
	Changes() <-chan struct{}
	// Converged reports that the initial sync after start is done: every
	// configured peer is established and sent End-of-RIB for IPv4 unicast
	// (a peer without graceful restart only needs to be established), or
	// GracefulRestartTime passed since Run started. Callers wait for it
	// before pruning routes they kept across a restart, so a restarting
	// node does not withdraw what its peers are about to re-announce. It
	// stays true once true; without graceful restart it is true as soon
	// as the speaker runs.
	Converged() bool
}
