package nodeagent

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meridian-net/meridian/integration/nodeagent/container"
)

// The rules of Kubernetes' third_party/forked/golang/expansion, which the
// kubelet applies to env values, command and args.
func TestExpand(t *testing.T) {
	vals := map[string]string{"A": "alpha", "B": "beta", "EMPTY": "", "DOLLAR": "$(A)"}
	for _, tc := range []struct {
		in, want string
	}{
		{"plain", "plain"},
		{"$(A)", "alpha"},
		{"x-$(A)-$(B)-y", "x-alpha-beta-y"},
		{"$(A)$(B)", "alphabeta"},
		{"$(EMPTY)|", "|"},
		// Undefined references stay as written.
		{"$(UNDEFINED)", "$(UNDEFINED)"},
		{"pre $(UNDEFINED) $(A)", "pre $(UNDEFINED) alpha"},
		{"$()", "$()"},
		// $$ escapes a reference.
		{"$$(A)", "$(A)"},
		{"$$", "$"},
		{"$$$(A)", "$alpha"},
		{"a$$b", "a$b"},
		// A $ that starts no reference is kept.
		{"$A", "$A"},
		{"cost: 5$", "cost: 5$"},
		{"$", "$"},
		// An unterminated reference is kept as written.
		{"$(A", "$(A"},
		{"x $(A $(B", "x $(A $(B"},
		// Values are not expanded again.
		{"$(DOLLAR)", "$(A)"},
		// The name runs to the first ')'.
		{"$(A))", "alpha)"},
		{"$($(A))", "$($(A))"},
	} {
		if got := expand(tc.in, vals); got != tc.want {
			t.Errorf("expand(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := expand("$(A)", nil); got != "$(A)" {
		t.Errorf("expand with no values = %q", got)
	}
}

func specPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "meridian-x7k2p", Namespace: "kube-system", UID: "0c8d5a4e-1111-2222-3333-444455556666",
			Labels:      map[string]string{"app.kubernetes.io/name": "meridian", "tier": "node"},
			Annotations: map[string]string{"note": "a \"quoted\" value"},
		},
		Spec: corev1.PodSpec{NodeName: "node-2", ServiceAccountName: "meridian", HostNetwork: true},
	}
}

func TestContainerEnv(t *testing.T) {
	pod := specPod()
	src := envSources{
		Pod: pod, NodeIP: "198.18.0.12",
		ServiceEnv: []string{"KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443"},
		ConfigMaps: map[string]*corev1.ConfigMap{
			"settings": {Data: map[string]string{"LOG_LEVEL": "debug", "ASN": "64512", "B_KEY": "b"}},
		},
		Secrets: map[string]*corev1.Secret{
			"creds": {Data: map[string][]byte{"password": []byte("s3cret"), "user": []byte("admin")}},
		},
	}
	c := corev1.Container{
		Name: "meridiand",
		EnvFrom: []corev1.EnvFromSource{
			{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}},
			{Prefix: "DB_", SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}}},
			{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Optional: new(true)}},
			{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Optional: new(true)}},
		},
		Env: []corev1.EnvVar{
			{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
			{Name: "HOST_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
			{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			{Name: "POD_UID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}},
			{Name: "SA", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
			{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app.kubernetes.io/name']"}}},
			{Name: "NO_LABEL", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['missing']"}}},
			{Name: "NOTE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['note']"}}},
			{Name: "LEVEL", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}, Key: "LOG_LEVEL"}}},
			{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "password"}}},
			// Optional references to what is missing leave the variable unset.
			{Name: "OPT_CM_KEY", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}, Key: "nope", Optional: new(true)}}},
			{Name: "OPT_CM", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Key: "k", Optional: new(true)}}},
			{Name: "OPT_SECRET_KEY", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "nope", Optional: new(true)}}},
			{Name: "OPT_SECRET", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Key: "k", Optional: new(true)}}},
			// Plain values expand references to what comes before them,
			// and not to what comes after.
			{Name: "ADDR", Value: "$(HOST_IP):179 on $(NODE_NAME) as $(DB_user), later $(LATER), $$(HOST_IP)"},
			{Name: "LATER", Value: "late"},
			// Redefinition keeps the first position and takes the new value.
			{Name: "LOG_LEVEL", Value: "info"},
			{Name: "PATH", Value: "/meridian/bin"},
			{Name: "KUBERNETES_SERVICE_HOST", Value: "198.18.0.1"},
		},
	}
	got, _, err := containerEnv([]string{"PATH=/usr/bin:/bin", "HOME=/root"}, c, src)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		// Image, then Service links.
		"PATH=/meridian/bin", "HOME=/root",
		"KUBERNETES_SERVICE_HOST=198.18.0.1", "KUBERNETES_SERVICE_PORT=443",
		// envFrom: each source's keys sorted, with its prefix.
		"ASN=64512", "B_KEY=b", "LOG_LEVEL=info",
		"DB_password=s3cret", "DB_user=admin",
		// env.
		"NODE_NAME=node-2", "HOST_IP=198.18.0.12", "POD_IP=198.18.0.12",
		"POD_NAME=meridian-x7k2p", "POD_NAMESPACE=kube-system", "POD_UID=0c8d5a4e-1111-2222-3333-444455556666",
		"SA=meridian", "APP=meridian", "NO_LABEL=", `NOTE=a "quoted" value`,
		"LEVEL=debug", "PW=s3cret",
		"ADDR=198.18.0.12:179 on node-2 as admin, later $(LATER), $(HOST_IP)",
		"LATER=late",
	}
	if !slices.Equal(got, want) {
		t.Errorf("containerEnv:\n got %q\nwant %q", got, want)
	}
}

func TestContainerEnvErrors(t *testing.T) {
	src := envSources{
		Pod:        specPod(),
		ConfigMaps: map[string]*corev1.ConfigMap{"settings": {Data: map[string]string{"a": "1"}}},
		Secrets:    map[string]*corev1.Secret{"creds": {Data: map[string][]byte{"a": []byte("1")}}},
	}
	cmKey := func(name, key string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key}}
	}
	secretKey := func(name, key string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key}}
	}
	for _, tc := range []struct {
		name string
		c    corev1.Container
		want []string // substrings of the error
	}{
		{"missing configmap", corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: cmKey("absent", "a")}}}, []string{"env X", `configmap "absent" not found`}},
		{"missing configmap key", corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: cmKey("settings", "b")}}}, []string{"env X", `configmap "settings" has no key "b"`}},
		{"missing secret", corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: secretKey("absent", "a")}}}, []string{"env X", `secret "absent" not found`}},
		{"missing secret key", corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: secretKey("creds", "b")}}}, []string{"env X", `secret "creds" has no key "b"`}},
		{"resourceFieldRef", corev1.Container{Env: []corev1.EnvVar{{Name: "LIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory"}}}}}, []string{"env LIMIT", "resourceFieldRef limits.memory", "not supported"}},
		{"unsupported field", corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIPs"}}}}}, []string{"env X", `field "status.podIPs" is not supported`}},
		{"envFrom missing configmap", corev1.Container{EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}}}}}, []string{`configmap "absent" not found`}},
		{"envFrom missing secret", corev1.Container{EnvFrom: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Optional: new(false)}}}}, []string{`secret "absent" not found`}},
		// Every error is reported, not only the first.
		{"all errors", corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: cmKey("absent", "a")}, {Name: "Y", ValueFrom: secretKey("absent", "a")}}}, []string{"env X", "env Y"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, _, err := containerEnv(nil, tc.c, src)
			if err == nil {
				t.Fatalf("no error, env %q", env)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestServiceEnv(t *testing.T) {
	kubernetes := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.1", Ports: []corev1.ServicePort{{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP}}},
	}
	got := serviceEnv([]*corev1.Service{kubernetes})
	// Exactly what the kubelet's envvars.FromServices gives every pod.
	want := []string{
		"KUBERNETES_SERVICE_HOST=10.96.0.1",
		"KUBERNETES_SERVICE_PORT=443",
		"KUBERNETES_SERVICE_PORT_HTTPS=443",
		"KUBERNETES_PORT=tcp://10.96.0.1:443",
		"KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443",
		"KUBERNETES_PORT_443_TCP_PROTO=tcp",
		"KUBERNETES_PORT_443_TCP_PORT=443",
		"KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1",
	}
	if !slices.Equal(got, want) {
		t.Errorf("kubernetes Service:\n got %q\nwant %q", got, want)
	}

	dns := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
			{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
			{Name: "metrics", Port: 9153}, // protocol defaults to TCP
		}},
	}
	headless := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "headless"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 80}}},
	}
	external := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "external"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}}
	portless := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "portless"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.20"}}
	unnamed := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.30", Ports: []corev1.ServicePort{{Port: 8080, Protocol: corev1.ProtocolTCP}}},
	}
	got = serviceEnv([]*corev1.Service{headless, dns, external, portless, unnamed})
	want = []string{
		"KUBE_DNS_SERVICE_HOST=10.96.0.10",
		"KUBE_DNS_SERVICE_PORT=53",
		"KUBE_DNS_SERVICE_PORT_DNS=53",
		"KUBE_DNS_SERVICE_PORT_DNS_TCP=53",
		"KUBE_DNS_SERVICE_PORT_METRICS=9153",
		"KUBE_DNS_PORT=udp://10.96.0.10:53",
		"KUBE_DNS_PORT_53_UDP=udp://10.96.0.10:53",
		"KUBE_DNS_PORT_53_UDP_PROTO=udp",
		"KUBE_DNS_PORT_53_UDP_PORT=53",
		"KUBE_DNS_PORT_53_UDP_ADDR=10.96.0.10",
		"KUBE_DNS_PORT_53_TCP=tcp://10.96.0.10:53",
		"KUBE_DNS_PORT_53_TCP_PROTO=tcp",
		"KUBE_DNS_PORT_53_TCP_PORT=53",
		"KUBE_DNS_PORT_53_TCP_ADDR=10.96.0.10",
		"KUBE_DNS_PORT_9153_TCP=tcp://10.96.0.10:9153",
		"KUBE_DNS_PORT_9153_TCP_PROTO=tcp",
		"KUBE_DNS_PORT_9153_TCP_PORT=9153",
		"KUBE_DNS_PORT_9153_TCP_ADDR=10.96.0.10",
		"WEB_SERVICE_HOST=10.96.0.30",
		"WEB_SERVICE_PORT=8080",
		"WEB_PORT=tcp://10.96.0.30:8080",
		"WEB_PORT_8080_TCP=tcp://10.96.0.30:8080",
		"WEB_PORT_8080_TCP_PROTO=tcp",
		"WEB_PORT_8080_TCP_PORT=8080",
		"WEB_PORT_8080_TCP_ADDR=10.96.0.30",
	}
	if !slices.Equal(got, want) {
		t.Errorf("services:\n got %q\nwant %q", got, want)
	}
	if got := serviceEnv(nil); len(got) != 0 {
		t.Errorf("no services: %q", got)
	}
}

// The kubelet writes the Docker-link URLs with net.JoinHostPort, so an IPv6
// ClusterIP is bracketed.
func TestServiceEnvIPv6(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"},
		Spec:       corev1.ServiceSpec{ClusterIP: "fd00:10:96::1", Ports: []corev1.ServicePort{{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP}}},
	}
	got := serviceEnv([]*corev1.Service{svc})
	for _, w := range []string{
		"KUBERNETES_SERVICE_HOST=fd00:10:96::1",
		"KUBERNETES_PORT=tcp://[fd00:10:96::1]:443",
		"KUBERNETES_PORT_443_TCP=tcp://[fd00:10:96::1]:443",
		"KUBERNETES_PORT_443_TCP_ADDR=fd00:10:96::1",
	} {
		if !slices.Contains(got, w) {
			t.Errorf("missing %q in %q", w, got)
		}
	}
}

func TestContainerArgv(t *testing.T) {
	env := []string{"NODE_NAME=node-2", "EMPTY=", "WITH_EQ=a=b"}
	for _, tc := range []struct {
		name            string
		command, args   []string
		entrypoint, cmd []string
		want            []string
		wantErr         bool
	}{
		{name: "command and args", command: []string{"/meridiand"}, args: []string{"--node=$(NODE_NAME)"}, entrypoint: []string{"/entry"}, cmd: []string{"--default"},
			want: []string{"/meridiand", "--node=node-2"}},
		{name: "command drops the image cmd", command: []string{"/bin/sh", "-c"}, entrypoint: []string{"/entry"}, cmd: []string{"--default"},
			want: []string{"/bin/sh", "-c"}},
		{name: "args with the image entrypoint", args: []string{"--x", "$(WITH_EQ)"}, entrypoint: []string{"/entry", "-v"}, cmd: []string{"--default"},
			want: []string{"/entry", "-v", "--x", "a=b"}},
		{name: "args without an entrypoint", args: []string{"/bin/app", "run"}, cmd: []string{"--default"},
			want: []string{"/bin/app", "run"}},
		{name: "image entrypoint and cmd", entrypoint: []string{"/entry"}, cmd: []string{"--default", "$(NODE_NAME)"},
			want: []string{"/entry", "--default", "node-2"}},
		{name: "image cmd only", cmd: []string{"/bin/sh"}, want: []string{"/bin/sh"}},
		{name: "expansion rules", command: []string{"echo", "$(UNDEFINED)", "$$(NODE_NAME)", "[$(EMPTY)]"},
			want: []string{"echo", "$(UNDEFINED)", "$(NODE_NAME)", "[]"}},
		{name: "nothing to run", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := corev1.Container{Name: "app", Command: tc.command, Args: tc.args}
			entrypoint, cmd := slices.Clone(tc.entrypoint), slices.Clone(tc.cmd)
			got, err := containerArgv(c, entrypoint, cmd, env)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "container app") {
					t.Fatalf("err %v, argv %q", err, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("argv %q, want %q", got, tc.want)
			}
			// The pod's and the image's slices are not rewritten in place.
			if !slices.Equal(c.Command, tc.command) || !slices.Equal(c.Args, tc.args) ||
				!slices.Equal(entrypoint, tc.entrypoint) || !slices.Equal(cmd, tc.cmd) {
				t.Errorf("inputs modified: command %q args %q entrypoint %q cmd %q", c.Command, c.Args, entrypoint, cmd)
			}
		})
	}
}

func TestContainerMounts(t *testing.T) {
	pod := specPod()
	dirs := map[string]string{
		"config":   "/state/volumes/uid/config",
		"host-run": "/run/meridian",
		"cni-bin":  "/opt/cni/bin",
	}
	bidi := corev1.MountPropagationBidirectional
	h2c := corev1.MountPropagationHostToContainer
	none := corev1.MountPropagationNone
	privileged := &corev1.SecurityContext{Privileged: new(true)}
	for _, tc := range []struct {
		name        string
		sc          *corev1.SecurityContext
		mounts      []corev1.VolumeMount
		resolv      string
		hosts       string
		want        []container.Mount
		wantErr     []string
		wantPartial bool
	}{
		{
			name: "mounts and the kubelet's files",
			mounts: []corev1.VolumeMount{
				{Name: "config", MountPath: "/etc/meridian/", ReadOnly: true},
				{Name: "host-run", MountPath: "/run/meridian", MountPropagation: &h2c},
				{Name: "cni-bin", MountPath: "/host/opt/cni/bin", MountPropagation: &none},
				{Name: "config", MountPath: "/etc/meridian.yaml", SubPath: "config.yaml", ReadOnly: true},
				{Name: "config", MountPath: "/etc/nested", SubPath: "a/b"},
			},
			resolv: "/state/pods/uid/resolv.conf", hosts: "/state/pods/uid/hosts",
			want: []container.Mount{
				{Source: "/state/volumes/uid/config", Target: "/etc/meridian", ReadOnly: true, Propagation: "None"},
				{Source: "/run/meridian", Target: "/run/meridian", Propagation: "HostToContainer"},
				{Source: "/opt/cni/bin", Target: "/host/opt/cni/bin", Propagation: "None"},
				{Source: "/state/volumes/uid/config/config.yaml", Target: "/etc/meridian.yaml", ReadOnly: true, Propagation: "None"},
				{Source: "/state/volumes/uid/config/a/b", Target: "/etc/nested", Propagation: "None"},
				{Source: "/state/pods/uid/resolv.conf", Target: "/etc/resolv.conf", ReadOnly: true, Propagation: "None"},
				{Source: "/state/pods/uid/hosts", Target: "/etc/hosts", ReadOnly: true, Propagation: "None"},
			},
		},
		{
			name:   "no kubelet files when not given",
			mounts: []corev1.VolumeMount{{Name: "config", MountPath: "/c"}},
			want:   []container.Mount{{Source: "/state/volumes/uid/config", Target: "/c", Propagation: "None"}},
		},
		{
			name:   "bidirectional when privileged",
			sc:     privileged,
			mounts: []corev1.VolumeMount{{Name: "host-run", MountPath: "/run/meridian", MountPropagation: &bidi}},
			want:   []container.Mount{{Source: "/run/meridian", Target: "/run/meridian", Propagation: "Bidirectional"}},
		},
		{name: "bidirectional unprivileged", mounts: []corev1.VolumeMount{{Name: "host-run", MountPath: "/run/meridian", MountPropagation: &bidi}},
			wantErr: []string{"/run/meridian", "Bidirectional propagation needs a privileged container"}},
		{name: "bidirectional with privileged false", sc: &corev1.SecurityContext{Privileged: new(false)}, mounts: []corev1.VolumeMount{{Name: "host-run", MountPath: "/run/meridian", MountPropagation: &bidi}},
			wantErr: []string{"Bidirectional"}},
		{name: "missing volume", mounts: []corev1.VolumeMount{{Name: "nope", MountPath: "/x"}}, wantErr: []string{"/x", `no volume "nope"`}},
		{name: "relative mountPath", mounts: []corev1.VolumeMount{{Name: "config", MountPath: "etc/meridian"}}, wantErr: []string{"etc/meridian", "not an absolute path"}},
		{name: "subPath escapes", mounts: []corev1.VolumeMount{{Name: "config", MountPath: "/x", SubPath: "../../etc"}}, wantErr: []string{`subPath "../../etc" leaves the volume`}},
		{name: "absolute subPath", mounts: []corev1.VolumeMount{{Name: "config", MountPath: "/x", SubPath: "/etc/shadow"}}, wantErr: []string{`subPath "/etc/shadow" leaves the volume`}},
		{name: "subPath escapes after a component", mounts: []corev1.VolumeMount{{Name: "config", MountPath: "/x", SubPath: "a/../../b"}}, wantErr: []string{"leaves the volume"}},
		{
			name: "every bad mount reported",
			mounts: []corev1.VolumeMount{
				{Name: "nope", MountPath: "/x"},
				{Name: "config", MountPath: "/good"},
				{Name: "config", MountPath: "rel"},
			},
			wantErr: []string{`no volume "nope"`, "rel: not an absolute path"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := corev1.Container{Name: "meridiand", SecurityContext: tc.sc, VolumeMounts: tc.mounts}
			got, err := containerMounts(pod, c, dirs, tc.resolv, tc.hosts)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error, mounts %+v", got)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("mounts:\n got %+v\nwant %+v", got, tc.want)
			}
			for _, m := range got {
				if !filepath.IsAbs(m.Target) {
					t.Errorf("relative target %q", m.Target)
				}
			}
		})
	}
}

// The chart's meridiand container context, as charts/meridian renders it.
func meridiandSecurityContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		Capabilities: &corev1.Capabilities{
			Drop: []corev1.Capability{"ALL"},
			Add:  []corev1.Capability{"NET_ADMIN", "NET_BIND_SERVICE"},
		},
		ReadOnlyRootFilesystem:   new(true),
		AllowPrivilegeEscalation: new(false),
		RunAsUser:                new(int64(0)),
		RunAsNonRoot:             new(false),
		Privileged:               new(false),
	}
}

func TestSecuritySettings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		podSC   *corev1.PodSecurityContext
		sc      *corev1.SecurityContext
		want    container.Spec
		wantErr string
	}{
		{
			name: "chart meridiand",
			sc:   meridiandSecurityContext(),
			want: container.Spec{Capabilities: []string{"NET_ADMIN", "NET_BIND_SERVICE"}, ReadOnlyRootfs: true, NoNewPrivileges: true},
		},
		{
			name: "default context is containerd's defaults",
			want: container.Spec{Capabilities: container.DefaultCapabilities},
		},
		{
			name: "empty context is containerd's defaults",
			sc:   &corev1.SecurityContext{},
			want: container.Spec{Capabilities: container.DefaultCapabilities},
		},
		{
			name: "privileged keeps every capability",
			sc:   &corev1.SecurityContext{Privileged: new(true), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
			want: container.Spec{Privileged: true, Capabilities: container.AllCapabilities()},
		},
		{
			name: "privilege escalation allowed",
			sc:   &corev1.SecurityContext{AllowPrivilegeEscalation: new(true), ReadOnlyRootFilesystem: new(false)},
			want: container.Spec{Capabilities: container.DefaultCapabilities},
		},
		{
			name: "drop one default",
			sc:   &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"NET_RAW", "MKNOD"}}},
			want: container.Spec{Capabilities: slices.DeleteFunc(slices.Clone(container.DefaultCapabilities), func(c string) bool { return c == "NET_RAW" || c == "MKNOD" })},
		},
		{
			name:  "pod root, container root",
			podSC: &corev1.PodSecurityContext{RunAsUser: new(int64(0))},
			sc:    meridiandSecurityContext(),
			want:  container.Spec{Capabilities: []string{"NET_ADMIN", "NET_BIND_SERVICE"}, ReadOnlyRootfs: true, NoNewPrivileges: true},
		},
		{
			// The container's runAsUser wins over the pod's.
			name:  "pod 1000, container 0",
			podSC: &corev1.PodSecurityContext{RunAsUser: new(int64(1000))},
			sc:    &corev1.SecurityContext{RunAsUser: new(int64(0))},
			want:  container.Spec{Capabilities: container.DefaultCapabilities},
		},
		{name: "pod runAsUser 1000", podSC: &corev1.PodSecurityContext{RunAsUser: new(int64(1000))}, wantErr: "runAsUser 1000"},
		{name: "container runAsUser 65534", sc: &corev1.SecurityContext{RunAsUser: new(int64(65534))}, wantErr: "runAsUser 65534"},
		{name: "unknown capability", sc: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_WIZARD"}}}, wantErr: "NET_WIZARD"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := specPod()
			pod.Spec.SecurityContext = tc.podSC
			c := corev1.Container{Name: "meridiand", SecurityContext: tc.sc}
			spec := container.Spec{Rootfs: "/rootfs", Args: []string{"/meridiand"}}
			err := securitySettings(pod, c, &spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "container meridiand") {
					t.Fatalf("err %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if spec.Rootfs != "/rootfs" || !slices.Equal(spec.Args, []string{"/meridiand"}) {
				t.Errorf("unrelated fields changed: %+v", spec)
			}
			if !slices.Equal(spec.Capabilities, tc.want.Capabilities) || spec.Privileged != tc.want.Privileged ||
				spec.ReadOnlyRootfs != tc.want.ReadOnlyRootfs || spec.NoNewPrivileges != tc.want.NoNewPrivileges {
				t.Errorf("got privileged %v caps %v rofs %v nnp %v\nwant privileged %v caps %v rofs %v nnp %v",
					spec.Privileged, spec.Capabilities, spec.ReadOnlyRootfs, spec.NoNewPrivileges,
					tc.want.Privileged, tc.want.Capabilities, tc.want.ReadOnlyRootfs, tc.want.NoNewPrivileges)
			}
		})
	}
}

// containerSpec puts it together: the image's defaults under the
// container's choices.
func TestContainerSpec(t *testing.T) {
	pod := specPod()
	img := container.Image{Rootfs: "/cache/abc/rootfs", Config: v1.Config{
		Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}, Entrypoint: []string{"/usr/local/bin/meridiand"}, WorkingDir: "/srv",
	}}
	c := corev1.Container{
		Name: "meridiand", Image: "ghcr.io/meridian-net/meridian:dev",
		Args:            []string{"--node-name=$(NODE_NAME)", "--log-level=info"},
		Env:             []corev1.EnvVar{{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}},
		VolumeMounts:    []corev1.VolumeMount{{Name: "run", MountPath: "/run/meridian"}},
		SecurityContext: meridiandSecurityContext(),
	}
	src := envSources{Pod: pod, NodeIP: "198.18.0.12", ServiceEnv: []string{"KUBERNETES_SERVICE_HOST=10.96.0.1"}}
	spec, err := containerSpec(pod, c, img, src, map[string]string{"run": "/run/meridian"}, "/r/resolv.conf", "")
	if err != nil {
		t.Fatal(err)
	}
	want := container.Spec{
		Rootfs: "/cache/abc/rootfs", ReadOnlyRootfs: true,
		Mounts: []container.Mount{
			{Source: "/run/meridian", Target: "/run/meridian", Propagation: "None"},
			{Source: "/r/resolv.conf", Target: "/etc/resolv.conf", ReadOnly: true, Propagation: "None"},
		},
		Args:         []string{"/usr/local/bin/meridiand", "--node-name=node-2", "--log-level=info"},
		Env:          []string{"PATH=/usr/local/bin:/usr/bin:/bin", "KUBERNETES_SERVICE_HOST=10.96.0.1", "NODE_NAME=node-2"},
		Cwd:          "/srv",
		Capabilities: []string{"NET_ADMIN", "NET_BIND_SERVICE"}, NoNewPrivileges: true,
	}
	if spec.Rootfs != want.Rootfs || spec.ReadOnlyRootfs != want.ReadOnlyRootfs || !slices.Equal(spec.Mounts, want.Mounts) ||
		!slices.Equal(spec.Args, want.Args) || !slices.Equal(spec.Env, want.Env) || spec.Cwd != want.Cwd ||
		!slices.Equal(spec.Capabilities, want.Capabilities) || spec.NoNewPrivileges != want.NoNewPrivileges || spec.Privileged {
		t.Errorf("spec:\n got %+v\nwant %+v", spec, want)
	}

	c.WorkingDir = "/work"
	if spec, err := containerSpec(pod, c, img, src, map[string]string{"run": "/run/meridian"}, "", ""); err != nil || spec.Cwd != "/work" {
		t.Errorf("workingDir: cwd %q err %v", spec.Cwd, err)
	}

	// Each stage's error names the container.
	for name, mutate := range map[string]func(*corev1.Container){
		"env":      func(c *corev1.Container) { c.Env[0].ValueFrom.FieldRef.FieldPath = "spec.bogus" },
		"argv":     func(c *corev1.Container) { c.Args = nil },
		"mounts":   func(c *corev1.Container) { c.VolumeMounts[0].Name = "nope" },
		"security": func(c *corev1.Container) { c.SecurityContext.RunAsUser = new(int64(1)) },
	} {
		bad := *c.DeepCopy()
		mutate(&bad)
		img := img
		if name == "argv" {
			img.Config.Entrypoint = nil
		}
		if _, err := containerSpec(pod, bad, img, src, map[string]string{"run": "/run/meridian"}, "", ""); err == nil || !strings.Contains(err.Error(), "container meridiand") {
			t.Errorf("%s: err %v", name, err)
		}
	}
}

// The kubelet expands $(VAR) in env values, command and args against the
// container's own variables and the Service links only
// (expansion.MappingFuncFor(tmpEnv, serviceEnv)): it never sees the
// image's environment, which the runtime merges afterwards. A reference to
// an image variable stays as written on a real node.
func TestContainerEnvImageEnvNotExpanded(t *testing.T) {
	c := corev1.Container{Name: "app", Env: []corev1.EnvVar{
		{Name: "EXTRA_PATH", Value: "$(PATH):/opt/bin"},
		{Name: "API", Value: "https://$(KUBERNETES_SERVICE_HOST)"},
	}}
	src := envSources{Pod: specPod(), ServiceEnv: []string{"KUBERNETES_SERVICE_HOST=10.96.0.1"}}
	got, kubeletEnv, err := containerEnv([]string{"PATH=/usr/bin:/bin"}, c, src)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"EXTRA_PATH=$(PATH):/opt/bin", "API=https://10.96.0.1"} {
		if !slices.Contains(got, w) {
			t.Errorf("missing %q in %q", w, got)
		}
	}
	argv, err := containerArgv(corev1.Container{Name: "app", Command: []string{"echo", "$(PATH)"}}, nil, nil, kubeletEnv)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(argv, []string{"echo", "$(PATH)"}) {
		t.Errorf("argv %q: an image variable expanded", argv)
	}
}

// The kubelet refuses to start a container that must not run as root when
// it would (verifyRunAsNonRoot); the lab runs every container as root, so
// runAsNonRoot must be refused like another runAsUser, not ignored.
func TestSecuritySettingsRunAsNonRoot(t *testing.T) {
	for name, set := range map[string]func(*corev1.Pod, *corev1.Container){
		"pod": func(p *corev1.Pod, _ *corev1.Container) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: new(true)}
		},
		"container": func(_ *corev1.Pod, c *corev1.Container) {
			c.SecurityContext = &corev1.SecurityContext{RunAsNonRoot: new(true)}
		},
	} {
		t.Run(name, func(t *testing.T) {
			pod, c := specPod(), corev1.Container{Name: "app"}
			set(pod, &c)
			var spec container.Spec
			if err := securitySettings(pod, c, &spec); err == nil {
				t.Errorf("runAsNonRoot container set up to run as root: %+v", spec)
			}
		})
	}
	// runAsNonRoot false is no constraint.
	pod := specPod()
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: new(false)}
	var spec container.Spec
	if err := securitySettings(pod, corev1.Container{Name: "app"}, &spec); err != nil {
		t.Errorf("runAsNonRoot false: %v", err)
	}
}
