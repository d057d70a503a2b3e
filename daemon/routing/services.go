package routing

import (
	"context"
	"fmt"
	"slices"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meridian-net/meridian/bgp"
	"github.com/meridian-net/meridian/daemon/cluster"
)

// serviceSource watches Services and EndpointSlices. It is started the
// first time a BGPConfiguration asks for externalIP or LoadBalancer
// blocks: most clusters never do, and a node agent should not hold every
// EndpointSlice of the cluster for nothing.
type serviceSource struct {
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister
	synced   []cache.InformerSynced
}

func newServiceSource(ctx context.Context, factory informers.SharedInformerFactory, node string, wake func()) (*serviceSource, error) {
	svcInf := factory.Core().V1().Services()
	// Service edits are rare; any of them may change an address.
	if _, err := svcInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { wake() },
		UpdateFunc: func(any, any) { wake() },
		DeleteFunc: func(any) { wake() },
	}); err != nil {
		return nil, fmt.Errorf("watch services: %w", err)
	}
	sliceInf := factory.Discovery().V1().EndpointSlices()
	if _, err := sliceInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { wake() },
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*discoveryv1.EndpointSlice)
			n, ok2 := newObj.(*discoveryv1.EndpointSlice)
			// Endpoints change all the time; only whether this node has a
			// ready one decides what it advertises.
			if !ok1 || !ok2 || (cluster.LocalReadyEndpoints(node, o) > 0) != (cluster.LocalReadyEndpoints(node, n) > 0) {
				wake()
			}
		},
		DeleteFunc: func(any) { wake() },
	}); err != nil {
		return nil, fmt.Errorf("watch endpointslices: %w", err)
	}
	s := &serviceSource{
		services: svcInf.Lister(),
		slices:   sliceInf.Lister(),
		synced:   []cache.InformerSynced{svcInf.Informer().HasSynced, sliceInf.Informer().HasSynced},
	}
	// Start only starts the informers not running yet.
	factory.Start(ctx.Done())
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), s.synced...) {
			wake()
		}
	}()
	return s, nil
}

func (s *serviceSource) hasSynced() bool {
	for _, f := range s.synced {
		if !f() {
			return false
		}
	}
	return true
}

// serviceAdvertisements computes what this node advertises for Services.
// Until the Services are listed it keeps the last result, so a restart of
// the informers never withdraws what is still wanted.
func (c *Controller) serviceAdvertisements(ctx context.Context, blocks cluster.ServiceBlocks, self cluster.NodeInfo) ([]bgp.Advertisement, error) {
	if !blocks.NeedsServices() {
		ads, _ := cluster.ServiceAdvertisements(blocks, self, nil, nil)
		c.serviceAds = ads
		return ads, nil
	}
	if c.svc == nil {
		svc, err := newServiceSource(ctx, c.factory, c.cfg.NodeName, c.wake)
		if err != nil {
			return nil, err
		}
		c.svc = svc
		c.log.Info("watching Services and EndpointSlices for BGP advertisement")
	}
	if !c.svc.hasSynced() {
		ads, _ := cluster.ServiceAdvertisements(cluster.ServiceBlocks{ClusterIPs: blocks.ClusterIPs}, self, nil, nil)
		for _, a := range c.serviceAds {
			if a.Prefix.Bits() == 32 && !slices.ContainsFunc(ads, a.Equal) {
				ads = append(ads, a)
			}
		}
		return ads, nil
	}
	svcs, err := c.svc.services.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	eps, err := c.svc.slices.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list endpointslices: %w", err)
	}
	ads, skips := cluster.ServiceAdvertisements(blocks, self, svcs, eps)
	for _, s := range skips {
		c.log.Debug("service address not advertised", "service", s.Service, "ip", s.IP, "reason", s.Reason)
	}
	c.serviceAds = ads
	return ads, nil
}

// mergeAdvertisements appends extra to ads, leaving out prefixes already
// there.
func mergeAdvertisements(ads, extra []bgp.Advertisement) []bgp.Advertisement {
	for _, a := range extra {
		if !slices.ContainsFunc(ads, func(b bgp.Advertisement) bool { return b.Prefix == a.Prefix }) {
			ads = append(ads, a)
		}
	}
	return ads
}
