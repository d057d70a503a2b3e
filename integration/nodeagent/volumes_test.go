package nodeagent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// tokenIssuer answers TokenRequests on a fake clientset the way the API
// server does, with a new token each time, and records the requests.
type tokenIssuer struct {
	mu       sync.Mutex
	requests []*authenticationv1.TokenRequest
	sas      []string
}

func (ti *tokenIssuer) install(cs *fake.Clientset) {
	cs.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ca, ok := a.(k8stesting.CreateAction)
		if !ok || a.GetSubresource() != "token" {
			return false, nil, nil
		}
		tr := ca.GetObject().(*authenticationv1.TokenRequest).DeepCopy()
		ti.mu.Lock()
		defer ti.mu.Unlock()
		ti.requests = append(ti.requests, tr)
		ti.sas = append(ti.sas, a.GetNamespace()+"/"+ca.(k8stesting.CreateActionImpl).Name)
		tr.Status.Token = "token-" + string(rune('0'+len(ti.requests)))
		return true, tr, nil
	})
}

func (ti *tokenIssuer) count() int {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	return len(ti.requests)
}

// readVolume returns every regular file under dir with its content and
// permission bits.
func readVolume(t *testing.T, dir string) map[string]volumeFile {
	t.Helper()
	out := map[string]volumeFile{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = volumeFile{Data: b, Mode: st.Mode().Perm()}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameFiles(t *testing.T, what string, got, want map[string]volumeFile) {
	t.Helper()
	keys := func(m map[string]volumeFile) []string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		return ks
	}
	if strings.Join(keys(got), ",") != strings.Join(keys(want), ",") {
		t.Errorf("%s: files %q, want %q", what, keys(got), keys(want))
		return
	}
	for k, w := range want {
		if g := got[k]; string(g.Data) != string(w.Data) || g.Mode != w.Mode {
			t.Errorf("%s: %s = %q %v, want %q %v", what, k, g.Data, g.Mode, w.Data, w.Mode)
		}
	}
}

func volumePod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "meridian-x7k2p", Namespace: "kube-system", UID: "0c8d5a4e-1111-2222-3333-444455556666",
			Labels:      map[string]string{"tier": "node", "app.kubernetes.io/name": "meridian", "controller-revision-hash": "5d8f"},
			Annotations: map[string]string{"kubectl.kubernetes.io/default-container": "meridiand", "quote": `say "hi"` + "\n"},
		},
		Spec: corev1.PodSpec{NodeName: "node-2", ServiceAccountName: "meridian"},
	}
}

func volumeObjects() []runtime.Object {
	return []runtime.Object{
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "meridian-config", Namespace: "kube-system"},
			Data:       map[string]string{"config.yaml": "asn: 64512\n", "log-level": "info"},
			BinaryData: map[string][]byte{"blob": {0, 1, 2}},
		},
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt", Namespace: "kube-system"},
			Data:       map[string]string{"ca.crt": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
		},
		// Same name in another namespace: must not be used.
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "other-ns", Namespace: "default"}, Data: map[string]string{"a": "b"}},
		&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "bgp-password", Namespace: "kube-system"},
			Data:       map[string][]byte{"password": []byte("s3cret"), "peer": []byte("198.18.0.1")},
		},
	}
}

func TestVolumeManagerKeyVolumes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		vs      corev1.VolumeSource
		want    map[string]volumeFile
		wantErr string
	}{
		{
			name: "configmap all keys",
			vs:   corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "meridian-config"}}},
			want: map[string]volumeFile{
				"config.yaml": {Data: []byte("asn: 64512\n"), Mode: 0o644},
				"log-level":   {Data: []byte("info"), Mode: 0o644},
				"blob":        {Data: []byte{0, 1, 2}, Mode: 0o644},
			},
		},
		{
			name: "configmap items with modes",
			vs: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "meridian-config"},
				DefaultMode:          new(int32(0o440)),
				Items: []corev1.KeyToPath{
					{Key: "config.yaml", Path: "etc/meridian.yaml", Mode: new(int32(0o600))},
					{Key: "log-level", Path: "level"},
				},
			}},
			want: map[string]volumeFile{
				"etc/meridian.yaml": {Data: []byte("asn: 64512\n"), Mode: 0o600},
				"level":             {Data: []byte("info"), Mode: 0o440},
			},
		},
		{
			name: "optional missing configmap is an empty directory",
			vs:   corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Optional: new(true)}},
			want: map[string]volumeFile{},
		},
		{
			name:    "missing configmap",
			vs:      corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}}},
			wantErr: "get configmap kube-system/absent",
		},
		{
			name:    "configmap of another namespace",
			vs:      corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "other-ns"}}},
			wantErr: "get configmap kube-system/other-ns",
		},
		{
			name: "configmap item with a missing key",
			vs: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "meridian-config"},
				Items:                []corev1.KeyToPath{{Key: "nope", Path: "nope"}},
			}},
			wantErr: `configmap meridian-config has no key "nope"`,
		},
		{
			name: "secret all keys",
			vs:   corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "bgp-password", DefaultMode: new(int32(0o400))}},
			want: map[string]volumeFile{
				"password": {Data: []byte("s3cret"), Mode: 0o400},
				"peer":     {Data: []byte("198.18.0.1"), Mode: 0o400},
			},
		},
		{
			name: "secret items",
			vs: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "bgp-password",
				Items: []corev1.KeyToPath{{Key: "password", Path: "md5/password", Mode: new(int32(0o600))}}}},
			want: map[string]volumeFile{"md5/password": {Data: []byte("s3cret"), Mode: 0o600}},
		},
		{
			name: "optional missing secret",
			vs:   corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "absent", Optional: new(true)}},
			want: map[string]volumeFile{},
		},
		{
			name:    "missing secret",
			vs:      corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "absent", Optional: new(false)}},
			wantErr: "get secret kube-system/absent",
		},
		{
			name: "downwardAPI",
			vs: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
				{Path: "annotations", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations"}},
				{Path: "name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}, Mode: new(int32(0o600))},
				{Path: "node/ip", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}},
				{Path: "tier", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['tier']"}},
			}}},
			want: map[string]volumeFile{
				// The kubelet's fieldpath.FormatMap: sorted, key="quoted
				// value", one per line, no trailing newline.
				"labels":      {Data: []byte("app.kubernetes.io/name=\"meridian\"\ncontroller-revision-hash=\"5d8f\"\ntier=\"node\""), Mode: 0o644},
				"annotations": {Data: []byte("kubectl.kubernetes.io/default-container=\"meridiand\"\nquote=\"say \\\"hi\\\"\\n\""), Mode: 0o644},
				"name":        {Data: []byte("meridian-x7k2p"), Mode: 0o600},
				"node/ip":     {Data: []byte("198.18.0.12"), Mode: 0o644},
				"tier":        {Data: []byte("node"), Mode: 0o644},
			},
		},
		{
			name: "downwardAPI resourceFieldRef",
			vs: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "mem", ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory"}},
			}}},
			wantErr: "downwardAPI mem: only fieldRef",
		},
		{
			name:    "unsupported volume type",
			vs:      corev1.VolumeSource{NFS: &corev1.NFSVolumeSource{Server: "nfs", Path: "/"}},
			wantErr: "not supported",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset(volumeObjects()...)
			dir := t.TempDir()
			m := newVolumeManager(cs, "198.18.0.12", dir, time.Now)
			pod := volumePod()
			pod.Spec.Volumes = []corev1.Volume{{Name: "vol", VolumeSource: tc.vs}}
			dirs, err := m.ensure(context.Background(), pod)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "volume vol") {
					t.Fatalf("err %v, want one saying %q", err, tc.wantErr)
				}
				if _, ok := dirs["vol"]; ok {
					t.Errorf("failed volume has a directory: %v", dirs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(dir, "vol"); dirs["vol"] != want {
				t.Fatalf("volume dir %q, want %q", dirs["vol"], want)
			}
			if st, err := os.Stat(dirs["vol"]); err != nil || !st.IsDir() {
				t.Fatalf("volume dir: %v", err)
			}
			sameFiles(t, tc.name, readVolume(t, dirs["vol"]), tc.want)
		})
	}
}

// The kubelet skips an item whose key is missing from an optional
// ConfigMap or Secret (configmap.MakePayload: "if optional { continue }")
// instead of failing the volume.
func TestVolumeManagerOptionalMissingKey(t *testing.T) {
	cs := fake.NewClientset(volumeObjects()...)
	m := newVolumeManager(cs, "198.18.0.12", t.TempDir(), time.Now)
	pod := volumePod()
	pod.Spec.Volumes = []corev1.Volume{{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "meridian-config"}, Optional: new(true),
		Items: []corev1.KeyToPath{{Key: "log-level", Path: "level"}, {Key: "not-yet", Path: "later"}},
	}}}}
	dirs, err := m.ensure(context.Background(), pod)
	if err != nil {
		t.Fatalf("optional configmap with a missing item key: %v", err)
	}
	sameFiles(t, "optional items", readVolume(t, dirs["cfg"]), map[string]volumeFile{"level": {Data: []byte("info"), Mode: 0o644}})
}

// kubeAPIAccess is the projected volume the ServiceAccount admission plugin
// adds to every pod.
func kubeAPIAccess() corev1.Volume {
	return corev1.Volume{Name: "kube-api-access-7q2xk", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: new(int32(0o644)),
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: new(int64(3607)), Path: "token"}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}},
			}}},
		},
	}}}
}

func TestVolumeManagerProjectedServiceAccount(t *testing.T) {
	cs := fake.NewClientset(volumeObjects()...)
	var ti tokenIssuer
	ti.install(cs)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	dir := t.TempDir()
	m := newVolumeManager(cs, "198.18.0.12", dir, clock)
	pod := volumePod()
	pod.Spec.Volumes = []corev1.Volume{kubeAPIAccess()}
	ctx := context.Background()

	dirs, err := m.ensure(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}
	vdir := dirs["kube-api-access-7q2xk"]
	if vdir != filepath.Join(dir, "kube-api-access-7q2xk") {
		t.Fatalf("volume dir %q", vdir)
	}
	ca := "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	sameFiles(t, "first", readVolume(t, vdir), map[string]volumeFile{
		"token":     {Data: []byte("token-1"), Mode: 0o644},
		"ca.crt":    {Data: []byte(ca), Mode: 0o644},
		"namespace": {Data: []byte("kube-system"), Mode: 0o644},
	})
	if ti.count() != 1 {
		t.Fatalf("%d token requests", ti.count())
	}
	tr := ti.requests[0]
	if ti.sas[0] != "kube-system/meridian" {
		t.Errorf("token for service account %q, want kube-system/meridian", ti.sas[0])
	}
	if tr.Spec.ExpirationSeconds == nil || *tr.Spec.ExpirationSeconds != 3607 {
		t.Errorf("expirationSeconds %v", tr.Spec.ExpirationSeconds)
	}
	if b := tr.Spec.BoundObjectRef; b == nil || b.Kind != "Pod" || b.APIVersion != "v1" || b.Name != pod.Name || b.UID != pod.UID {
		t.Errorf("token not bound to the pod: %+v", tr.Spec.BoundObjectRef)
	}
	if len(tr.Spec.Audiences) != 0 {
		t.Errorf("audiences %q for a projection without audience (the API server's default)", tr.Spec.Audiences)
	}

	// Before 80% of 3607 s: the same token, no new request.
	for _, after := range []time.Duration{time.Second, 30 * time.Minute, 2885 * time.Second} {
		now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).Add(after)
		if _, err := m.ensure(ctx, pod); err != nil {
			t.Fatal(err)
		}
		if ti.count() != 1 {
			t.Fatalf("token re-requested %v after issue (before 80%% of its lifetime)", after)
		}
		if got := readVolume(t, vdir)["token"]; string(got.Data) != "token-1" {
			t.Fatalf("token %q at %v", got.Data, after)
		}
	}
	// After 80%: renewed, and the file rewritten.
	now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).Add(2886 * time.Second)
	if _, err := m.ensure(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if ti.count() != 2 {
		t.Fatalf("%d token requests after 80%% of the lifetime, want 2", ti.count())
	}
	if got := readVolume(t, vdir)["token"]; string(got.Data) != "token-2" {
		t.Fatalf("renewed token file %q", got.Data)
	}
	// The renewal counts from the new issue time.
	now = now.Add(time.Hour / 2)
	if _, err := m.ensure(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if ti.count() != 2 {
		t.Fatalf("renewed token re-requested after 30 min")
	}
}

func TestVolumeManagerTokenDefaults(t *testing.T) {
	cs := fake.NewClientset()
	var ti tokenIssuer
	ti.install(cs)
	m := newVolumeManager(cs, "198.18.0.12", t.TempDir(), time.Now)
	pod := volumePod()
	pod.Spec.ServiceAccountName = ""
	pod.Spec.Volumes = []corev1.Volume{{Name: "tok", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "t", Audience: "vault"}},
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "u"}},
		},
	}}}}
	dirs, err := m.ensure(context.Background(), pod)
	if err != nil {
		t.Fatal(err)
	}
	if ti.count() != 2 {
		t.Fatalf("%d requests for two token sources", ti.count())
	}
	if ti.sas[0] != "kube-system/default" {
		t.Errorf("service account %q, want kube-system/default", ti.sas[0])
	}
	if e := ti.requests[0].Spec.ExpirationSeconds; e == nil || *e != 3600 {
		t.Errorf("default expiration %v, want 3600", e)
	}
	if a := ti.requests[0].Spec.Audiences; len(a) != 1 || a[0] != "vault" {
		t.Errorf("audiences %q", a)
	}
	sameFiles(t, "two tokens", readVolume(t, dirs["tok"]), map[string]volumeFile{
		"t": {Data: []byte("token-1"), Mode: 0o644}, "u": {Data: []byte("token-2"), Mode: 0o644},
	})
}

func TestVolumeManagerProjectedErrors(t *testing.T) {
	for name, src := range map[string]corev1.VolumeProjection{
		"missing configmap":  {ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}}},
		"missing secret":     {Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}}},
		"clusterTrustBundle": {ClusterTrustBundle: &corev1.ClusterTrustBundleProjection{Path: "b"}},
		"bad downward field": {DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "x", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.bogus"}}}}},
	} {
		t.Run(name, func(t *testing.T) {
			m := newVolumeManager(fake.NewClientset(volumeObjects()...), "198.18.0.12", t.TempDir(), time.Now)
			pod := volumePod()
			pod.Spec.Volumes = []corev1.Volume{{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{src}}}}}
			if _, err := m.ensure(context.Background(), pod); err == nil || !strings.Contains(err.Error(), "volume p") {
				t.Errorf("err %v", err)
			}
		})
	}
	// A failed token request is an error, not an empty token.
	cs := fake.NewClientset()
	cs.PrependReactor("create", "serviceaccounts", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, &net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded}
	})
	m := newVolumeManager(cs, "198.18.0.12", t.TempDir(), time.Now)
	pod := volumePod()
	pod.Spec.Volumes = []corev1.Volume{kubeAPIAccess()}
	if _, err := m.ensure(context.Background(), pod); err == nil || !strings.Contains(err.Error(), "request token of service account kube-system/meridian") {
		t.Errorf("failed token request: %v", err)
	}
}

func TestVolumeManagerEmptyDirAndHostPath(t *testing.T) {
	dir := t.TempDir()
	host := filepath.Join(t.TempDir(), "run", "meridian")
	m := newVolumeManager(fake.NewClientset(), "198.18.0.12", dir, time.Now)
	pod := volumePod()
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "run", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: host, Type: new(corev1.HostPathDirectoryOrCreate)}}},
		{Name: "broken", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: filepath.Join(dir, "absent"), Type: new(corev1.HostPathDirectory)}}},
	}
	dirs, err := m.ensure(context.Background(), pod)
	if err == nil || !strings.Contains(err.Error(), "volume broken") {
		t.Errorf("err %v, want the broken hostPath named", err)
	}
	// The other volumes are set up all the same.
	if dirs["scratch"] != filepath.Join(dir, "scratch") || dirs["run"] != host || len(dirs) != 2 {
		t.Errorf("dirs %v", dirs)
	}
	for _, p := range []string{dirs["scratch"], host} {
		if st, err := os.Stat(p); err != nil || !st.IsDir() {
			t.Errorf("%s: %v", p, err)
		}
	}
	// emptyDir content survives a second ensure.
	if err := os.WriteFile(filepath.Join(dirs["scratch"], "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	pod.Spec.Volumes = pod.Spec.Volumes[:2]
	if _, err := m.ensure(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dirs["scratch"], "f")); err != nil || string(b) != "x" {
		t.Errorf("emptyDir content lost: %q %v", b, err)
	}
}

func TestWriteVolume(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	files := map[string]volumeFile{
		"a":       {Data: []byte("one"), Mode: 0o644},
		"sub/b":   {Data: []byte("two"), Mode: 0o600},
		"stale":   {Data: []byte("old"), Mode: 0o644},
		"x/stale": {Data: []byte("old"), Mode: 0o644},
	}
	if err := writeVolume(dir, files); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, "first write", readVolume(t, dir), files)

	// Unchanged content is not rewritten (the inode stays).
	before, err := os.Stat(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	next := map[string]volumeFile{
		"a":     {Data: []byte("one"), Mode: 0o644},
		"sub/b": {Data: []byte("TWO"), Mode: 0o640},
		"new":   {Data: nil, Mode: 0o644},
	}
	if err := writeVolume(dir, next); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, "second write", readVolume(t, dir), next)
	after, err := os.Stat(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Error("unchanged file rewritten")
	}

	// Everything goes when nothing is wanted.
	if err := writeVolume(dir, map[string]volumeFile{}); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, "emptied", readVolume(t, dir), map[string]volumeFile{})

	for _, bad := range []string{"../escape", "/etc/passwd", "a/../../escape", ""} {
		err := writeVolume(dir, map[string]volumeFile{bad: {Data: []byte("x"), Mode: 0o644}})
		if err == nil || !strings.Contains(err.Error(), "leaves the volume") {
			t.Errorf("path %q: err %v", bad, err)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escape")); !os.IsNotExist(err) {
		t.Errorf("file written outside the volume: %v", err)
	}
}

func TestEnsureHostPath(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "dir")
	file := filepath.Join(base, "file")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A unix socket path must fit sun_path (108 bytes): keep it short.
	sockDir, err := os.MkdirTemp("", "hp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })

	type check func(t *testing.T, p string)
	isDir := func(t *testing.T, p string) {
		if st, err := os.Stat(p); err != nil || !st.IsDir() {
			t.Errorf("%s is not a directory: %v", p, err)
		}
	}
	isFile := func(t *testing.T, p string) {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			t.Errorf("%s is not a file: %v", p, err)
		}
	}
	absent := func(t *testing.T, p string) {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s was created: %v", p, err)
		}
	}
	for _, tc := range []struct {
		name    string
		typ     *corev1.HostPathType
		path    string
		wantErr string
		after   check
	}{
		{name: "unset type, missing", path: "missing", after: absent},
		{name: "empty type, missing", typ: new(corev1.HostPathUnset), path: "missing", after: absent},
		{name: "DirectoryOrCreate creates", typ: new(corev1.HostPathDirectoryOrCreate), path: "missing/deep", after: isDir},
		{name: "DirectoryOrCreate exists", typ: new(corev1.HostPathDirectoryOrCreate), path: "dir", after: isDir},
		{name: "DirectoryOrCreate on a file", typ: new(corev1.HostPathDirectoryOrCreate), path: "file", wantErr: "is not a directory"},
		{name: "Directory", typ: new(corev1.HostPathDirectory), path: "dir", after: isDir},
		{name: "Directory missing", typ: new(corev1.HostPathDirectory), path: "missing", wantErr: "no such file", after: absent},
		{name: "Directory on a file", typ: new(corev1.HostPathDirectory), path: "file", wantErr: "is not a directory"},
		{name: "FileOrCreate creates", typ: new(corev1.HostPathFileOrCreate), path: "missing", after: isFile},
		{name: "FileOrCreate exists", typ: new(corev1.HostPathFileOrCreate), path: "file", after: isFile},
		{name: "FileOrCreate on a dir", typ: new(corev1.HostPathFileOrCreate), path: "dir", wantErr: "is not a file"},
		// As the kubelet: FileOrCreate does not create parent directories.
		{name: "FileOrCreate without parent", typ: new(corev1.HostPathFileOrCreate), path: "missing/f", wantErr: "no such file"},
		{name: "File", typ: new(corev1.HostPathFile), path: "file", after: isFile},
		{name: "File on a dir", typ: new(corev1.HostPathFile), path: "dir", wantErr: "is not a file"},
		{name: "File missing", typ: new(corev1.HostPathFile), path: "missing", wantErr: "no such file", after: absent},
		{name: "Socket", typ: new(corev1.HostPathSocket), path: "sock"},
		{name: "Socket on a file", typ: new(corev1.HostPathSocket), path: "file", wantErr: "is not a socket"},
		{name: "Socket missing", typ: new(corev1.HostPathSocket), path: "missing", wantErr: "no such file"},
		{name: "CharDevice", typ: new(corev1.HostPathCharDev), path: "file", wantErr: "not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each case gets its own copy of "missing".
			p := filepath.Join(base, tc.path)
			switch {
			case tc.path == "sock":
				p = sock
			case strings.HasPrefix(tc.path, "missing"):
				root := t.TempDir()
				p = filepath.Join(root, tc.path)
			}
			err := ensureHostPath(&corev1.HostPathVolumeSource{Path: p, Type: tc.typ})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("err %v, want one saying %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Errorf("unexpected error: %v", err)
			}
			if tc.after != nil {
				tc.after(t, p)
			}
		})
	}
}
