package apiserver

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
)

// WatchRoutes implements meridian.v1.Meridian. Neither the route applier
// nor the speaker publishes changes, so the watch polls them and diffs: the
// same level-triggered shape as the controllers, and a slow client only
// delays its own stream.
func (s *Server) WatchRoutes(req *meridianv1.WatchRoutesRequest, stream grpc.ServerStreamingServer[meridianv1.WatchRoutesResponse]) error {
	f, err := parseRouteFilter(req.GetPrefix(), req.GetContains(), req.GetSource())
	if err != nil {
		return err
	}
	ctx := stream.Context()
	rows, err := s.readRoutes(ctx, f)
	if err != nil {
		return err
	}
	send := func(t meridianv1.WatchRoutesResponse_EventType, r *meridianv1.Route) error {
		return stream.Send(&meridianv1.WatchRoutesResponse{Type: t, Route: r})
	}
	have := map[string]*meridianv1.Route{}
	for _, r := range rows {
		have[routeKey(r)] = r
		if err := send(meridianv1.WatchRoutesResponse_EVENT_TYPE_ADDED, r); err != nil {
			return err
		}
	}
	if err := send(meridianv1.WatchRoutesResponse_EVENT_TYPE_SYNCED, nil); err != nil {
		return err
	}
	interval := s.WatchInterval
	if interval <= 0 {
		interval = time.Second
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.stopping:
			return status.Error(codes.Unavailable, "meridiand API stopping")
		case <-tick.C:
		}
		rows, err := s.readRoutes(ctx, f)
		if err != nil {
			// A speaker restarting is a pause, not the end of the table:
			// reporting its routes as removed would be a lie.
			if status.Code(err) == codes.Unavailable {
				s.log.Debug("route watch: source unavailable; retrying", "err", err)
				continue
			}
			return err
		}
		added, removed := diffRoutes(have, rows)
		for _, r := range removed {
			delete(have, routeKey(r))
			if err := send(meridianv1.WatchRoutesResponse_EVENT_TYPE_REMOVED, r); err != nil {
				return err
			}
		}
		for _, r := range added {
			have[routeKey(r)] = r
			if err := send(meridianv1.WatchRoutesResponse_EVENT_TYPE_ADDED, r); err != nil {
				return err
			}
		}
	}
}

// routeKey identifies a row by every field, so any change to a row is a
// removal and an addition.
func routeKey(r *meridianv1.Route) string {
	return fmt.Sprintf("%d|%s|%s|%d|%s|%v|%d|%t|%t", r.GetSource(), r.GetPrefix(), strings.Join(r.GetNextHops(), ","),
		r.GetKind(), r.GetPeer(), r.GetAsPath(), r.GetLocalPref(), r.GetBest(), r.GetStale())
}

// diffRoutes returns the rows of now missing from have and those of have
// missing from now: added in the order of now, removed in a stable order.
func diffRoutes(have map[string]*meridianv1.Route, now []*meridianv1.Route) (added, removed []*meridianv1.Route) {
	seen := make(map[string]bool, len(now))
	for _, r := range now {
		k := routeKey(r)
		seen[k] = true
		if have[k] == nil {
			added = append(added, r)
		}
	}
	for k, r := range have {
		if !seen[k] {
			removed = append(removed, r)
		}
	}
	slices.SortFunc(removed, func(a, b *meridianv1.Route) int { return strings.Compare(routeKey(a), routeKey(b)) })
	return added, removed
}
