package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
)

// Each node's meridiand answers on its own socket with its BGP sessions
// and the routes it installed, as an operator would read them.
func TestAPIShowsPeersAndRoutes(t *testing.T) {
	l := needLab(t)
	c := client(t, l)
	nodes := l.Nodes()
	waitMesh(t, c, nodes)
	for _, n := range nodes {
		conn, err := grpc.NewClient("unix://"+l.APISocket(n.Name), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatalf("dial %s API: %v", n.Name, err)
		}
		api := meridianv1.NewMeridianClient(conn)
		eventually(t, 60*time.Second, n.Name+" peers established", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			stream, err := api.ListPeers(ctx, &meridianv1.ListPeersRequest{})
			if err != nil {
				return err
			}
			established := 0
			for {
				resp, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return err
				}
				if resp.GetPeer().GetState() == "established" && resp.GetPeer().GetEndOfRib() {
					established++
				}
			}
			if established != len(nodes)-1 {
				return fmt.Errorf("%d established peers with End-of-RIB, want %d", established, len(nodes)-1)
			}
			return nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		stream, err := api.ListRoutes(ctx, &meridianv1.ListRoutesRequest{Source: meridianv1.Route_SOURCE_KERNEL})
		if err != nil {
			t.Fatalf("%s ListRoutes: %v", n.Name, err)
		}
		bgpRoutes := 0
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s ListRoutes: %v", n.Name, err)
			}
			if resp.GetRoute().GetKind() == meridianv1.Route_KIND_BGP {
				bgpRoutes++
			}
		}
		cancel()
		conn.Close()
		if bgpRoutes != len(nodes)-1 {
			t.Errorf("%s API lists %d BGP kernel routes, want %d", n.Name, bgpRoutes, len(nodes)-1)
		}
	}
}
