package routing

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/meridian-net/meridian/api/crd/v1alpha1"
	"github.com/meridian-net/meridian/daemon/cluster"
	"github.com/meridian-net/meridian/daemon/encap"
)

var (
	bgpConfigurationsGVR = v1alpha1.SchemeGroupVersion.WithResource("bgpconfigurations")
	bgpPeersGVR          = v1alpha1.SchemeGroupVersion.WithResource("bgppeers")
)

// crdSource watches BGPConfiguration and BGPPeer objects and keeps the last
// good version of each, so a bad edit changes nothing that runs.
type crdSource struct {
	dyn     dynamic.Interface
	client  kubernetes.Interface
	log     *slog.Logger
	node    string
	now     func() time.Time
	factory dynamicinformer.DynamicSharedInformerFactory
	configs cache.GenericLister
	peers   cache.GenericLister
	synced  []cache.InformerSynced

	goodSettings *cluster.Settings
	// goodEncap is the encapsulation of the last accepted BGPConfiguration
	// (empty fields: not set there).
	goodEncap encapSetting
	goodPeers map[string]cluster.PeerSpec
	// loggedSync says the "not synced yet" warning was logged.
	loggedSync bool
}

func newCRDSource(dyn dynamic.Interface, client kubernetes.Interface, node string, log *slog.Logger, wake func()) (*crdSource, error) {
	f := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	s := &crdSource{dyn: dyn, client: client, log: log, node: node, now: time.Now, factory: f, goodPeers: map[string]cluster.PeerSpec{}}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { wake() },
		UpdateFunc: func(any, any) { wake() },
		DeleteFunc: func(any) { wake() },
	}
	for _, gvr := range []schema.GroupVersionResource{bgpConfigurationsGVR, bgpPeersGVR} {
		inf := f.ForResource(gvr)
		if _, err := inf.Informer().AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("watch %s: %w", gvr.Resource, err)
		}
		s.synced = append(s.synced, inf.Informer().HasSynced)
		if gvr == bgpPeersGVR {
			s.peers = inf.Lister()
		} else {
			s.configs = inf.Lister()
		}
	}
	return s, nil
}

func (s *crdSource) start(ctx context.Context) { s.factory.Start(ctx.Done()) }

// waitSynced waits a little for the first list, so a cluster with the mesh
// off does not bring the mesh up for a moment at start. Without the CRDs
// installed (or readable) the lists keep failing; routing then runs on
// defaults and picks the objects up when they appear.
func (s *crdSource) waitSynced(ctx context.Context, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return cache.WaitForCacheSync(ctx.Done(), s.synced...)
}

func (s *crdSource) hasSynced() bool {
	for _, f := range s.synced {
		if !f() {
			return false
		}
	}
	return true
}

// objectResult is how one object was judged in a sync.
type objectResult struct {
	obj    *unstructured.Unstructured
	err    error // nil: accepted
	inUse  bool  // a last good version runs instead
	reason string
}

// snapshot returns the settings and peers in effect, and what each object
// was judged.
func (s *crdSource) snapshot(ctx context.Context, nodes []cluster.NodeInfo, defaultASN uint32) (cluster.Settings, []cluster.PeerSpec, []objectResult) {
	if !s.hasSynced() {
		if !s.loggedSync {
			s.log.Warn("BGPConfiguration and BGPPeer not listed yet (CRDs installed? RBAC?); running the last known configuration")
			s.loggedSync = true
		}
		return s.settingsOrDefault(defaultASN), s.lastPeers(), nil
	}
	var results []objectResult

	settings := cluster.DefaultSettings(defaultASN)
	cfgObj, err := s.configs.Get(v1alpha1.BGPConfigurationName)
	switch {
	case apierrors.IsNotFound(err):
		s.goodSettings = nil
		s.goodEncap = encapSetting{}
	case err != nil:
		settings = s.settingsOrDefault(defaultASN)
	default:
		u := cfgObj.(*unstructured.Unstructured)
		var c v1alpha1.BGPConfiguration
		err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &c)
		var enc encapSetting
		if err == nil {
			enc, err = encapFrom(&c.Spec)
		}
		if err == nil {
			settings, err = cluster.SettingsFrom(&c, nodes, defaultASN)
		} else {
			err = &cluster.ObjectError{Reason: cluster.ReasonInvalid, Message: err.Error()}
		}
		r := objectResult{obj: u, err: err}
		if err == nil {
			good := settings
			s.goodSettings = &good
			s.goodEncap = enc
		} else {
			r.inUse = s.goodSettings != nil
			settings = s.settingsOrDefault(defaultASN)
		}
		results = append(results, r)
	}
	// Other names are refused by the schema; one that got in anyway (an
	// older CRD) is reported.
	if all, err := s.configs.List(labels.Everything()); err == nil {
		for _, o := range all {
			u := o.(*unstructured.Unstructured)
			if u.GetName() != v1alpha1.BGPConfigurationName {
				results = append(results, objectResult{obj: u, err: &cluster.ObjectError{Reason: cluster.ReasonWrongName,
					Message: fmt.Sprintf("only the BGPConfiguration named %q is used", v1alpha1.BGPConfigurationName)}})
			}
		}
	}

	objs, err := s.peers.List(labels.Everything())
	if err != nil {
		return settings, s.lastPeers(), results
	}
	var bgpPeers []*v1alpha1.BGPPeer
	var us []*unstructured.Unstructured
	secrets := cluster.Secrets{}
	for _, o := range objs {
		u := o.(*unstructured.Unstructured)
		var p v1alpha1.BGPPeer
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p); err != nil {
			results = append(results, s.judgePeer(u, &cluster.ObjectError{Reason: cluster.ReasonInvalid, Message: err.Error()}))
			continue
		}
		for _, ref := range cluster.SecretRefs(&p) {
			if _, done := secrets[ref]; done {
				continue
			}
			if data, err := s.secret(ctx, ref); err == nil {
				secrets[ref] = data
			} else if !apierrors.IsNotFound(err) {
				// Unknown is not absent: keep what runs.
				s.log.Warn("read BGP password Secret", "secret", ref, "err", err)
				if good, ok := s.goodPeers[p.Name]; ok && good.Peer.Password != "" {
					secrets[ref] = map[string][]byte{p.Spec.Password.Key: []byte(good.Peer.Password)}
				}
			}
		}
		bgpPeers = append(bgpPeers, &p)
		us = append(us, u)
	}
	seen := map[string]bool{}
	for i, p := range bgpPeers {
		seen[p.Name] = true
		spec, err := cluster.PeerSpecFrom(p, secrets)
		if err == nil {
			s.goodPeers[p.Name] = spec
		}
		results = append(results, s.judgePeer(us[i], err))
	}
	for name := range s.goodPeers {
		if !seen[name] {
			delete(s.goodPeers, name)
		}
	}
	return settings, s.lastPeers(), results
}

// encapSetting is a BGPConfiguration's encapsulation; empty fields are
// unset there.
type encapSetting struct {
	mode encap.Mode
	typ  encap.Type
}

// encapFrom checks the encapsulation fields: the schema's enums refuse bad
// values, but an object stored under an older CRD may still carry one.
func encapFrom(spec *v1alpha1.BGPConfigurationSpec) (encapSetting, error) {
	var e encapSetting
	if spec.Encapsulation != "" {
		m, err := encap.ParseMode(string(spec.Encapsulation))
		if err != nil {
			return e, &cluster.ObjectError{Reason: cluster.ReasonInvalid, Message: "spec." + err.Error()}
		}
		e.mode = m
	}
	if spec.EncapsulationType != "" {
		t, err := encap.ParseType(string(spec.EncapsulationType))
		if err != nil {
			return e, &cluster.ObjectError{Reason: cluster.ReasonInvalid, Message: "spec." + err.Error()}
		}
		e.typ = t
	}
	return e, nil
}

// encapsulation returns what the accepted BGPConfiguration sets, empty
// where it sets nothing (or there is none).
func (s *crdSource) encapsulation() (encap.Mode, encap.Type) {
	return s.goodEncap.mode, s.goodEncap.typ
}

func (s *crdSource) judgePeer(u *unstructured.Unstructured, err error) objectResult {
	_, good := s.goodPeers[u.GetName()]
	return objectResult{obj: u, err: err, inUse: err != nil && good}
}

func (s *crdSource) settingsOrDefault(defaultASN uint32) cluster.Settings {
	if s.goodSettings != nil {
		return *s.goodSettings
	}
	return cluster.DefaultSettings(defaultASN)
}

func (s *crdSource) lastPeers() []cluster.PeerSpec {
	out := make([]cluster.PeerSpec, 0, len(s.goodPeers))
	for _, p := range s.goodPeers {
		out = append(out, p)
	}
	return out
}

// secret reads one Secret. A GET per sync rather than a Secret informer:
// meridiand should be able to read only the Secrets BGPPeers name, not
// watch every Secret in the cluster.
func (s *crdSource) secret(ctx context.Context, ref types.NamespacedName) (map[string][]byte, error) {
	sec, err := s.client.CoreV1().Secrets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return sec.Data, nil
}

// report writes the Accepted condition of every judged object whose
// status says otherwise, and records an Event when it changed it. Every
// node judges the same objects the same way; the first write wins and the
// others find the condition already set (or lose the resourceVersion race),
// so each change is written and announced about once.
func (s *crdSource) report(ctx context.Context, results []objectResult, record func(obj runtime.Object, eventType, reason, msg string)) {
	for _, r := range results {
		cond := metav1.Condition{
			Type:               v1alpha1.ConditionAccepted,
			Status:             metav1.ConditionTrue,
			Reason:             cluster.ReasonAccepted,
			Message:            "in effect",
			ObservedGeneration: r.obj.GetGeneration(),
		}
		if r.err != nil {
			cond.Status = metav1.ConditionFalse
			cond.Reason = cluster.ReasonInvalid
			cond.Message = r.err.Error()
			if oe, ok := cluster.IsObjectError(r.err); ok {
				cond.Reason, cond.Message = oe.Reason, oe.Message
			}
			if r.inUse {
				cond.Message += "; the last accepted version stays in effect"
			} else {
				cond.Message += "; not in effect"
			}
		}
		var st v1alpha1.Status
		if raw, ok := r.obj.Object["status"].(map[string]any); ok {
			_ = runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &st)
		}
		cur := meta.FindStatusCondition(st.Conditions, cond.Type)
		if cur != nil && cur.Status == cond.Status && cur.Reason == cond.Reason && cur.Message == cond.Message &&
			cur.ObservedGeneration == cond.ObservedGeneration && st.ObservedGeneration == cond.ObservedGeneration {
			continue
		}
		cond.LastTransitionTime = metav1.NewTime(s.now())
		meta.SetStatusCondition(&st.Conditions, cond)
		st.ObservedGeneration = cond.ObservedGeneration
		raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&st)
		if err != nil {
			s.log.Error("encode status", "object", r.obj.GetName(), "err", err)
			continue
		}
		u := r.obj.DeepCopy()
		u.Object["status"] = raw
		gvr := bgpPeersGVR
		if u.GetKind() == "BGPConfiguration" {
			gvr = bgpConfigurationsGVR
		}
		if _, err := s.dyn.Resource(gvr).UpdateStatus(ctx, u, metav1.UpdateOptions{}); err != nil {
			if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
				s.log.Warn("update status", "kind", u.GetKind(), "name", u.GetName(), "err", err)
			}
			continue
		}
		eventType := corev1.EventTypeNormal
		if cond.Status == metav1.ConditionFalse {
			eventType = corev1.EventTypeWarning
			s.log.Warn("BGP object refused", "kind", u.GetKind(), "name", u.GetName(), "reason", cond.Reason, "message", cond.Message)
		}
		if cur == nil || cur.Status != cond.Status || cur.Reason != cond.Reason || cur.Message != cond.Message {
			record(u, eventType, cond.Reason, cond.Message)
		}
	}
}
