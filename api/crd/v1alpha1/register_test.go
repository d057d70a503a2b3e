package v1alpha1

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
)

func newScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSchemeKinds(t *testing.T) {
	s := newScheme(t)
	for obj, kind := range map[runtime.Object]string{
		&BGPConfiguration{}:     "BGPConfiguration",
		&BGPConfigurationList{}: "BGPConfigurationList",
		&BGPPeer{}:              "BGPPeer",
		&BGPPeerList{}:          "BGPPeerList",
	} {
		gvks, _, err := s.ObjectKinds(obj)
		if err != nil {
			t.Errorf("%T: %v", obj, err)
			continue
		}
		want := schema.GroupVersionKind{Group: "meridian.io", Version: "v1alpha1", Kind: kind}
		if len(gvks) != 1 || gvks[0] != want {
			t.Errorf("%T: kinds %v, want %v", obj, gvks, want)
		}
	}
	if got := Resource("bgppeers"); got.String() != "bgppeers.meridian.io" {
		t.Errorf("Resource: %s", got)
	}
}

func samplePeer() *BGPPeer {
	enabled := true
	ttl := int32(2)
	return &BGPPeer{
		ObjectMeta: metav1.ObjectMeta{Name: "tor1", Generation: 3},
		Spec: BGPPeerSpec{
			PeerIP:        "192.0.2.1",
			ASNumber:      4200000001,
			NodeSelector:  &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "r1"}},
			SourceAddress: "192.0.2.10",
			EBGPMultihop:  &ttl,
			Password:      &SecretKeySelector{Name: "bgp", Key: "tor1", Namespace: "kube-system"},
			HoldTime:      &metav1.Duration{Duration: 9 * time.Second},
			KeepaliveTime: &metav1.Duration{Duration: 3 * time.Second},
			GracefulRestart: &GracefulRestart{
				Enabled:     &enabled,
				RestartTime: &metav1.Duration{Duration: 120 * time.Second},
			},
			Passive:     true,
			MaxPrefixes: &MaxPrefixes{Limit: 1000, Action: MaxPrefixDrop},
		},
		Status: Status{
			ObservedGeneration: 3,
			Conditions: []metav1.Condition{{
				Type: ConditionAccepted, Status: metav1.ConditionTrue, Reason: "Valid",
				LastTransitionTime: metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
			}},
		},
	}
}

func TestJSONRoundTrip(t *testing.T) {
	s := newScheme(t)
	codecs := serializer.NewCodecFactory(s)
	info, ok := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), runtime.ContentTypeJSON)
	if !ok {
		t.Fatal("no JSON serializer")
	}
	mesh := false
	lp := int64(200)
	for _, in := range []runtime.Object{
		samplePeer(),
		&BGPConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: BGPConfigurationName},
			Spec: BGPConfigurationSpec{
				ASNumber:                64513,
				NodeToNodeMesh:          &mesh,
				RouteReflectorClusterID: "10.0.0.1",
				Communities:             []Community{"65000:100", "64512:1:2"},
				LocalPreference:         &lp,
				AcceptedPrefixes:        []CIDR{"10.244.0.0/16"},
				Encapsulation:           EncapsulationAlways,
				ServiceClusterIPs:       []ServiceCIDRBlock{{CIDR: "10.96.0.0/12"}},
				ServiceExternalIPs:      []ServiceCIDRBlock{{CIDR: "198.51.100.0/24"}},
				ServiceLoadBalancerIPs:  []ServiceCIDRBlock{{CIDR: "203.0.113.0/24"}},
			},
		},
	} {
		codec := codecs.CodecForVersions(info.Serializer, codecs.UniversalDeserializer(), SchemeGroupVersion, SchemeGroupVersion)
		data, err := runtime.Encode(codec, in)
		if err != nil {
			t.Fatalf("encode %T: %v", in, err)
		}
		out, err := runtime.Decode(codec, data)
		if err != nil {
			t.Fatalf("decode %s: %v", data, err)
		}
		// Decoding sets TypeMeta; the input had none.
		out.GetObjectKind().SetGroupVersionKind(schema.GroupVersionKind{})
		if diff := cmp.Diff(in, out); diff != "" {
			t.Errorf("%T round trip (-in +out):\n%s\nJSON: %s", in, diff, data)
		}
	}
}

// A false NodeToNodeMesh must survive encoding: were it a plain bool with
// omitempty it would vanish and the schema default (true) would turn the
// mesh back on.
func TestFalseMeshIsEncoded(t *testing.T) {
	mesh := false
	s := newScheme(t)
	codecs := serializer.NewCodecFactory(s)
	info, _ := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), runtime.ContentTypeJSON)
	data, err := runtime.Encode(codecs.EncoderForVersion(info.Serializer, SchemeGroupVersion),
		&BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: BGPConfigurationSpec{NodeToNodeMesh: &mesh}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"nodeToNodeMesh":false`) {
		t.Errorf("encoded %s lacks nodeToNodeMesh:false", data)
	}
}

func TestDeepCopyIsIndependent(t *testing.T) {
	a := samplePeer()
	b := a.DeepCopy()
	if diff := cmp.Diff(a, b); diff != "" {
		t.Fatalf("copy differs:\n%s", diff)
	}
	b.Spec.NodeSelector.MatchLabels["rack"] = "r2"
	*b.Spec.HoldTime = metav1.Duration{Duration: time.Minute}
	*b.Spec.GracefulRestart.Enabled = false
	b.Spec.MaxPrefixes.Limit = 1
	b.Status.Conditions[0].Reason = "Changed"
	if diff := cmp.Diff(samplePeer(), a); diff != "" {
		t.Errorf("changing the copy changed the original:\n%s", diff)
	}
}
