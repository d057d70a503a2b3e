package gobgp

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// slogLogger bridges GoBGP's logger interface to slog. The level lives in
// the slog handler, so SetLevel is ignored and GetLevel reports what the
// handler would print; GoBGP uses GetLevel to skip building debug fields.
type slogLogger struct {
	log *slog.Logger
}

var _ gobgplog.Logger = slogLogger{}

func (l slogLogger) emit(level slog.Level, msg string, fields gobgplog.Fields) {
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
		if err, ok := v.(error); ok {
			attrs = append(attrs, slog.String(name, err.Error()))
			continue
		}
		if s, ok := v.(fmt.Stringer); ok {
			attrs = append(attrs, slog.String(name, s.String()))
			continue
		}
		attrs = append(attrs, slog.Any(name, v))
	}
	return attrs
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
