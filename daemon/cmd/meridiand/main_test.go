package main

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/bgp/gobgp"
	"github.com/meridian-net/meridian/daemon/apiserver"
)

// The API answers Unavailable, not Internal, before the first speaker and
// while a stopped one waits to be replaced: both pass on their own.
func TestCurrentSpeakerUnavailable(t *testing.T) {
	var c currentSpeaker
	if _, err := c.Paths(context.Background()); !errors.Is(err, apiserver.ErrUnavailable) {
		t.Errorf("Paths before any speaker: %v, want ErrUnavailable", err)
	}
	if _, err := c.Peers(context.Background()); !errors.Is(err, apiserver.ErrUnavailable) {
		t.Errorf("Peers before any speaker: %v, want ErrUnavailable", err)
	}

	s, err := gobgp.New(bgp.Config{RouterID: netip.MustParseAddr("192.0.2.1"), ASN: bgp.DefaultASN, ListenPort: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.set(s)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.Peers(context.Background())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Peers of a running speaker: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := c.Paths(context.Background()); err != nil {
		t.Errorf("Paths of a running speaker: %v", err)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatalf("speaker Run: %v", err)
	}
	if _, err := c.Paths(context.Background()); !errors.Is(err, apiserver.ErrUnavailable) || !errors.Is(err, gobgp.ErrStopped) {
		t.Errorf("Paths of a stopped speaker: %v, want ErrUnavailable wrapping ErrStopped", err)
	}
	if _, err := c.Peers(context.Background()); !errors.Is(err, apiserver.ErrUnavailable) {
		t.Errorf("Peers of a stopped speaker: %v, want ErrUnavailable", err)
	}
}
