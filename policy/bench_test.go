package policy

import (
	"fmt"
	"testing"
)

// BenchmarkCompile is the scale: 1k policies over 2k pods on 3
// nodes, compiled for one node.
func BenchmarkCompile(b *testing.B) {
	s := Snapshot{Node: "n0"}
	for i := range 20 {
		s.Namespaces = append(s.Namespaces, namespace(fmt.Sprintf("ns%d", i), "team", fmt.Sprintf("t%d", i%4)))
	}
	for i := range 2000 {
		ns := fmt.Sprintf("ns%d", i%20)
		s.Pods = append(s.Pods, pod(ns, fmt.Sprintf("p%d", i), fmt.Sprintf("n%d", i%3), fmt.Sprintf("10.%d.%d.%d", i%3, i/250, i%250+1),
			map[string]string{"app": fmt.Sprintf("app%d", i%50), "tier": fmt.Sprintf("t%d", i%3)},
			cport("http", int32(8000+i%3), TCP)))
	}
	for i := range 1000 {
		ns := fmt.Sprintf("ns%d", i%20)
		s.Policies = append(s.Policies, netpol(ns, fmt.Sprintf("np%d", i), match("app", fmt.Sprintf("app%d", i%50)),
			types(ingressT, egressT),
			ingress(peers(podPeer(matchP("tier", fmt.Sprintf("t%d", i%3))), nsPeer(matchP("team", fmt.Sprintf("t%d", i%4)))), port(TCP, "http")),
			egress(peers(bothPeer(matchP("team", "t1"), matchP("app", fmt.Sprintf("app%d", (i+1)%50)))), port(TCP, 8000, 8002)),
			egress(peers(blockPeer("0.0.0.0/0", "10.0.0.0/8")), port(UDP, 53))))
	}
	var m *Model
	for b.Loop() {
		m, _ = Compile(s)
	}
	rules := 0
	for _, p := range m.Pods {
		rules += len(p.Ingress.Rules) + len(p.Egress.Rules)
	}
	b.ReportMetric(float64(len(m.SelectorSets)), "sets")
	b.ReportMetric(float64(rules), "rules")
}
