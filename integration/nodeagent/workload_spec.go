package nodeagent

import (
	"errors"
	"fmt"
	"net"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/meridian-net/meridian/integration/nodeagent/container"
)

// This file turns one container of a pod the agent runs for real (see
// workload.go) into the runtime's Spec, the way the kubelet and containerd
// do between them: command and args against the image's entrypoint, the
// environment (image, Service links, the container's own, with $(VAR)
// references expanded), volume mounts and the security context. It is pure:
// volumes are already on disk (volumeDirs) and API lookups come in as
// values.

// envSources is what a container's env may refer to.
type envSources struct {
	Pod    *corev1.Pod
	NodeIP string
	// ServiceEnv are the Service link variables (serviceEnv).
	ServiceEnv []string
	// ConfigMaps and Secrets the env refers to, by name in the pod's
	// namespace; a missing one is absent from the map.
	ConfigMaps map[string]*corev1.ConfigMap
	Secrets    map[string]*corev1.Secret
}

// containerEnv is the container's environment. The kubelet's part comes
// in its order: the Service links, then the container's envFrom and env,
// later ones replacing earlier ones of the same name, each value expanded
// against the kubelet's variables before it (never the image's, which the
// kubelet does not see). The runtime then lays that over the image's
// environment. It returns both: env for the process, and kubeletEnv, what
// $(VAR) in command and args may refer to.
func containerEnv(imageEnv []string, c corev1.Container, src envSources) (env, kubeletEnv []string, err error) {
	var names []string
	vals := map[string]string{}
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			names = append(names, k)
		}
		vals[k] = v
	}
	for _, kv := range src.ServiceEnv {
		k, v, _ := strings.Cut(kv, "=")
		set(k, v)
	}
	var errs []error
	for _, from := range c.EnvFrom {
		data, err := envFromData(from, src)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			set(from.Prefix+k, data[k])
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expand(e.Value, vals))
			continue
		}
		v, ok, err := envValueFrom(e, src)
		if err != nil {
			errs = append(errs, fmt.Errorf("env %s: %w", e.Name, err))
			continue
		}
		if ok {
			set(e.Name, v)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	for _, k := range names {
		kubeletEnv = append(kubeletEnv, k+"="+vals[k])
	}
	// The runtime's merge: the image's variables in their order, each
	// replaced by the kubelet's of the same name, then the kubelet's new ones.
	for _, kv := range imageEnv {
		k, v, _ := strings.Cut(kv, "=")
		if kv2, ok := vals[k]; ok {
			v = kv2
			delete(vals, k)
		}
		env = append(env, k+"="+v)
	}
	for _, k := range names {
		if v, ok := vals[k]; ok {
			env = append(env, k+"="+v)
		}
	}
	return env, kubeletEnv, nil
}

func envFromData(from corev1.EnvFromSource, src envSources) (map[string]string, error) {
	switch {
	case from.ConfigMapRef != nil:
		cm := src.ConfigMaps[from.ConfigMapRef.Name]
		if cm == nil {
			if from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional {
				return nil, nil
			}
			return nil, fmt.Errorf("configmap %q not found", from.ConfigMapRef.Name)
		}
		return cm.Data, nil
	case from.SecretRef != nil:
		s := src.Secrets[from.SecretRef.Name]
		if s == nil {
			if from.SecretRef.Optional != nil && *from.SecretRef.Optional {
				return nil, nil
			}
			return nil, fmt.Errorf("secret %q not found", from.SecretRef.Name)
		}
		out := make(map[string]string, len(s.Data))
		for k, v := range s.Data {
			out[k] = string(v)
		}
		return out, nil
	}
	return nil, errors.New("envFrom names neither a configmap nor a secret")
}

// envValueFrom resolves one valueFrom; ok is false for an optional key
// that is missing (the variable is then not set at all).
func envValueFrom(e corev1.EnvVar, src envSources) (string, bool, error) {
	vf := e.ValueFrom
	switch {
	case vf.FieldRef != nil:
		v, err := podField(src.Pod, src.NodeIP, vf.FieldRef.FieldPath)
		return v, err == nil, err
	case vf.ConfigMapKeyRef != nil:
		r := vf.ConfigMapKeyRef
		optional := r.Optional != nil && *r.Optional
		cm := src.ConfigMaps[r.Name]
		if cm == nil {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("configmap %q not found", r.Name)
		}
		v, ok := cm.Data[r.Key]
		if !ok && !optional {
			return "", false, fmt.Errorf("configmap %q has no key %q", r.Name, r.Key)
		}
		return v, ok, nil
	case vf.SecretKeyRef != nil:
		r := vf.SecretKeyRef
		optional := r.Optional != nil && *r.Optional
		s := src.Secrets[r.Name]
		if s == nil {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("secret %q not found", r.Name)
		}
		v, ok := s.Data[r.Key]
		if !ok && !optional {
			return "", false, fmt.Errorf("secret %q has no key %q", r.Name, r.Key)
		}
		return string(v), ok, nil
	case vf.ResourceFieldRef != nil:
		return "", false, fmt.Errorf("resourceFieldRef %s is not supported by the lab agent", vf.ResourceFieldRef.Resource)
	}
	return "", false, errors.New("valueFrom names no source")
}

// podField is a downward API field of the pod, as the kubelet resolves it.
func podField(pod *corev1.Pod, nodeIP, fieldPath string) (string, error) {
	switch fieldPath {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP":
		return nodeIP, nil
	case "status.podIP":
		// A pod the agent runs for real is in the host network.
		return nodeIP, nil
	}
	if k, ok := strings.CutPrefix(fieldPath, "metadata.labels['"); ok {
		return pod.Labels[strings.TrimSuffix(k, "']")], nil
	}
	if k, ok := strings.CutPrefix(fieldPath, "metadata.annotations['"); ok {
		return pod.Annotations[strings.TrimSuffix(k, "']")], nil
	}
	return "", fmt.Errorf("field %q is not supported", fieldPath)
}

// expand replaces $(NAME) with NAME's value when NAME is defined, turns
// $$ into $, and leaves everything else as it is: Kubernetes' rule for
// env values, command and args.
func expand(s string, vals map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteByte('$')
				continue
			}
			name := s[i+2 : i+2+end]
			if v, ok := vals[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// serviceEnv is the kubelet's Service link variables for svcs (the
// kubernetes Service always, the pod namespace's when enableServiceLinks):
// FOO_SERVICE_HOST, FOO_SERVICE_PORT and the Docker-link FOO_PORT family.
func serviceEnv(svcs []*corev1.Service) []string {
	var out []string
	for _, s := range svcs {
		if s.Spec.ClusterIP == "" || s.Spec.ClusterIP == corev1.ClusterIPNone || len(s.Spec.Ports) == 0 {
			continue
		}
		name := strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
		ip := s.Spec.ClusterIP
		first := s.Spec.Ports[0]
		out = append(out,
			name+"_SERVICE_HOST="+ip,
			name+"_SERVICE_PORT="+strconv.Itoa(int(first.Port)))
		for _, p := range s.Spec.Ports {
			if p.Name != "" {
				out = append(out, name+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_"))+"="+strconv.Itoa(int(p.Port)))
			}
		}
		proto := strings.ToLower(string(first.Protocol))
		if proto == "" {
			proto = "tcp"
		}
		out = append(out, fmt.Sprintf("%s_PORT=%s://%s", name, proto, net.JoinHostPort(ip, strconv.Itoa(int(first.Port)))))
		for _, p := range s.Spec.Ports {
			pr := p.Protocol
			if pr == "" {
				pr = corev1.ProtocolTCP
			}
			pre := fmt.Sprintf("%s_PORT_%d_%s", name, p.Port, strings.ToUpper(string(pr)))
			out = append(out,
				fmt.Sprintf("%s=%s://%s", pre, strings.ToLower(string(pr)), net.JoinHostPort(ip, strconv.Itoa(int(p.Port)))),
				pre+"_PROTO="+strings.ToLower(string(pr)),
				fmt.Sprintf("%s_PORT=%d", pre, p.Port),
				pre+"_ADDR="+ip)
		}
	}
	return out
}

// containerArgv is the process the runtime starts: command replaces the
// image's entrypoint, and args its cmd (an entrypoint without command
// keeps the image's cmd only when args are not given either), expanded
// against env, the kubelet's variables (containerEnv's kubeletEnv).
func containerArgv(c corev1.Container, entrypoint, cmd, env []string) ([]string, error) {
	var argv []string
	switch {
	case len(c.Command) > 0:
		argv = append(slices.Clone(c.Command), c.Args...)
	case len(c.Args) > 0:
		argv = append(slices.Clone(entrypoint), c.Args...)
	default:
		argv = append(slices.Clone(entrypoint), cmd...)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("container %s: no command and the image has no entrypoint", c.Name)
	}
	vals := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vals[k] = v
	}
	for i := range argv {
		argv[i] = expand(argv[i], vals)
	}
	return argv, nil
}

// containerMounts are the container's volume mounts as host paths, plus the
// files the kubelet adds: resolv.conf and hosts.
func containerMounts(pod *corev1.Pod, c corev1.Container, volumeDirs map[string]string, resolvConf, hostsFile string) ([]container.Mount, error) {
	var out []container.Mount
	var errs []error
	for _, vm := range c.VolumeMounts {
		dir, ok := volumeDirs[vm.Name]
		if !ok {
			errs = append(errs, fmt.Errorf("volume mount %s: no volume %q in the pod", vm.MountPath, vm.Name))
			continue
		}
		if !path.IsAbs(vm.MountPath) {
			errs = append(errs, fmt.Errorf("volume mount %s: not an absolute path", vm.MountPath))
			continue
		}
		src := dir
		if vm.SubPath != "" {
			if !filepath.IsLocal(vm.SubPath) {
				errs = append(errs, fmt.Errorf("volume mount %s: subPath %q leaves the volume", vm.MountPath, vm.SubPath))
				continue
			}
			src = filepath.Join(dir, vm.SubPath)
		}
		prop := container.Propagation("None")
		if vm.MountPropagation != nil {
			prop = container.Propagation(*vm.MountPropagation)
		}
		if prop == "Bidirectional" && !privileged(c) {
			errs = append(errs, fmt.Errorf("volume mount %s: Bidirectional propagation needs a privileged container", vm.MountPath))
			continue
		}
		out = append(out, container.Mount{Source: src, Target: path.Clean(vm.MountPath), ReadOnly: vm.ReadOnly, Propagation: prop})
	}
	if resolvConf != "" {
		out = append(out, container.Mount{Source: resolvConf, Target: "/etc/resolv.conf", ReadOnly: true, Propagation: "None"})
	}
	if hostsFile != "" {
		out = append(out, container.Mount{Source: hostsFile, Target: "/etc/hosts", ReadOnly: true, Propagation: "None"})
	}
	return out, errors.Join(errs...)
}

func privileged(c corev1.Container) bool {
	return c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged
}

// securitySettings applies the pod's and the container's security context:
// capabilities by containerd's rule, a read-only root file system,
// no_new_privs when privilege escalation is off. The lab runs every
// container as root, so another runAsUser is refused rather than ignored.
func securitySettings(pod *corev1.Pod, c corev1.Container, spec *container.Spec) error {
	uid := int64(0)
	if psc := pod.Spec.SecurityContext; psc != nil && psc.RunAsUser != nil {
		uid = *psc.RunAsUser
	}
	sc := c.SecurityContext
	if sc != nil && sc.RunAsUser != nil {
		uid = *sc.RunAsUser
	}
	if uid != 0 {
		return fmt.Errorf("container %s: runAsUser %d: the lab runtime runs containers as root only", c.Name, uid)
	}
	nonRoot := false
	if psc := pod.Spec.SecurityContext; psc != nil && psc.RunAsNonRoot != nil {
		nonRoot = *psc.RunAsNonRoot
	}
	if sc != nil && sc.RunAsNonRoot != nil {
		nonRoot = *sc.RunAsNonRoot
	}
	if nonRoot {
		// The kubelet's verifyRunAsNonRoot: the container would run as root.
		return fmt.Errorf("container %s: container has runAsNonRoot and would run as root", c.Name)
	}
	spec.Privileged = privileged(c)
	var add, drop []string
	if sc != nil && sc.Capabilities != nil {
		for _, a := range sc.Capabilities.Add {
			add = append(add, string(a))
		}
		for _, d := range sc.Capabilities.Drop {
			drop = append(drop, string(d))
		}
	}
	caps, err := container.EffectiveCapabilities(spec.Privileged, add, drop)
	if err != nil {
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	spec.Capabilities = caps
	spec.ReadOnlyRootfs = sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
	spec.NoNewPrivileges = sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
	return nil
}

// containerSpec assembles the runtime's Spec for c.
func containerSpec(pod *corev1.Pod, c corev1.Container, img container.Image, src envSources, volumeDirs map[string]string, resolvConf, hostsFile string) (container.Spec, error) {
	env, kubeletEnv, err := containerEnv(img.Config.Env, c, src)
	if err != nil {
		return container.Spec{}, fmt.Errorf("container %s: %w", c.Name, err)
	}
	argv, err := containerArgv(c, img.Config.Entrypoint, img.Config.Cmd, kubeletEnv)
	if err != nil {
		return container.Spec{}, err
	}
	mounts, err := containerMounts(pod, c, volumeDirs, resolvConf, hostsFile)
	if err != nil {
		return container.Spec{}, fmt.Errorf("container %s: %w", c.Name, err)
	}
	cwd := c.WorkingDir
	if cwd == "" {
		cwd = img.Config.WorkingDir
	}
	spec := container.Spec{Rootfs: img.Rootfs, Mounts: mounts, Args: argv, Env: env, Cwd: cwd}
	if err := securitySettings(pod, c, &spec); err != nil {
		return container.Spec{}, err
	}
	return spec, nil
}
