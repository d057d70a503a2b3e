package main

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
	"github.com/meridian-net/meridian/cni-plugin/config"
	"github.com/meridian-net/meridian/daemon/routes"
)

// hostChecks look at the node meridianctl runs on, beside the daemon it
// asks: the pods' MTU against the uplink's, and whether anything listens
// on the local endpoints' target ports.
func hostChecks(svcs []*meridianv1.Service) []finding {
	var fs []finding
	if h, err := netlink.NewHandle(); err == nil {
		fs = checkMTU(h)
		h.Close()
	}
	return append(fs, probeLocalEndpoints(svcs, time.Second)...)
}

// checkMTU compares the host side of the pods' veths (the pod side has the
// same MTU: the plugin sets both) with the links pod traffic leaves the node
// on: those of the routes Meridian installs to other nodes' pods (the
// smallest MTU among them wins: a tunnel device, tunl0 or VXLAN, has the
// uplink's MTU minus its header), else the default route's. A pod MTU above
// that drops or fragments large packets, the "large transfers hang"
// symptom.
func checkMTU(h *netlink.Handle) []finding {
	links, err := h.LinkList()
	if err != nil {
		return nil
	}
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil
	}
	mtuOf := map[int]int{}
	for _, l := range links {
		mtuOf[l.Attrs().Index] = l.Attrs().MTU
	}
	uplink := 0
	consider := func(idx int) {
		if _, ok := mtuOf[idx]; ok && (uplink == 0 || mtuOf[idx] < mtuOf[uplink]) {
			uplink = idx
		}
	}
	for _, r := range rs {
		if int(r.Protocol) != routes.Protocol {
			continue
		}
		if r.Gw != nil {
			consider(r.LinkIndex)
		}
		for _, nh := range r.MultiPath {
			consider(nh.LinkIndex)
		}
	}
	for _, r := range rs {
		if uplink != 0 {
			break
		}
		isDefault := r.Dst == nil
		if r.Dst != nil {
			ones, _ := r.Dst.Mask.Size()
			isDefault = ones == 0
		}
		if isDefault {
			if r.LinkIndex == 0 && len(r.MultiPath) > 0 {
				consider(r.MultiPath[0].LinkIndex)
			} else {
				consider(r.LinkIndex)
			}
		}
	}
	var up netlink.Link
	above := map[int][]string{}
	for _, l := range links {
		a := l.Attrs()
		if a.Index == uplink {
			up = l
		}
	}
	if up == nil {
		return nil
	}
	upMTU := up.Attrs().MTU
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || !strings.HasPrefix(a.Name, config.DefaultHostVethPrefix) {
			continue
		}
		if a.MTU > upMTU {
			above[a.MTU] = append(above[a.MTU], a.Name)
		}
	}
	var fs []finding
	for _, mtu := range slices.Sorted(maps.Keys(above)) {
		names := above[mtu]
		slices.Sort(names)
		fs = append(fs, finding{sevError, "mtu", up.Attrs().Name,
			fmt.Sprintf("%d pod link(s) (%s) have MTU %d, above %s's %d: larger packets between nodes are dropped or fragmented", len(names), strings.Join(names, ", "), mtu, up.Attrs().Name, upMTU),
			fmt.Sprintf("set the CNI configuration's mtu to %d (the chart's cni.mtu) and recreate the pods", upMTU)})
	}
	return fs
}

// probeLocalEndpoints connects to every TCP endpoint on this node; a
// refusal means the pod is up and nothing listens on the target port
// (the Service's targetPort is wrong, or the process bound another port or
// only loopback). A timeout says nothing: a policy may drop the node's
// probe.
func probeLocalEndpoints(svcs []*meridianv1.Service, timeout time.Duration) []finding {
	type target struct{ addr, svc string }
	var targets []target
	seen := map[string]bool{}
	for _, s := range svcs {
		for _, p := range s.GetPorts() {
			if p.GetProtocol() != "TCP" {
				continue
			}
			for _, t := range p.GetTargets() {
				for _, e := range t.GetEndpoints() {
					a, err := netip.ParseAddr(e.GetAddress())
					if !e.GetLocal() || !e.GetReady() || err != nil {
						continue
					}
					addr := net.JoinHostPort(a.String(), strconv.Itoa(int(e.GetPort())))
					if !seen[addr] {
						seen[addr] = true
						targets = append(targets, target{addr, fmt.Sprintf("%s/%s port %d", s.GetNamespace(), s.GetName(), p.GetPort())})
					}
				}
			}
		}
	}
	const limit = 200
	var fs []finding
	for i, t := range targets {
		if i == limit {
			break
		}
		c, err := net.DialTimeout("tcp", t.addr, timeout)
		if err == nil {
			c.Close()
			continue
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			fs = append(fs, finding{sevError, "services", t.svc, "endpoint " + t.addr + " on this node refuses connections: nothing listens on the target port",
				"check the Service's targetPort against the port the container listens on (and that it binds 0.0.0.0, not 127.0.0.1)"})
		}
	}
	return fs
}
