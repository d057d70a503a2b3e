package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
)

func services(ctx context.Context, c meridianv1.MeridianClient, namespace, name string) ([]*meridianv1.Service, error) {
	stream, err := c.ListServices(ctx, &meridianv1.ListServicesRequest{Namespace: namespace, Name: name})
	if err != nil {
		return nil, err
	}
	msgs, err := recvAll(stream)
	if err != nil {
		return nil, err
	}
	out := make([]*meridianv1.Service, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, m.GetService())
	}
	return out, nil
}

// listServices prints one row per Service port (table) or per frontend
// and target with every endpoint (wide).
func listServices(ctx context.Context, out io.Writer, c meridianv1.MeridianClient, namespace, name, format string) error {
	svcs, err := services(ctx, c, namespace, name)
	if err != nil {
		return err
	}
	if structured(format) {
		return printProtos(out, format, svcs)
	}
	w := newTable(out)
	if format == formatWide {
		w.row("NAMESPACE", "NAME", "FRONTEND", "KIND", "MASQUERADE", "FOR", "TARGET", "VERDICT", "REASON", "ENDPOINTS")
		for _, s := range svcs {
			for _, p := range s.GetPorts() {
				for _, f := range p.GetFrontends() {
					for _, use := range frontendTargets(f) {
						t := findTarget(p, use.key)
						w.row(s.GetNamespace(), s.GetName(), frontendString(f), f.GetKind(), f.GetMasquerade(), use.who,
							orDash(t.GetScope()), orDash(t.GetVerdict()), orDash(t.GetReason()), orDash(endpointList(t)))
					}
				}
			}
		}
		return w.Flush()
	}
	w.row("NAMESPACE", "NAME", "PORT", "FRONTENDS", "VERDICT", "ENDPOINTS")
	for _, s := range svcs {
		for _, p := range s.GetPorts() {
			var fronts []string
			for _, f := range p.GetFrontends() {
				fronts = append(fronts, f.GetAddress()+":"+strconv.FormatUint(uint64(f.GetPort()), 10))
			}
			port := fmt.Sprintf("%d/%s", p.GetPort(), p.GetProtocol())
			if p.GetNodePort() != 0 {
				port = fmt.Sprintf("%d:%d/%s", p.GetPort(), p.GetNodePort(), p.GetProtocol())
			}
			w.row(s.GetNamespace(), s.GetName(), port, strings.Join(fronts, ","), targetVerdicts(p), endpointCount(p))
		}
	}
	return w.Flush()
}

type targetUse struct{ who, key string }

// frontendTargets is which target serves whom for one frontend.
func frontendTargets(f *meridianv1.Frontend) []targetUse {
	if f.GetPodTarget() == "" {
		return []targetUse{{"all", f.GetTarget()}}
	}
	return []targetUse{{"outside", f.GetTarget()}, {"pods,node", f.GetPodTarget()}}
}

func findTarget(p *meridianv1.ServicePort, key string) *meridianv1.Target {
	for _, t := range p.GetTargets() {
		if t.GetKey() == key {
			return t
		}
	}
	return nil
}

func frontendString(f *meridianv1.Frontend) string {
	return fmt.Sprintf("%s:%d/%s", f.GetAddress(), f.GetPort(), f.GetProtocol())
}

// targetVerdicts is "dnat", or per scope ("cluster=dnat,local=drop").
func targetVerdicts(p *meridianv1.ServicePort) string {
	ts := p.GetTargets()
	var out []string
	for _, t := range ts {
		v := t.GetVerdict()
		if t.GetReason() != "" {
			v += "(" + t.GetReason() + ")"
		}
		if len(ts) > 1 {
			v = t.GetScope() + "=" + v
		}
		out = append(out, v)
	}
	return strings.Join(out, ",")
}

// endpointCount is "ready/total" of the cluster target (the local one is a
// subset), with how many are on this node.
func endpointCount(p *meridianv1.ServicePort) string {
	ts := p.GetTargets()
	if len(ts) == 0 {
		return "-"
	}
	var ready, local int
	eps := ts[0].GetEndpoints()
	for _, e := range eps {
		if e.GetReady() {
			ready++
		}
		if e.GetLocal() {
			local++
		}
	}
	return fmt.Sprintf("%d/%d (%d local)", ready, len(eps), local)
}

// endpointList is every endpoint as address:port@node with its conditions.
func endpointList(t *meridianv1.Target) string {
	var out []string
	for _, e := range t.GetEndpoints() {
		out = append(out, endpointString(e))
	}
	return strings.Join(out, " ")
}

func endpointString(e *meridianv1.Endpoint) string {
	var flags []string
	if e.GetLocal() {
		flags = append(flags, "local")
	}
	if !e.GetReady() {
		flags = append(flags, "not-ready")
	}
	if e.GetTerminating() {
		flags = append(flags, "terminating")
	}
	if e.GetTerminating() && e.GetServing() {
		flags = append(flags, "serving")
	}
	s := fmt.Sprintf("%s:%d@%s", e.GetAddress(), e.GetPort(), orDash(e.GetNode()))
	if len(flags) > 0 {
		s += "(" + strings.Join(flags, ",") + ")"
	}
	return s
}
