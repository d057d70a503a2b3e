// Package crdtest holds the objects Meridian's CRDs must accept or refuse,
// shared by the offline schema test in api/crd/manifests and the test
// against a real kube-apiserver in integration/crds, so both judge the same
// cases.
package crdtest

import (
	"maps"

	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Object returns an unstructured BGPConfiguration or BGPPeer; a nil spec is
// left out.
func Object(kind, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.SchemeGroupVersion.String(),
		"kind":       kind,
		"metadata":   map[string]any{"name": name},
	}}
	if spec != nil {
		u.Object["spec"] = spec
	}
	return u
}

// Valid is an object the schema must accept. Defaults are fields (dotted
// paths) and the values the API server must fill in.
type Valid struct {
	Name     string
	Object   *unstructured.Unstructured
	Defaults map[string]any
}

// Invalid is an object the schema must refuse; Want are substrings of the
// message.
type Invalid struct {
	Name   string
	Object *unstructured.Unstructured
	Want   []string
}

// EvaluationErrors are substrings of a message for a rule that failed to
// evaluate rather than judged the object: such a message buries the reason.
var EvaluationErrors = []string{"conversion error", "evaluating rule", "evaluation error", "cost budget"}

// ValidCases returns fresh objects on every call: the API server's answers
// and the offline defaulting both write into them.
func ValidCases() []Valid {
	return []Valid{
		{
			Name: "minimal peer",
			Object: Object("BGPPeer", "tor1", map[string]any{
				"peerIP": "192.0.2.1", "asNumber": int64(65001),
				"maxPrefixes": map[string]any{"limit": int64(100)},
			}),
			Defaults: map[string]any{
				"spec.holdTime":                "90s",
				"spec.gracefulRestart.enabled": true,
				"spec.maxPrefixes.action":      "Restart",
			},
		},
		{
			Name: "peer with every field",
			Object: Object("BGPPeer", "tor2", map[string]any{
				"peerIP": "192.0.2.2", "asNumber": int64(4200000000),
				"nodeSelector":    map[string]any{"matchLabels": map[string]any{"rack": "r2"}},
				"sourceAddress":   "192.0.2.10",
				"ebgpMultihop":    int64(2),
				"password":        map[string]any{"name": "bgp", "key": "tor2", "namespace": "kube-system"},
				"holdTime":        "9s",
				"keepaliveTime":   "3s",
				"gracefulRestart": map[string]any{"enabled": false, "restartTime": "2m"},
				"passive":         true,
				"maxPrefixes":     map[string]any{"limit": int64(1000), "action": "Drop"},
			}),
			Defaults: map[string]any{"spec.gracefulRestart.enabled": false},
		},
		{
			Name: "peer on one node, hold time 0",
			Object: Object("BGPPeer", "tor3", map[string]any{
				"peerIP": "192.0.2.3", "asNumber": int64(65003), "node": "node-1",
				"holdTime": "0s", "keepaliveTime": "0s",
			}),
		},
		{
			Name:   "configuration without spec",
			Object: Object("BGPConfiguration", "default", nil),
			Defaults: map[string]any{
				"spec.asNumber":       int64(64512),
				"spec.nodeToNodeMesh": true,
				"spec.encapsulation":  "CrossSubnet",
			},
		},
		{
			Name: "configuration with every field",
			Object: Object("BGPConfiguration", "default", map[string]any{
				"asNumber": int64(4200000000), "nodeToNodeMesh": false,
				"routeReflectorClusterID": "10.0.0.1",
				"communities":             []any{"65000:100", "64512:1:4294967295"},
				"localPreference":         int64(200),
				"acceptedPrefixes":        []any{"10.244.0.0/16", "fd00::/48"},
				"encapsulation":           "Always",
				"serviceClusterIPs":       []any{map[string]any{"cidr": "10.96.0.0/12"}},
				"serviceExternalIPs":      []any{map[string]any{"cidr": "198.51.100.0/24"}},
				"serviceLoadBalancerIPs":  []any{map[string]any{"cidr": "203.0.113.0/24"}},
			}),
			// An explicit false must not be replaced by the default.
			Defaults: map[string]any{"spec.nodeToNodeMesh": false},
		},
	}
}

func peer(name string, extra map[string]any) *unstructured.Unstructured {
	spec := map[string]any{"peerIP": "192.0.2.1", "asNumber": int64(65001)}
	maps.Copy(spec, extra)
	return Object("BGPPeer", name, spec)
}

func config(spec map[string]any) *unstructured.Unstructured {
	return Object("BGPConfiguration", "default", spec)
}

// InvalidCases returns fresh objects on every call.
func InvalidCases() []Invalid {
	return []Invalid{
		{"config not named default", Object("BGPConfiguration", "other", map[string]any{}),
			[]string{"must be named default"}},
		{"peerIP not an IP", peer("bad-ip", map[string]any{"peerIP": "tor1.example"}),
			[]string{"spec.peerIP", "must be an IPv4 address"}},
		{"peerIP IPv6", peer("bad-ip6", map[string]any{"peerIP": "2001:db8::1"}),
			[]string{"spec.peerIP", "must be an IPv4 address"}},
		{"peerIP not canonical", peer("bad-ip0", map[string]any{"peerIP": "192.0.2.01"}),
			[]string{"spec.peerIP", "must be an IPv4 address"}},
		{"peerIP missing", Object("BGPPeer", "no-ip", map[string]any{"asNumber": int64(65001)}),
			[]string{"spec.peerIP", "Required value"}},
		{"asNumber 0", peer("asn0", map[string]any{"asNumber": int64(0)}),
			[]string{"spec.asNumber", "should be greater than or equal to 1"}},
		{"asNumber too large", peer("asn-big", map[string]any{"asNumber": int64(4294967295)}),
			[]string{"spec.asNumber", "should be less than or equal to 4294967294"}},
		{"node and nodeSelector", peer("both", map[string]any{
			"node": "node-1", "nodeSelector": map[string]any{"matchLabels": map[string]any{"rack": "r1"}}}),
			[]string{"node and nodeSelector are mutually exclusive"}},
		{"keepalive equals hold", peer("ka-eq", map[string]any{"holdTime": "9s", "keepaliveTime": "9s"}),
			[]string{"keepaliveTime must be less than holdTime"}},
		{"keepalive above default hold", peer("ka-default", map[string]any{"keepaliveTime": "100s"}),
			[]string{"keepaliveTime must be less than holdTime"}},
		{"keepalive with hold 0", peer("ka-hold0", map[string]any{"holdTime": "0s", "keepaliveTime": "1s"}),
			[]string{"keepaliveTime must be less than holdTime (and 0 when holdTime is 0)"}},
		{"hold 2s", peer("hold2", map[string]any{"holdTime": "2s"}),
			[]string{"holdTime must be 0 (no keepalives) or at least 3s"}},
		{"hold not a duration", peer("hold-bad", map[string]any{"holdTime": "ninety"}),
			[]string{"spec.holdTime", "should match"}},
		{"ttl 0", peer("ttl0", map[string]any{"ebgpMultihop": int64(0)}),
			[]string{"spec.ebgpMultihop", "greater than or equal to 1"}},
		{"ttl 256", peer("ttl256", map[string]any{"ebgpMultihop": int64(256)}),
			[]string{"spec.ebgpMultihop", "less than or equal to 255"}},
		{"restart time too long", peer("gr-long", map[string]any{"gracefulRestart": map[string]any{"restartTime": "4096s"}}),
			[]string{"restartTime must be between 1s and 4095s"}},
		{"password without key", peer("pw", map[string]any{"password": map[string]any{"name": "bgp", "namespace": "kube-system"}}),
			[]string{"spec.password.key", "Required value"}},
		{"max prefixes without limit", peer("mp0", map[string]any{"maxPrefixes": map[string]any{"action": "Warn"}}),
			[]string{"spec.maxPrefixes.limit", "Required value"}},
		{"max prefixes action", peer("mp", map[string]any{"maxPrefixes": map[string]any{"limit": int64(5), "action": "Ignore"}}),
			[]string{"spec.maxPrefixes.action", "Unsupported value", `"Drop"`}},
		{"encapsulation Sometimes", config(map[string]any{"encapsulation": "Sometimes"}),
			[]string{"spec.encapsulation", "Unsupported value", `"CrossSubnet"`}},
		{"community out of range", config(map[string]any{"communities": []any{"70000:1"}}),
			[]string{"spec.communities[0]", "a standard community has two parts of at most 65535"}},
		{"large community out of range", config(map[string]any{"communities": []any{"1:2:4294967296"}}),
			[]string{"spec.communities[0]", "a large community three parts of at most 4294967295"}},
		{"community malformed", config(map[string]any{"communities": []any{"no-export"}}),
			[]string{"spec.communities[0]", "should match"}},
		{"prefix with host bits", config(map[string]any{"acceptedPrefixes": []any{"10.244.1.1/16"}}),
			[]string{"spec.acceptedPrefixes[0]", "no host bits set"}},
		{"cluster ID not IPv4", config(map[string]any{"routeReflectorClusterID": "1"}),
			[]string{"spec.routeReflectorClusterID", "must be an IPv4 address"}},
		{"service CIDR not a CIDR", config(map[string]any{"serviceClusterIPs": []any{map[string]any{"cidr": "10.96.0.0"}}}),
			[]string{"spec.serviceClusterIPs[0].cidr", "must be a CIDR"}},
		{"local preference negative", config(map[string]any{"localPreference": int64(-1)}),
			[]string{"spec.localPreference", "greater than or equal to 0"}},
	}
}
