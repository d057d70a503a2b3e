package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// volumeFile is one file of a materialised volume.
type volumeFile struct {
	Data []byte
	Mode os.FileMode
}

// tokenRenewal is when the kubelet asks for a new projected token: after
// 80% of its lifetime.
const tokenRenewal = 0.8

// volumeManager materialises a pod's volumes on the node the way the
// kubelet's volume plugins do: hostPath is the node's own directory
// (checked or created by its type), emptyDir a fresh directory, and
// configMap, secret, downwardAPI and projected volumes (the service
// account's token among them) files in the pod's own directory, rewritten
// when their sources change.
type volumeManager struct {
	client kubernetes.Interface
	nodeIP string
	dir    string // the pod's volume directory
	now    func() time.Time
	// tokens remembers each projected token: when it was issued and for
	// how long, so it is renewed, not requested on every refresh.
	tokens map[string]issuedToken
}

type issuedToken struct {
	token    string
	issued   time.Time
	lifetime time.Duration
}

func newVolumeManager(client kubernetes.Interface, nodeIP, dir string, now func() time.Time) *volumeManager {
	return &volumeManager{client: client, nodeIP: nodeIP, dir: dir, now: now, tokens: map[string]issuedToken{}}
}

// ensure materialises every volume of pod and returns each volume's host
// path by name.
func (m *volumeManager) ensure(ctx context.Context, pod *corev1.Pod) (map[string]string, error) {
	out := map[string]string{}
	var errs []error
	for _, v := range pod.Spec.Volumes {
		p, err := m.ensureVolume(ctx, pod, v)
		if err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", v.Name, err))
			continue
		}
		out[v.Name] = p
	}
	return out, errors.Join(errs...)
}

func (m *volumeManager) ensureVolume(ctx context.Context, pod *corev1.Pod, v corev1.Volume) (string, error) {
	vs := v.VolumeSource
	if vs.HostPath != nil {
		return vs.HostPath.Path, ensureHostPath(vs.HostPath)
	}
	dir := filepath.Join(m.dir, v.Name)
	var files map[string]volumeFile
	var err error
	switch {
	case vs.EmptyDir != nil:
		return dir, os.MkdirAll(dir, 0o777)
	case vs.ConfigMap != nil:
		files, err = m.configMapFiles(ctx, pod.Namespace, vs.ConfigMap.LocalObjectReference.Name, vs.ConfigMap.Items, vs.ConfigMap.Optional, mode(vs.ConfigMap.DefaultMode))
	case vs.Secret != nil:
		files, err = m.secretFiles(ctx, pod.Namespace, vs.Secret.SecretName, vs.Secret.Items, vs.Secret.Optional, mode(vs.Secret.DefaultMode))
	case vs.DownwardAPI != nil:
		files, err = m.downwardFiles(pod, vs.DownwardAPI.Items, mode(vs.DownwardAPI.DefaultMode))
	case vs.Projected != nil:
		files, err = m.projectedFiles(ctx, pod, v.Name, vs.Projected)
	default:
		return "", errors.New("this volume type is not supported by the lab agent")
	}
	if err != nil {
		return "", err
	}
	return dir, writeVolume(dir, files)
}

func mode(m *int32) os.FileMode {
	if m == nil {
		return 0o644
	}
	return os.FileMode(*m)
}

// ensureHostPath applies the hostPath type's check, creating the
// directory or file for the ...OrCreate types as the kubelet does.
func ensureHostPath(hp *corev1.HostPathVolumeSource) error {
	t := corev1.HostPathUnset
	if hp.Type != nil {
		t = *hp.Type
	}
	st, err := os.Stat(hp.Path)
	switch t {
	case corev1.HostPathUnset:
		return nil
	case corev1.HostPathDirectoryOrCreate:
		if errors.Is(err, os.ErrNotExist) {
			return os.MkdirAll(hp.Path, 0o755)
		}
		if err == nil && !st.IsDir() {
			return fmt.Errorf("hostPath %s is not a directory", hp.Path)
		}
		return err
	case corev1.HostPathDirectory:
		if err == nil && !st.IsDir() {
			return fmt.Errorf("hostPath %s is not a directory", hp.Path)
		}
		return err
	case corev1.HostPathFileOrCreate:
		if errors.Is(err, os.ErrNotExist) {
			f, cerr := os.OpenFile(hp.Path, os.O_CREATE|os.O_WRONLY, 0o644)
			if cerr != nil {
				return cerr
			}
			return f.Close()
		}
		if err == nil && !st.Mode().IsRegular() {
			return fmt.Errorf("hostPath %s is not a file", hp.Path)
		}
		return err
	case corev1.HostPathFile:
		if err == nil && !st.Mode().IsRegular() {
			return fmt.Errorf("hostPath %s is not a file", hp.Path)
		}
		return err
	case corev1.HostPathSocket:
		if err == nil && st.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("hostPath %s is not a socket", hp.Path)
		}
		return err
	}
	return fmt.Errorf("hostPath type %q is not supported by the lab agent", t)
}

func (m *volumeManager) configMapFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional *bool, defMode os.FileMode) (map[string]volumeFile, error) {
	cm, err := m.client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return map[string]volumeFile{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get configmap %s/%s: %w", ns, name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyFiles(data, items, optional != nil && *optional, defMode, "configmap "+name)
}

func (m *volumeManager) secretFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional *bool, defMode os.FileMode) (map[string]volumeFile, error) {
	s, err := m.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return map[string]volumeFile{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get secret %s/%s: %w", ns, name, err)
	}
	return keyFiles(s.Data, items, optional != nil && *optional, defMode, "secret "+name)
}

// keyFiles maps a ConfigMap's or Secret's keys to files: every key, or
// only the items, each at its path with its mode; an item whose key is
// missing is skipped when the source is optional, as the kubelet does.
func keyFiles(data map[string][]byte, items []corev1.KeyToPath, optional bool, defMode os.FileMode, what string) (map[string]volumeFile, error) {
	out := map[string]volumeFile{}
	if len(items) == 0 {
		for k, v := range data {
			out[k] = volumeFile{Data: v, Mode: defMode}
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok && optional {
			continue
		}
		if !ok {
			return nil, fmt.Errorf("%s has no key %q", what, it.Key)
		}
		md := defMode
		if it.Mode != nil {
			md = os.FileMode(*it.Mode)
		}
		out[it.Path] = volumeFile{Data: v, Mode: md}
	}
	return out, nil
}

func (m *volumeManager) downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, defMode os.FileMode) (map[string]volumeFile, error) {
	out := map[string]volumeFile{}
	for _, it := range items {
		if it.FieldRef == nil {
			return nil, fmt.Errorf("downwardAPI %s: only fieldRef is supported by the lab agent", it.Path)
		}
		var v string
		switch it.FieldRef.FieldPath {
		case "metadata.labels":
			v = formatMap(pod.Labels)
		case "metadata.annotations":
			v = formatMap(pod.Annotations)
		default:
			var err error
			if v, err = podField(pod, m.nodeIP, it.FieldRef.FieldPath); err != nil {
				return nil, fmt.Errorf("downwardAPI %s: %w", it.Path, err)
			}
		}
		md := defMode
		if it.Mode != nil {
			md = os.FileMode(*it.Mode)
		}
		out[it.Path] = volumeFile{Data: []byte(v), Mode: md}
	}
	return out, nil
}

// formatMap is the downward API's key="value" per line, sorted.
func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s=%q", k, m[k])
	}
	return b.String()
}

func (m *volumeManager) projectedFiles(ctx context.Context, pod *corev1.Pod, volume string, p *corev1.ProjectedVolumeSource) (map[string]volumeFile, error) {
	defMode := mode(p.DefaultMode)
	out := map[string]volumeFile{}
	merge := func(files map[string]volumeFile, err error) error {
		if err != nil {
			return err
		}
		for k, v := range files {
			out[k] = v
		}
		return nil
	}
	for i, s := range p.Sources {
		var err error
		switch {
		case s.ServiceAccountToken != nil:
			err = merge(m.tokenFile(ctx, pod, fmt.Sprintf("%s/%d", volume, i), s.ServiceAccountToken, defMode))
		case s.ConfigMap != nil:
			err = merge(m.configMapFiles(ctx, pod.Namespace, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional, defMode))
		case s.Secret != nil:
			err = merge(m.secretFiles(ctx, pod.Namespace, s.Secret.Name, s.Secret.Items, s.Secret.Optional, defMode))
		case s.DownwardAPI != nil:
			err = merge(m.downwardFiles(pod, s.DownwardAPI.Items, defMode))
		default:
			err = errors.New("projected source type is not supported by the lab agent")
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// tokenFile is the pod's service account token, bound to the pod, renewed
// after tokenRenewal of its lifetime (the API server may grant a longer one
// than asked for).
func (m *volumeManager) tokenFile(ctx context.Context, pod *corev1.Pod, key string, src *corev1.ServiceAccountTokenProjection, defMode os.FileMode) (map[string]volumeFile, error) {
	now := m.now()
	if t, ok := m.tokens[key]; ok && now.Sub(t.issued) < time.Duration(float64(t.lifetime)*tokenRenewal) {
		return map[string]volumeFile{src.Path: {Data: []byte(t.token), Mode: defMode}}, nil
	}
	exp := int64(3600)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	var auds []string
	if src.Audience != "" {
		auds = []string{src.Audience}
	}
	token, err := requestPodToken(ctx, m.client, pod, auds, exp)
	if err != nil {
		return nil, err
	}
	// Renew by the lifetime asked for, as the kubelet does: a longer one
	// granted by --service-account-extend-token-expiration is a safety net.
	m.tokens[key] = issuedToken{token: token, issued: now, lifetime: time.Duration(exp) * time.Second}
	return map[string]volumeFile{src.Path: {Data: []byte(token), Mode: defMode}}, nil
}

// requestPodToken asks the API server (TokenRequest) for a token of pod's
// service account, bound to the pod, as the kubelet does for projected
// tokens; nil audiences mean the API server's.
func requestPodToken(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, audiences []string, seconds int64) (string, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         audiences,
			ExpirationSeconds: &seconds,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("request token of service account %s/%s: %w", pod.Namespace, sa, err)
	}
	return tr.Status.Token, nil
}

// writeVolume makes dir hold exactly files: each written atomically (a
// reader sees the old or the new content, never half), stale ones removed.
func writeVolume(dir string, files map[string]volumeFile) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for rel, f := range files {
		if !filepath.IsLocal(rel) {
			return fmt.Errorf("file %q leaves the volume", rel)
		}
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := writeIfChanged(p, f.Data, f.Mode); err != nil {
			return err
		}
		if err := os.Chmod(p, f.Mode); err != nil {
			return err
		}
	}
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if _, ok := files[rel]; !ok {
			return os.Remove(p)
		}
		return nil
	})
}
