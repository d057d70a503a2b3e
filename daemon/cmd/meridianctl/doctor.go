package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meridianv1 "github.com/meridian-net/meridian/api/meridian/v1"
)

// finding is one result of doctor: what is wrong and what to do.
type finding struct {
	Severity string `json:"severity"` // error, warning or info
	Check    string `json:"check"`
	Subject  string `json:"subject"`
	Message  string `json:"message"`
	Fix      string `json:"fix"`
}

const (
	sevError   = "error"
	sevWarning = "warning"
	sevInfo    = "info"
)

// The Service CoreDNS answers behind, as kubeadm and the lab name it.
const dnsNamespace, dnsService = "kube-system", "kube-dns"

// doctor walks the checks this node's API can answer. A check whose source
// is unavailable becomes a finding itself rather than stopping the rest.
// extra, when set, adds the checks beyond the daemon's API, given the
// daemon's node and Services.
func doctor(ctx context.Context, out io.Writer, c meridianv1.MeridianClient, format string, extra func(node string, svcs []*meridianv1.Service) []finding) error {
	fs := runChecks(ctx, c)
	if extra != nil {
		st, _ := c.GetDataplaneStatus(ctx, &meridianv1.GetDataplaneStatusRequest{})
		svcs, _ := services(ctx, c, "", "")
		fs = sortFindings(append(fs, extra(st.GetNode(), svcs)...))
	}
	if structured(format) {
		if fs == nil {
			fs = []finding{}
		}
		return printValue(out, format, fs)
	}
	if len(fs) == 0 {
		fmt.Fprintln(out, "no problems found")
		return nil
	}
	if format == formatWide {
		w := newTable(out)
		w.row("SEVERITY", "CHECK", "SUBJECT", "MESSAGE", "FIX")
		for _, f := range fs {
			w.row(f.Severity, f.Check, f.Subject, f.Message, f.Fix)
		}
		return w.Flush()
	}
	for i, f := range fs {
		if i > 0 {
			fmt.Fprintln(out)
		}
		fmt.Fprintf(out, "%-7s  %s: %s: %s\n", strings.ToUpper(f.Severity), f.Check, f.Subject, f.Message)
		fmt.Fprintf(out, "         fix: %s\n", f.Fix)
	}
	return nil
}

func runChecks(ctx context.Context, c meridianv1.MeridianClient) []finding {
	var fs []finding
	add := func(sev, check, subject, msg, fix string) {
		fs = append(fs, finding{Severity: sev, Check: check, Subject: subject, Message: msg, Fix: fix})
	}
	unreachable := func(check string, err error) {
		sev := sevError
		if status.Code(err) == codes.Unavailable {
			sev = sevWarning
		}
		add(sev, check, "meridiand", fmt.Sprintf("cannot check: %v", status.Convert(err).Message()),
			"check that meridiand runs on this node and its logs (journalctl or kubectl logs) for the subsystem")
	}

	// Dataplane: has anything been programmed, and what was refused.
	st, err := c.GetDataplaneStatus(ctx, &meridianv1.GetDataplaneStatusRequest{})
	switch {
	case err != nil:
		unreachable("dataplane", err)
	case !st.GetSynced():
		add(sevError, "dataplane", "nftables", "Services and NetworkPolicies are not programmed yet: "+orDash(st.GetLastError()),
			"check meridiand's logs (subsys=dataplane); `nft list table inet meridian` shows what the kernel has")
	case st.GetLastError() != "":
		add(sevError, "dataplane", "nftables", "the last sync failed; the kernel keeps the previous table: "+st.GetLastError(),
			"check meridiand's logs (subsys=dataplane) for the refused transaction; it is retried with backoff")
	}
	for _, p := range st.GetPolicyProblems() {
		add(sevError, "policy", p.GetSubject(), fmt.Sprintf("policy not compiled (%s): %s; the pods it selects are isolated with no allow rule from it", p.GetReason(), p.GetDetail()),
			"fix the NetworkPolicy (kubectl describe networkpolicy -n "+namespaceOf(p.GetSubject())+")")
	}
	for _, p := range st.GetServiceProblems() {
		switch p.GetReason() {
		case "noEndpoints", "noLocalEndpoints", "terminatingFallback", "headless", "externalName", "nodePortAddressFiltered":
			// Normal operation or reported from the Service rows below.
			continue
		}
		add(sevWarning, "services", p.GetSubject(), fmt.Sprintf("%s not programmed as written (%s): %s", orDash(p.GetPort()), p.GetReason(), p.GetDetail()),
			"fix the Service spec (kubectl get service -o yaml -n "+namespaceOf(p.GetSubject())+")")
	}

	// Services without endpoints refuse connections.
	svcs, svcErr := services(ctx, c, "", "")
	if svcErr != nil {
		if err == nil {
			unreachable("services", svcErr)
		}
	} else {
		for _, s := range svcs {
			id := s.GetNamespace() + "/" + s.GetName()
			for _, p := range s.GetPorts() {
				for _, t := range p.GetTargets() {
					port := fmt.Sprintf("port %d/%s", p.GetPort(), p.GetProtocol())
					switch {
					case t.GetVerdict() == "reject":
						add(sevWarning, "services", id, port+" has no ready endpoints: connections are refused",
							fmt.Sprintf("kubectl get endpointslices -n %s -l kubernetes.io/service-name=%s; check the Service's selector matches running pods and that they pass readiness", s.GetNamespace(), s.GetName()))
					case t.GetVerdict() == "drop" && t.GetScope() == "local":
						add(sevInfo, "services", id, port+" has endpoints, none on this node: external traffic to this node is dropped (externalTrafficPolicy Local)",
							"expected if the load balancer health-checks nodes; otherwise use externalTrafficPolicy Cluster")
					case t.GetReason() == "terminatingFallback":
						add(sevWarning, "services", id, port+" has only terminating endpoints left: traffic goes to pods shutting down",
							"check the rollout: kubectl rollout status -n "+s.GetNamespace())
					}
				}
			}
		}
	}

	// BGP sessions.
	ps, err := peers(ctx, c)
	if err != nil {
		unreachable("bgp", err)
	} else {
		for _, p := range ps {
			if p.GetState() != "established" {
				msg := "BGP session is " + p.GetState() + ": routes to that node's pods are missing here"
				if e := p.GetLastError(); e != "" {
					msg += "; last error: " + e
				}
				add(sevError, "bgp", fmt.Sprintf("%s (%s)", orDash(p.GetName()), p.GetAddress()), msg,
					fmt.Sprintf("check that meridiand runs on %s, that TCP 179 between the nodes is open, and the ASN and password of both ends (meridiand logs, subsys=bgp)", orDash(p.GetName())))
			}
		}
	}
	if rows, err := listRouteRows(ctx, c, &meridianv1.ListRoutesRequest{}); err == nil {
		stale := map[string]bool{}
		for _, r := range rows {
			if r.GetSource() == meridianv1.Route_SOURCE_RIB && r.GetStale() && !stale[r.GetPeer()] {
				stale[r.GetPeer()] = true
				add(sevWarning, "bgp", r.GetPeer(), "routes from this peer are stale: it is restarting gracefully and has not sent them again",
					"wait for the graceful restart time; if it lasts, check meridiand on that node")
			}
			if r.GetSource() == meridianv1.Route_SOURCE_KERNEL && r.GetKind() == meridianv1.Route_KIND_UNSPECIFIED {
				add(sevWarning, "routes", r.GetPrefix(), "a route with Meridian's protocol number that Meridian would not write",
					"the next routing sync replaces it; if it persists, find who writes routes with proto 201 (ip route show proto 201)")
			}
		}
	}

	// DNS: CoreDNS endpoints, and policies blocking local pods from them.
	if svcErr == nil {
		fs = append(fs, checkDNS(ctx, c, svcs)...)
	}

	// Policy drops and fail-closed pods.
	if pods, err := podPolicies(ctx, c, "", ""); err == nil {
		for _, p := range pods {
			for _, d := range []struct {
				name string
				d    *meridianv1.PolicyDirection
			}{{"ingress", p.GetIngress()}, {"egress", p.GetEgress()}} {
				cs := d.d.GetCounters()
				if cs == nil {
					continue
				}
				id := p.GetNamespace() + "/" + p.GetName()
				if cs.GetFailedClosed() {
					add(sevError, "policy", id, d.name+" fails closed: the kernel refused its rules, so it drops every new connection",
						"check meridiand's logs (subsys=dataplane) for the refused transaction")
				} else if cs.GetDroppedPackets() > 0 {
					add(sevInfo, "policy", id, fmt.Sprintf("%d %s packets dropped by default deny of %s", cs.GetDroppedPackets(), d.name, strings.Join(d.d.GetPolicies(), ", ")),
						"if that traffic should pass, find the flow with `meridianctl trace` or `meridianctl policy evaluate` and add a rule to one of those policies")
				}
			}
		}
	} else if status.Code(err) != codes.Unavailable {
		unreachable("policy", err)
	}

	return sortFindings(fs)
}

// sortFindings puts errors first, then warnings, then information.
func sortFindings(fs []finding) []finding {
	order := map[string]int{sevError: 0, sevWarning: 1, sevInfo: 2}
	slices.SortStableFunc(fs, func(a, b finding) int { return order[a.Severity] - order[b.Severity] })
	return fs
}

// extraChecks runs the cluster and host checks o asks for. Those that
// cannot run say so as an info finding rather than failing doctor.
func extraChecks(ctx context.Context, o *options, node string, svcs []*meridianv1.Service) []finding {
	var fs []finding
	if o.cluster {
		st, err := readCluster(ctx, o.target.kubeconfig)
		if err != nil {
			fs = append(fs, finding{sevInfo, "cluster", "kubernetes", "cluster checks skipped: " + err.Error(),
				"pass --kubeconfig (or set $KUBECONFIG) to also check CoreDNS pods, Service selectors and target ports, and kube-proxy; --cluster=false skips them"})
		} else {
			fs = append(fs, clusterChecks(st, node)...)
		}
	}
	if o.host && !o.target.remote() {
		fs = append(fs, hostChecks(svcs)...)
	}
	return fs
}

// checkDNS finds kube-dns, its ready endpoints, and every local pod whose
// policy blocks UDP or TCP 53 to them (egress judged here; ingress of
// endpoints on this node too).
func checkDNS(ctx context.Context, c meridianv1.MeridianClient, svcs []*meridianv1.Service) []finding {
	var fs []finding
	idx := slices.IndexFunc(svcs, func(s *meridianv1.Service) bool {
		return s.GetNamespace() == dnsNamespace && s.GetName() == dnsService
	})
	if idx < 0 {
		return []finding{{sevWarning, "dns", dnsNamespace + "/" + dnsService, "no kube-dns Service is programmed on this node: pods cannot resolve names",
			"kubectl get service -n kube-system kube-dns; install CoreDNS (or check it is named kube-dns)"}}
	}
	type ep struct {
		addr  string
		port  uint32
		proto string
	}
	var eps []ep
	ready := 0
	for _, p := range svcs[idx].GetPorts() {
		if p.GetPort() != 53 {
			continue
		}
		for _, t := range p.GetTargets() {
			if t.GetScope() != "cluster" {
				continue
			}
			for _, e := range t.GetEndpoints() {
				if e.GetReady() {
					ready++
				}
				eps = append(eps, ep{e.GetAddress(), e.GetPort(), p.GetProtocol()})
			}
		}
	}
	if ready == 0 {
		fs = append(fs, finding{sevError, "dns", dnsNamespace + "/" + dnsService, "kube-dns has no ready endpoints: name resolution fails in every pod",
			"kubectl get pods -n kube-system -l k8s-app=kube-dns; check CoreDNS's logs and readiness"})
	}
	pods, err := podPolicies(ctx, c, "", "")
	if err != nil {
		return fs
	}
	for _, pod := range pods {
		ips := pod.GetIps()
		if len(ips) == 0 {
			continue
		}
		src := ips[0]
		blocked := map[string][]string{} // proto -> deciding policies
		var seen []string
		for _, e := range eps {
			if a, err := netip.ParseAddr(e.addr); err != nil || (a.Is4() != strings.Contains(src, ".")) {
				continue
			}
			resp, err := c.Evaluate(ctx, &meridianv1.EvaluateRequest{Source: src, Destination: e.addr, Protocol: e.proto, Port: e.port})
			if err != nil || resp.GetAllowed() {
				continue
			}
			var by []string
			for _, d := range []*meridianv1.DirectionVerdict{resp.GetEgress(), resp.GetIngress()} {
				if d != nil && !d.GetAllowed() {
					by = append(by, d.GetPolicies()...)
				}
			}
			if _, ok := blocked[e.proto]; !ok {
				seen = append(seen, e.proto)
			}
			blocked[e.proto] = append(blocked[e.proto], by...)
		}
		if len(seen) == 0 {
			continue
		}
		slices.Sort(seen)
		var by []string
		for _, p := range seen {
			by = append(by, blocked[p]...)
		}
		slices.Sort(by)
		by = slices.Compact(by)
		fs = append(fs, finding{sevError, "dns", pod.GetNamespace() + "/" + pod.GetName(),
			fmt.Sprintf("policy blocks DNS (%s 53) from this pod to kube-dns: denied by %s", strings.Join(seen, ", "), strings.Join(by, ", ")),
			"add an egress rule to one of those policies allowing UDP and TCP 53 to namespaceSelector kubernetes.io/metadata.name=kube-system, podSelector k8s-app=kube-dns"})
	}
	return fs
}

func namespaceOf(id string) string {
	ns, _, _ := strings.Cut(id, "/")
	return ns
}
