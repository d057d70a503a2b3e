package gobgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"sync"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// slogLogger bridges GoBGP's logger interface to slog. The level lives in
// the slog handler, so SetLevel is ignored and GetLevel reports what the
// handler would print; GoBGP uses GetLevel to skip building debug fields.
// When down is set, every entry also passes through it, whatever the level,
// so it can keep why sessions went down.
type slogLogger struct {
	log  *slog.Logger
	down *downReasons
}

var _ gobgplog.Logger = slogLogger{}

func (l slogLogger) emit(level slog.Level, msg string, fields gobgplog.Fields) {
	if l.down != nil {
		l.down.observe(msg, fields)
	}
	ctx := context.Background()
	if !l.log.Enabled(ctx, level) {
		return
	}
	l.log.LogAttrs(ctx, level, msg, fieldAttrs(fields)...)
}

// fieldAttrs turns GoBGP's fields into attributes with stable keys. GoBGP
// puts the neighbour address under "Key" when the topic is a peer; that
// becomes the "peer" key the rest of Meridian uses.
func fieldAttrs(fields gobgplog.Fields) []slog.Attr {
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	peerTopic := fields["Topic"] == "Peer"
	attrs := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		v := fields[k]
		name := strings.ToLower(k)
		switch {
		case k == "Key" && peerTopic:
			name = "peer"
		case k == gobgplog.FieldFacility:
			name = "facility"
		}
		if s, ok := stringOf(v); ok {
			attrs = append(attrs, slog.String(name, s))
			continue
		}
		attrs = append(attrs, slog.Any(name, v))
	}
	return attrs
}

// stringOf renders strings, errors and Stringers. GoBGP passes some as typed nil
// pointers (the FSM's reason before the first transition), whose String
// method would panic on a value receiver.
func stringOf(v any) (string, bool) {
	if v == nil {
		return "", false
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && rv.IsNil() {
		return "", false
	}
	switch x := v.(type) {
	case string:
		return x, true
	case error:
		return x.Error(), true
	case fmt.Stringer:
		return x.String(), true
	}
	return "", false
}

// downReasons keeps, per neighbour, why its session last went down or
// failed to come up. GoBGP's API has no such field (its PeerState carries
// counters, not reasons); its log has, in two entries it always makes
// whatever the level: "Peer Down" when an established session ends, with
// the reason including a NOTIFICATION it sent, and the debug entry "state
// changed" for every FSM transition, whose move to idle from OpenSent or
// OpenConfirm says why a session failed before it was up (a NOTIFICATION
// such as a bad peer AS, a hold timer, a closed connection).
type downReasons struct {
	mu sync.Mutex
	m  map[netip.Addr]string
}

func newDownReasons() *downReasons {
	return &downReasons{m: make(map[netip.Addr]string)}
}

func (d *downReasons) observe(msg string, fields gobgplog.Fields) {
	a, reason, ok := downReason(msg, fields)
	if !ok {
		return
	}
	d.mu.Lock()
	d.m[a] = reason
	d.mu.Unlock()
}

// get returns the last reason recorded for a, "" if none.
func (d *downReasons) get(a netip.Addr) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m[a]
}

// forget drops a's history, for a neighbour configured anew.
func (d *downReasons) forget(a netip.Addr) {
	d.mu.Lock()
	delete(d.m, a)
	d.mu.Unlock()
}

// GoBGP's names for the FSM states in its log fields (bgp.FSMState).
const (
	fsmIdle        = "BGP_FSM_IDLE"
	fsmEstablished = "BGP_FSM_ESTABLISHED"
)

// downReason picks a session failure out of one GoBGP log entry: the
// neighbour and GoBGP's reason ("hold-timer-expired", "read-failed",
// "notification-received cease/administrative-reset", ...).
func downReason(msg string, fields gobgplog.Fields) (netip.Addr, string, bool) {
	if fields["Topic"] != "Peer" {
		return netip.Addr{}, "", false
	}
	key, _ := fields["Key"].(string)
	a, err := netip.ParseAddr(key)
	if err != nil {
		return netip.Addr{}, "", false
	}
	var reason string
	switch msg {
	case "Peer Down":
		reason, _ = stringOf(fields["Reason"])
	case "state changed":
		// Leaving Established is "Peer Down"'s, which knows better (it
		// names the NOTIFICATION this side sent) and is logged first.
		oldState, _ := stringOf(fields["old"])
		newState, _ := stringOf(fields["new"])
		if newState != fsmIdle || oldState == fsmEstablished || oldState == fsmIdle {
			return netip.Addr{}, "", false
		}
		reason, _ = stringOf(fields["reason"])
	default:
		return netip.Addr{}, "", false
	}
	if reason == "" {
		return netip.Addr{}, "", false
	}
	return a.Unmap(), describeReason(reason), true
}

// reasonText explains GoBGP's terser reasons (fsmStateReason); GoBGP's
// own word stays in parentheses, so logs and the API can be matched.
var reasonText = map[string]string{
	"read-failed":             "connection lost",
	"write-failed":            "connection lost on write",
	"graceful-restart":        "connection lost; peer restarting gracefully, its paths kept as stale",
	"hold-timer-expired":      "no KEEPALIVE or UPDATE within the hold time",
	"restart-timer-expired":   "peer did not come back within its graceful restart time; its paths were dropped",
	"hard-reset":              "peer reset the session with a Hard Reset (RFC 8538), e.g. it stopped or was deconfigured",
	"invalid-msg":             "malformed message",
	"admin-down":              "administratively shut down",
	"dying":                   "session deconfigured",
	"idle-hold-timer-expired": "idle hold timer expired",
}

// describeReason renders one of GoBGP's reasons for people; NOTIFICATION
// reasons ("notification-received cease/administrative-reset") already
// say what they are.
func describeReason(reason string) string {
	if text, ok := reasonText[reason]; ok {
		return text + " (" + reason + ")"
	}
	return reason
}

// Panic keeps GoBGP's contract: the caller expects not to return.
func (l slogLogger) Panic(msg string, fields gobgplog.Fields) {
	l.emit(slog.LevelError, msg, fields)
	panic(msg)
}

// Fatal is logged as an error without exiting: GoBGP only uses it for its
// gRPC listener, which this package never starts, and exiting the daemon
// from inside a library is not its call.
func (l slogLogger) Fatal(msg string, fields gobgplog.Fields) {
	l.emit(slog.LevelError, msg, fields)
}

func (l slogLogger) Error(msg string, fields gobgplog.Fields) {
	l.emit(slog.LevelError, msg, fields)
}

func (l slogLogger) Warn(msg string, fields gobgplog.Fields) {
	l.emit(slog.LevelWarn, msg, fields)
}

func (l slogLogger) Info(msg string, fields gobgplog.Fields) {
	l.emit(slog.LevelInfo, msg, fields)
}

func (l slogLogger) Debug(msg string, fields gobgplog.Fields) {
	l.emit(slog.LevelDebug, msg, fields)
}

func (l slogLogger) SetLevel(gobgplog.LogLevel) {}

func (l slogLogger) GetLevel() gobgplog.LogLevel {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		return gobgplog.DebugLevel
	}
	return gobgplog.InfoLevel
}
