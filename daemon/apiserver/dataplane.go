package apiserver

import (
	"context"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
	"github.com/meridian-net/meridian/daemon/dataplane"
	"github.com/meridian-net/meridian/daemon/services"
	"github.com/meridian-net/meridian/policy"
	"github.com/meridian-net/meridian/policy/policynft"
)

// dataplaneStatus returns the dataplane's last applied state, or Unavailable before
// the first successful sync (no model describes the kernel yet).
func (s *Server) dataplaneStatus() (dataplane.Status, error) {
	if s.src.Dataplane == nil {
		return dataplane.Status{}, unavailable("dataplane")
	}
	st := s.src.Dataplane.Status()
	if st.Services == nil || st.Policy == nil {
		return st, status.Errorf(codes.Unavailable, "dataplane not synced yet: %v", ErrUnavailable)
	}
	return st, nil
}

// ListServices implements meridian.v1.Meridian.
func (s *Server) ListServices(req *meridianv1.ListServicesRequest, stream grpc.ServerStreamingServer[meridianv1.ListServicesResponse]) error {
	st, err := s.dataplaneStatus()
	if err != nil {
		return err
	}
	for _, svc := range serviceRows(st.Services, req.GetNamespace(), req.GetName()) {
		if err := stream.Send(&meridianv1.ListServicesResponse{Service: svc}); err != nil {
			return err
		}
	}
	return nil
}

// serviceRows converts the model's Services (already sorted) that match
// namespace and name (empty matches all).
func serviceRows(m *services.Model, namespace, name string) []*meridianv1.Service {
	var out []*meridianv1.Service
	for i := range m.Services {
		svc := &m.Services[i]
		if (namespace != "" && svc.Namespace != namespace) || (name != "" && svc.Name != name) {
			continue
		}
		row := &meridianv1.Service{Namespace: svc.Namespace, Name: svc.Name}
		if hc := svc.HealthCheck; hc != nil {
			row.HealthCheckNodePort = uint32(hc.NodePort)
			row.LocalEndpoints = uint32(hc.LocalEndpoints)
		}
		for _, p := range svc.Ports {
			port := &meridianv1.ServicePort{
				Key: string(p.Key), Name: p.Name, Protocol: p.Protocol.String(), Family: p.Family.String(),
				Port: uint32(p.Port), NodePort: uint32(p.NodePort),
			}
			if p.Affinity != nil {
				port.AffinityTimeoutSeconds = uint32(p.Affinity.TimeoutSeconds)
			}
			for _, f := range p.Frontends {
				port.Frontends = append(port.Frontends, &meridianv1.Frontend{
					Kind: f.Kind.String(), Address: f.Addr.String(), Protocol: f.Protocol.String(), Port: uint32(f.Port),
					Target: string(f.Target), PodTarget: string(f.PodTarget), Masquerade: f.Masquerade.String(),
				})
			}
			for _, t := range p.Targets {
				tr := &meridianv1.Target{Key: string(t.Key), Scope: t.Scope.String(), Verdict: t.Verdict.String(), Reason: string(t.Reason)}
				for _, e := range t.Endpoints {
					tr.Endpoints = append(tr.Endpoints, &meridianv1.Endpoint{
						Address: e.Addr.String(), Port: uint32(e.Port), Node: e.NodeName,
						Local: e.Local, Ready: e.Ready, Serving: e.Serving, Terminating: e.Terminating,
					})
				}
				port.Targets = append(port.Targets, tr)
			}
			row.Ports = append(row.Ports, port)
		}
		out = append(out, row)
	}
	return out
}

// ListPolicies implements meridian.v1.Meridian.
func (s *Server) ListPolicies(req *meridianv1.ListPoliciesRequest, stream grpc.ServerStreamingServer[meridianv1.ListPoliciesResponse]) error {
	st, err := s.dataplaneStatus()
	if err != nil {
		return err
	}
	// Counters are an addition to the view, not its point: without them
	// (no source, or the kernel read failed) the rules still answer "why".
	var drops []policynft.DropCount
	counted := false
	if s.src.Counters != nil {
		cs, err := s.src.Counters.Counters()
		if err != nil {
			s.log.Warn("read nftables counters for the policy view", "err", err)
		} else {
			drops, counted = policynft.Drops(cs), true
		}
	}
	for _, p := range podRows(st.Policy, drops, counted, req.GetNamespace(), req.GetPod()) {
		if err := stream.Send(&meridianv1.ListPoliciesResponse{Pod: p}); err != nil {
			return err
		}
	}
	return nil
}

// podRows converts the model's pods matching namespace and pod (empty
// matches all), with their counters when counted.
func podRows(m *policy.Model, drops []policynft.DropCount, counted bool, namespace, pod string) []*meridianv1.PodPolicy {
	// By chain, not by the comment's pod name, which is cut for long names.
	byChain := map[string]policynft.DropCount{}
	for _, d := range drops {
		byChain[d.Chain] = d
	}
	sets := map[string]string{}
	for _, ss := range m.SelectorSets {
		sets[ss.Name] = ss.Selector
	}
	for _, b := range m.BlockSets {
		desc := b.CIDR.String()
		if len(b.Except) > 0 {
			var ex []string
			for _, e := range b.Except {
				ex = append(ex, e.String())
			}
			desc += " except " + strings.Join(ex, ",")
		}
		sets[b.Name] = desc
	}
	var out []*meridianv1.PodPolicy
	for i := range m.Pods {
		p := &m.Pods[i]
		if (namespace != "" && p.Namespace != namespace) || (pod != "" && p.Name != pod) {
			continue
		}
		row := &meridianv1.PodPolicy{Namespace: p.Namespace, Name: p.Name}
		for _, ip := range p.IPs {
			row.Ips = append(row.Ips, ip.String())
		}
		dir := func(d *policy.Direction, name string) *meridianv1.PolicyDirection {
			out := &meridianv1.PolicyDirection{Isolated: d.Isolated, Policies: d.Policies}
			for _, r := range d.Rules {
				out.Rules = append(out.Rules, &meridianv1.PolicyRule{
					Policy: r.Policy, Index: int32(r.Index), PeerKind: r.Peer.String(), Peer: sets[r.Set], Ports: portStrings(r.Ports),
				})
			}
			// A chain missing from the kernel (a pod newer than the last
			// sync) has no counters yet: unset, not zero.
			if dc, ok := byChain[policynft.PodChain(p.Key(), name)]; ok && counted && d.Isolated {
				out.Counters = &meridianv1.PolicyCounters{DroppedPackets: dc.Packets, DroppedBytes: dc.Bytes, FailedClosed: dc.FailedClosed}
				for _, h := range dc.Allowed {
					out.Counters.Allowed = append(out.Counters.Allowed, &meridianv1.RuleHits{Policy: h.Policy, Index: int32(h.Index), Packets: h.Packets, Bytes: h.Bytes})
				}
			}
			return out
		}
		row.Ingress = dir(&p.Ingress, policynft.Ingress)
		row.Egress = dir(&p.Egress, policynft.Egress)
		out = append(out, row)
	}
	return out
}

func portStrings(ps []policy.PortMatch) []string {
	var out []string
	for _, p := range ps {
		switch {
		case p.PortSet != "":
			out = append(out, string(p.Protocol)+"@"+p.PortSet)
		case p.From == 0 && p.To == 65535:
			out = append(out, string(p.Protocol))
		case p.From == p.To:
			out = append(out, string(p.Protocol)+"/"+itoa(p.From))
		default:
			out = append(out, string(p.Protocol)+"/"+itoa(p.From)+"-"+itoa(p.To))
		}
	}
	return out
}

func itoa(v uint16) string { return strconv.FormatUint(uint64(v), 10) }

// Evaluate implements meridian.v1.Meridian.
func (s *Server) Evaluate(_ context.Context, req *meridianv1.EvaluateRequest) (*meridianv1.EvaluateResponse, error) {
	pkt, err := parseEvaluate(req)
	if err != nil {
		return nil, err
	}
	st, err := s.dataplaneStatus()
	if err != nil {
		return nil, err
	}
	return evaluate(st.Policy, st.Services, pkt), nil
}

func evaluate(pm *policy.Model, sm *services.Model, pkt policy.Packet) *meridianv1.EvaluateResponse {
	v := pm.Evaluate(pkt)
	resp := &meridianv1.EvaluateResponse{Allowed: v.Allowed, Node: pm.Node, Egress: directionVerdict(v.Egress), Ingress: directionVerdict(v.Ingress)}
	for _, f := range sm.FrontendMap() {
		if f.Addr == pkt.Dst && f.Port == pkt.DstPort && f.Protocol.String() == string(pkt.Protocol) {
			resp.ServiceFrontend = f.Service
			break
		}
	}
	return resp
}

func directionVerdict(d *policy.DirectionVerdict) *meridianv1.DirectionVerdict {
	if d == nil {
		return nil
	}
	out := &meridianv1.DirectionVerdict{Pod: d.Pod, Allowed: d.Allowed, Reason: d.Reason, Policies: d.Policies}
	for _, r := range d.Rules {
		out.Rules = append(out.Rules, &meridianv1.RuleRef{Policy: r.Policy, Index: int32(r.Index)})
	}
	return out
}

// GetDataplaneStatus implements meridian.v1.Meridian.
func (s *Server) GetDataplaneStatus(context.Context, *meridianv1.GetDataplaneStatusRequest) (*meridianv1.GetDataplaneStatusResponse, error) {
	if s.src.Dataplane == nil {
		return nil, unavailable("dataplane")
	}
	return statusResponse(s.src.Dataplane.Status()), nil
}

func statusResponse(st dataplane.Status) *meridianv1.GetDataplaneStatusResponse {
	resp := &meridianv1.GetDataplaneStatusResponse{}
	if st.LastError != nil {
		resp.LastError = st.LastError.Error()
	}
	if st.Services == nil || st.Policy == nil {
		return resp
	}
	resp.Synced = true
	resp.Node = st.Policy.Node
	resp.SyncedAt = st.SyncedAt.UTC().Format(time.RFC3339)
	resp.Services = uint32(len(st.Services.Services))
	resp.PolicyPods = uint32(len(st.Policy.Pods))
	for _, p := range st.Services.ClusterCIDRs {
		resp.ClusterCidrs = append(resp.ClusterCidrs, p.String())
	}
	for _, a := range st.Services.NodePortAddresses {
		resp.NodePortAddresses = append(resp.NodePortAddresses, a.String())
	}
	for _, p := range st.ServiceProblems {
		resp.ServiceProblems = append(resp.ServiceProblems, &meridianv1.Problem{Subject: p.Service, Port: p.Port, Reason: string(p.Reason), Detail: p.Detail})
	}
	for _, p := range st.PolicyProblems {
		resp.PolicyProblems = append(resp.PolicyProblems, &meridianv1.Problem{Subject: p.Policy, Reason: p.Reason, Detail: p.Detail})
	}
	return resp
}
