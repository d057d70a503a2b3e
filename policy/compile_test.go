package policy

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	TCP  = corev1.ProtocolTCP
	UDP  = corev1.ProtocolUDP
	SCTP = corev1.ProtocolSCTP
	In   = metav1.LabelSelectorOpIn
)

var (
	all      = metav1.LabelSelector{}
	allP     = &metav1.LabelSelector{}
	ingressT = networkingv1.PolicyTypeIngress
	egressT  = networkingv1.PolicyTypeEgress
)

// TestSemantics checks each networking.k8s.io/v1 rule on the x/y/z matrix.
// Every probe is checked three ways: the expected truth, the compiled models
// of both nodes (each judging its half), and the reference evaluator.
func TestSemantics(t *testing.T) {
	cases := []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		mutate   func(*Snapshot)
		problems []string // expected Problem reasons
		probes   []string // "src -> dst PROTO/port allow|deny"
	}{
		{
			name: "no policy allows everything",
			probes: []string{
				"x/a -> y/b TCP/80 allow", "z/c -> x/a UDP/9999 allow", "y/b -> 192.0.2.1 ICMP allow",
			},
		},
		{
			name:     "default deny ingress: policyTypes omitted means Ingress only",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "deny", all)},
			probes: []string{
				"y/a -> x/a TCP/80 deny", "x/b -> x/a TCP/80 deny", "x/b -> x/c UDP/81 deny",
				"x/a -> y/a TCP/80 allow", // egress of x is not isolated
				"y/a -> y/b TCP/80 allow", // other namespaces untouched
			},
		},
		{
			name:     "policyTypes omitted with egress rules also isolates egress",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "eg", all, egress(peers(nsPeer(matchP("ns", "y")))))},
			probes: []string{
				"x/a -> y/b TCP/80 allow", "x/a -> z/b TCP/80 deny", "x/a -> 192.0.2.1 TCP/443 deny",
				"y/a -> x/a TCP/80 deny", // and ingress, with no ingress rules
			},
		},
		{
			name:     "explicit policyTypes Egress only leaves ingress open and ignores ingress rules",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "eg", all, types(egressT), ingress(peers(podPeer(matchP("pod", "b")))))},
			probes: []string{
				"y/a -> x/a TCP/80 allow", "x/a -> x/b TCP/80 deny", "x/a -> y/a TCP/80 deny",
			},
		},
		{
			name:     "empty rule lists with both types deny all both ways",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "deny-all", all, types(ingressT, egressT))},
			probes: []string{
				"x/a -> x/b TCP/80 deny", "y/a -> x/c TCP/80 deny", "x/c -> y/a UDP/81 deny", "x/a -> 192.0.2.1 ICMP deny",
				"y/a -> z/a TCP/80 allow",
				"x/a -> x/a TCP/80 allow", // a pod can always reach itself
			},
		},
		{
			name:     "only pods the podSelector selects are isolated",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "deny-a", match("pod", "a"))},
			probes:   []string{"y/a -> x/a TCP/80 deny", "y/a -> x/b TCP/80 allow", "y/a -> x/c TCP/80 allow"},
		},
		{
			name:     "a policy isolates pods of its own namespace only",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "deny-a", match("pod", "a"))},
			probes:   []string{"x/b -> y/a TCP/80 allow", "x/b -> z/a TCP/80 allow", "x/b -> x/a TCP/80 deny"},
		},
		{
			name: "allows are unioned across policies selecting the same pod",
			policies: []*networkingv1.NetworkPolicy{
				netpol("x", "from-b", match("pod", "a"), ingress(peers(podPeer(matchP("pod", "b"))))),
				netpol("x", "from-y", all, ingress(peers(nsPeer(matchP("ns", "y"))))),
			},
			probes: []string{
				"x/b -> x/a TCP/80 allow", "y/c -> x/a TCP/80 allow", "z/c -> x/a TCP/80 deny",
				"x/b -> x/c TCP/80 deny", // x/c is selected only by from-y
				"y/c -> x/c TCP/80 allow",
			},
		},
		{
			name:     "a rule without from allows every source",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "open", all, ingress(nil))},
			probes:   []string{"z/c -> x/a TCP/80 allow", "192.0.2.1 -> x/b UDP/81 allow", "x/a -> x/b ICMP allow"},
		},
		{
			name:     "a rule without to allows every destination on its ports",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "web-out", all, types(egressT), egress(nil, port(TCP, 80)))},
			probes:   []string{"x/a -> z/c TCP/80 allow", "x/a -> 192.0.2.1 TCP/80 allow", "x/a -> z/c TCP/81 deny", "x/a -> z/c UDP/80 deny"},
		},
		{
			name:     "podSelector peer means pods of the policy's namespace",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "from-b", all, ingress(peers(podPeer(matchP("pod", "b")))))},
			probes:   []string{"x/b -> x/a TCP/80 allow", "y/b -> x/a TCP/80 deny", "x/c -> x/a TCP/80 deny"},
		},
		{
			name:     "empty podSelector peer means every pod of the policy's namespace",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "same-ns", all, ingress(peers(podPeer(allP))))},
			probes:   []string{"x/b -> x/a TCP/80 allow", "x/c -> x/a TCP/80 allow", "y/a -> x/a TCP/80 deny", "192.0.2.1 -> x/a TCP/80 deny"},
		},
		{
			name:     "namespaceSelector peer means every pod of matching namespaces",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "from-y", all, ingress(peers(nsPeer(matchP("team", "blue")))))},
			probes:   []string{"y/a -> x/a TCP/80 allow", "y/c -> x/b TCP/80 allow", "z/a -> x/a TCP/80 deny", "x/b -> x/a TCP/80 deny"},
		},
		{
			name:     "empty namespaceSelector peer means every pod in the cluster but no other address",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "pods", all, ingress(peers(nsPeer(allP))))},
			probes:   []string{"y/a -> x/a TCP/80 allow", "z/c -> x/b TCP/80 allow", "x/c -> x/a TCP/80 allow", "192.0.2.1 -> x/a TCP/80 deny"},
		},
		{
			name:     "namespaceSelector and podSelector in one peer select pods by both",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "yb", all, ingress(peers(bothPeer(matchP("ns", "y"), matchP("pod", "b")))))},
			probes:   []string{"y/b -> x/a TCP/80 allow", "y/a -> x/a TCP/80 deny", "x/b -> x/a TCP/80 deny", "z/b -> x/a TCP/80 deny"},
		},
		{
			name:     "namespaceSelector and podSelector as two peers are a union",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "y-or-b", all, ingress(peers(nsPeer(matchP("ns", "y")), podPeer(matchP("pod", "b")))))},
			probes:   []string{"y/a -> x/a TCP/80 allow", "x/b -> x/a TCP/80 allow", "z/b -> x/a TCP/80 deny", "x/c -> x/a TCP/80 deny"},
		},
		{
			name:     "matchExpressions In",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "in", all, ingress(peers(podPeer(expr("pod", In, "b", "c")))))},
			probes:   []string{"x/b -> x/a TCP/80 allow", "x/c -> x/a TCP/80 allow", "x/a -> x/b TCP/80 deny"},
		},
		{
			name:     "matchExpressions NotIn matches pods without the key too",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "notin", all, ingress(peers(podPeer(expr("pod", metav1.LabelSelectorOpNotIn, "b")))))},
			mutate: func(s *Snapshot) {
				s.Pods = append(s.Pods, pod("x", "nolabel", "n2", "10.0.0.9", nil))
			},
			probes: []string{"x/c -> x/a TCP/80 allow", "x/nolabel -> x/a TCP/80 allow", "x/b -> x/a TCP/80 deny"},
		},
		{
			name:     "matchExpressions Exists",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "exists", all, ingress(peers(nsPeer(expr("team", metav1.LabelSelectorOpExists)))))},
			probes:   []string{"y/a -> x/a TCP/80 allow", "z/a -> x/a TCP/80 allow", "x/b -> x/a TCP/80 deny"},
		},
		{
			name:     "matchExpressions DoesNotExist",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "dne", all, ingress(peers(nsPeer(expr("team", metav1.LabelSelectorOpDoesNotExist)))))},
			probes:   []string{"x/b -> x/a TCP/80 allow", "kube-system/coredns -> x/a TCP/80 allow", "y/a -> x/a TCP/80 deny"},
		},
		{
			name:     "policy podSelector with matchExpressions chooses the isolated pods",
			policies: []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "iso"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: *expr("pod", metav1.LabelSelectorOpNotIn, "a")}}},
			probes:   []string{"y/a -> x/a TCP/80 allow", "y/a -> x/b TCP/80 deny", "y/a -> x/c TCP/80 deny"},
		},
		{
			name:     "ipBlock with except matches pod IPs by address only",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "block", all, ingress(peers(blockPeer("10.0.1.0/24", "10.0.1.2/32"))))},
			probes:   []string{"y/a -> x/a TCP/80 allow", "y/c -> x/a TCP/80 allow", "y/b -> x/a TCP/80 deny", "z/a -> x/a TCP/80 deny", "10.0.1.200 -> x/a TCP/80 allow"},
		},
		{
			name: "egress to an ipBlock with except",
			policies: []*networkingv1.NetworkPolicy{
				netpol("x", "out", all, types(egressT), egress(peers(blockPeer("192.0.2.0/24", "192.0.2.128/25", "192.0.2.64/26")))),
			},
			probes: []string{"x/a -> 192.0.2.1 TCP/443 allow", "x/a -> 192.0.2.63 UDP/53 allow", "x/a -> 192.0.2.64 TCP/443 deny", "x/b -> 192.0.2.200 TCP/443 deny", "x/b -> y/a TCP/80 deny"},
		},
		{
			name:     "ipBlock with a host-bits cidr is taken as its network",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "block", all, ingress(peers(blockPeer("10.0.2.3/30"))))},
			probes:   []string{"z/a -> x/a TCP/80 allow", "z/c -> x/a TCP/80 allow", "y/a -> x/a TCP/80 deny"},
		},
		{
			name:     "numeric port",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "p80", all, ingress(nil, port(TCP, 80)))},
			probes:   []string{"y/a -> x/a TCP/80 allow", "y/a -> x/a TCP/81 deny", "y/a -> x/a UDP/80 deny", "y/a -> x/a ICMP deny"},
		},
		{
			name:     "protocol defaults to TCP",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "p80", all, ingress(nil, port("", 80)))},
			probes:   []string{"y/a -> x/a TCP/80 allow", "y/a -> x/a UDP/80 deny", "y/a -> x/a SCTP/80 deny"},
		},
		{
			name:     "UDP and SCTP ports",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "udp-sctp", all, ingress(nil, port(UDP, 81), port(SCTP, 82)))},
			probes:   []string{"y/a -> x/a UDP/81 allow", "y/a -> x/a SCTP/82 allow", "y/a -> x/a TCP/81 deny", "y/a -> x/a SCTP/81 deny"},
		},
		{
			name:     "a port with only a protocol allows every port of it",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "udp", all, ingress(nil, port(UDP, nil)))},
			probes:   []string{"y/a -> x/a UDP/1 allow", "y/a -> x/a UDP/65535 allow", "y/a -> x/a TCP/80 deny"},
		},
		{
			name:     "endPort range is inclusive",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "range", all, ingress(nil, port(TCP, 8000, 8080)))},
			probes:   []string{"y/a -> x/a TCP/7999 deny", "y/a -> x/a TCP/8000 allow", "y/a -> x/a TCP/8080 allow", "y/a -> x/a TCP/8081 deny"},
		},
		{
			name:     "a rule without ports allows every port and protocol",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "from-y", all, ingress(peers(nsPeer(matchP("ns", "y")))))},
			probes:   []string{"y/a -> x/a TCP/1 allow", "y/a -> x/a SCTP/9 allow", "y/a -> x/a ICMP allow"},
		},
		{
			name:     "ingress named port resolves against each target pod",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "http", all, ingress(nil, port(TCP, "http")))},
			probes: []string{
				"y/a -> x/a TCP/80 allow", "y/a -> x/a TCP/8080 deny",
				"y/a -> x/b TCP/8080 allow", "y/a -> x/b TCP/80 deny",
				"y/a -> x/c TCP/80 deny", // x/c has no port named http: the rule allows it nothing
			},
		},
		{
			name:     "named port must match the protocol too",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "udp-http", all, ingress(nil, port(UDP, "serve-81-udp"), port(TCP, "serve-82-sctp")))},
			probes:   []string{"y/a -> x/a UDP/81 allow", "y/a -> x/a TCP/82 deny", "y/a -> x/a SCTP/82 deny"},
		},
		{
			name:     "egress named port resolves against each destination pod",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "http-out", all, types(egressT), egress(peers(nsPeer(allP)), port(TCP, "http")))},
			probes: []string{
				"x/a -> y/a TCP/80 allow", "x/a -> y/b TCP/8080 allow", "x/a -> y/b TCP/80 deny",
				"x/a -> y/c TCP/80 deny", "x/b -> 192.0.2.1 TCP/80 deny",
			},
		},
		{
			name: "egress default deny with DNS to kube-system",
			policies: []*networkingv1.NetworkPolicy{
				netpol("x", "deny-egress", all, types(egressT)),
				netpol("x", "dns", all, types(egressT), egress(peers(nsPeer(matchP("kubernetes.io/metadata.name", "kube-system"))), port(UDP, 53), port(TCP, 53))),
			},
			probes: []string{
				"x/a -> kube-system/coredns UDP/53 allow", "x/b -> kube-system/coredns TCP/53 allow",
				"x/a -> kube-system/coredns TCP/80 deny", "x/a -> y/a UDP/53 deny", "y/a -> x/a TCP/80 allow",
			},
		},
		{
			name:     "host-network pods are not subject to policy and only ipBlocks match them",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "from-x", all, types(ingressT, egressT), ingress(peers(podPeer(allP))), egress(peers(podPeer(allP))))},
			mutate: func(s *Snapshot) {
				h := pod("x", "agent", "n1", "192.168.0.1", map[string]string{"pod": "agent"})
				h.Spec.HostNetwork = true
				s.Pods = append(s.Pods, h)
			},
			probes: []string{
				"x/agent -> x/a TCP/80 deny",  // not a member of the x pods set
				"x/a -> x/agent TCP/80 deny",  // neither as a destination
				"y/a -> x/agent TCP/80 allow", // and not isolated itself
				"x/b -> x/a TCP/80 allow",
			},
		},
		{
			name:     "finished pods and pods without IPs are in no set",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "from-x", all, ingress(peers(podPeer(allP))))},
			mutate: func(s *Snapshot) {
				done := pod("x", "job", "n2", "10.0.0.20", nil)
				done.Status.Phase = corev1.PodSucceeded
				s.Pods = append(s.Pods, done, pod("x", "pending", "n1", "", nil))
			},
			probes: []string{"10.0.0.20 -> x/a TCP/80 deny", "x/c -> x/a TCP/80 allow"},
		},
		{
			name: "an invalid peer selector fails closed for its pods only",
			policies: []*networkingv1.NetworkPolicy{
				netpol("x", "broken", match("pod", "a"), ingress(peers(podPeer(expr("pod", In))), port(TCP, 80))), // In needs values
				netpol("x", "ok", match("pod", "b"), ingress(peers(nsPeer(allP)))),
				netpol("y", "ok", all, ingress(peers(podPeer(allP)))),
			},
			problems: []string{"x/broken " + ReasonInvalidSelector},
			probes: []string{
				"x/b -> x/a TCP/80 deny", "y/a -> x/b TCP/80 allow", "x/a -> x/c TCP/80 allow", "y/a -> y/b TCP/80 allow",
			},
		},
		{
			name: "an invalid CIDR fails closed and other policies still allow",
			policies: []*networkingv1.NetworkPolicy{
				netpol("x", "bad-cidr", all, types(egressT), egress(peers(blockPeer("10.0.0.0/33")))),
				netpol("x", "to-y", all, types(egressT), egress(peers(nsPeer(matchP("ns", "y"))))),
			},
			problems: []string{"x/bad-cidr " + ReasonInvalidIPBlock},
			probes:   []string{"x/a -> y/a TCP/80 allow", "x/a -> 10.0.0.2 TCP/80 deny"},
		},
		{
			name:     "an except outside the cidr is invalid",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "bad-except", all, ingress(peers(blockPeer("10.0.1.0/24", "10.0.2.0/24"))))},
			problems: []string{"x/bad-except " + ReasonInvalidIPBlock},
			probes:   []string{"y/a -> x/a TCP/80 deny", "x/a -> y/a TCP/80 allow"},
		},
		{
			name:     "an invalid policy podSelector isolates its whole namespace",
			policies: []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "bad-sel"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: *expr("pod", metav1.LabelSelectorOpExists, "oops"), Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}}},
			problems: []string{"x/bad-sel " + ReasonInvalidPodSelector},
			probes:   []string{"y/a -> x/a TCP/80 deny", "y/a -> x/c TCP/80 deny", "x/a -> y/a TCP/80 allow"},
		},
		{
			name:     "an endPort below port is invalid",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "bad-range", all, ingress(nil, port(TCP, 90, 80)))},
			problems: []string{"x/bad-range " + ReasonInvalidPort},
			probes:   []string{"y/a -> x/a TCP/85 deny", "y/a -> x/a TCP/90 deny"},
		},
		{
			name:     "a peer with ipBlock and a selector is invalid",
			policies: []*networkingv1.NetworkPolicy{netpol("x", "bad-peer", all, ingress(peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0"}, PodSelector: allP})))},
			problems: []string{"x/bad-peer " + ReasonInvalidPeer},
			probes:   []string{"x/b -> x/a TCP/80 deny"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := fixture()
			s.Policies = tc.policies
			if tc.mutate != nil {
				tc.mutate(&s)
			}
			_, problems := judge(s, Packet{}, nodes)
			var got []string
			for _, p := range problems {
				got = append(got, p.Policy+" "+p.Reason)
			}
			if !slices.Equal(got, tc.problems) {
				t.Errorf("problems = %q, want %q", problems, tc.problems)
			}
			for _, pr := range tc.probes {
				i := strings.LastIndex(pr, " ")
				spec, verdict := pr[:i], pr[i+1:]
				if verdict != "allow" && verdict != "deny" {
					t.Fatalf("probe %q must end in allow or deny", pr)
				}
				wantAllow := verdict == "allow"
				pkt := probe(t, s, spec)
				if got, _ := judge(s, pkt, nodes); got != wantAllow {
					t.Errorf("%s: compiled allowed=%v, want %v", pr, got, wantAllow)
				}
				if got := Reference(s, pkt); got != wantAllow {
					t.Errorf("%s: reference allowed=%v, want %v", pr, got, wantAllow)
				}
			}
		})
	}
}

// TestCompilerMatchesCompile: one Compiler over a sequence of snapshots
// sharing unchanged policy objects (pods come and go, a policy is
// replaced, one goes away) returns what a fresh Compile returns, and keeps
// only the selectors of policies still present.
func TestCompilerMatchesCompile(t *testing.T) {
	web := pod("prod", "web", "n1", "10.0.1.1", map[string]string{"app": "web"}, cport("http", 8080, TCP))
	db := pod("prod", "db", "n1", "10.0.1.2", map[string]string{"app": "db"})
	api := pod("prod", "api", "n1", "10.0.1.3", map[string]string{"app": "api"})
	allowWeb := netpol("prod", "db-from-web", match("app", "db"), types(ingressT),
		ingress(peers(podPeer(matchP("app", "web"))), port(TCP, 5432)))
	fromNS := netpol("prod", "web-from-team", match("app", "web"), types(ingressT),
		ingress(peers(nsPeer(matchP("team", "a"))), port(TCP, "http")))
	s := Snapshot{
		Node:       "n1",
		Namespaces: []*corev1.Namespace{namespace("prod", "team", "a")},
		Pods:       []*corev1.Pod{web, db},
		Policies:   []*networkingv1.NetworkPolicy{allowWeb, fromNS},
	}
	cc := NewCompiler()
	check := func(step string) {
		t.Helper()
		got, gotPs := cc.Compile(s)
		want, wantPs := Compile(s)
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotPs, wantPs) {
			t.Fatalf("%s: Compiler differs from Compile:\n%+v\nwant\n%+v", step, got, want)
		}
	}
	check("first")
	check("same objects")
	s.Pods = []*corev1.Pod{web, db, api}
	check("pod added")
	replaced := netpol("prod", "db-from-web", match("app", "db"), types(ingressT),
		ingress(peers(podPeer(matchP("app", "api"))), port(TCP, 5432)))
	s.Policies = []*networkingv1.NetworkPolicy{replaced, fromNS}
	check("policy replaced by a new object")
	s.Policies = []*networkingv1.NetworkPolicy{replaced}
	check("policy deleted")
	// replaced's podSelector and its one peer selector remain.
	if n := len(cc.sels); n != 2 {
		t.Errorf("memo holds %d selectors, want 2", n)
	}
}
