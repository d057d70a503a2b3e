package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Names of the control plane's processes (log and pid files).
const (
	procEtcd              = "etcd"
	procAPIServer         = "kube-apiserver"
	procControllerManager = "kube-controller-manager"
	procScheduler         = "kube-scheduler"
)

// serviceAccountIssuer is the iss claim of service account tokens.
const serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// Timeouts for control plane start-up; measured /readyz is 3-5 s after
// start on an idle machine, so these only bound a failure on a busy one.
const (
	apiServerReadyTimeout = 120 * time.Second
	rbacTimeout           = 30 * time.Second
	// defaultServiceAccountTimeout bounds the controller manager's start
	// and first sync (measured: 2-4 s).
	defaultServiceAccountTimeout = 90 * time.Second
)

func etcdArgv(etcdBin, dataDir string) []string {
	return []string{
		etcdBin,
		"--name=mlab",
		"--data-dir=" + dataDir,
		"--listen-client-urls=" + etcdClientURL,
		"--advertise-client-urls=" + etcdClientURL,
		"--listen-peer-urls=" + etcdPeerURL,
		"--initial-advertise-peer-urls=" + etcdPeerURL,
		"--initial-cluster=mlab=" + etcdPeerURL,
		"--initial-cluster-state=new",
		"--logger=zap",
		"--log-outputs=stderr",
		// Debian's etcd 3.4 cannot answer the API server's
		// RequestWatchProgress, so an idle resource's watch cache never
		// learns etcd's newest revision and a watch or consistent list
		// from "now" fails with "Too large resource version". Periodic
		// progress notifications move the caches forward instead.
		"--experimental-watch-progress-notify-interval=1s",
	}
}

func apiServerArgv(binDir string, s layout) []string {
	f := s.pkiFiles()
	return []string{
		binPath(binDir, "kube-apiserver"),
		"--etcd-servers=" + etcdClientURL,
		"--bind-address=" + APIServerIP.String(),
		"--advertise-address=" + APIServerIP.String(),
		fmt.Sprintf("--secure-port=%d", APIServerPort),
		"--cert-dir=" + s.path("apiserver"),
		"--tls-cert-file=" + f.APIServerCert,
		"--tls-private-key-file=" + f.APIServerKey,
		"--client-ca-file=" + f.CACert,
		"--service-account-issuer=" + serviceAccountIssuer,
		"--service-account-key-file=" + f.SAPub,
		"--service-account-signing-key-file=" + f.SAKey,
		"--service-cluster-ip-range=" + ServiceCIDR.String(),
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		"--profiling=false",
		// What Meridian's service account asks for and is refused is how
		// the tests prove the chart's RBAC grants enough (audit.go).
		"--audit-policy-file=" + s.auditPolicyFile(),
		"--audit-log-path=" + s.auditLog(),
		"--audit-log-format=json",
		"--audit-log-maxsize=100",
	}
}

func controllerManagerArgv(binDir string, s layout) []string {
	f := s.pkiFiles()
	kc := s.path(controllerManagerKubeconfig)
	return []string{
		binPath(binDir, "kube-controller-manager"),
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--controllers=*",
		"--service-account-private-key-file=" + f.SAKey,
		"--root-ca-file=" + f.CACert,
		"--cluster-signing-cert-file=" + f.CACert,
		"--cluster-signing-key-file=" + f.CAKey,
		"--allocate-node-cidrs=true",
		"--cluster-cidr=" + ClusterCIDR.String(),
		"--node-cidr-mask-size=24",
		"--service-cluster-ip-range=" + ServiceCIDR.String(),
		"--cluster-name=meridian-lab",
		"--profiling=false",
	}
}

func schedulerArgv(binDir string, s layout) []string {
	kc := s.path(schedulerKubeconfig)
	return []string{
		binPath(binDir, "kube-scheduler"),
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--profiling=false",
	}
}

// startControlPlane starts etcd and the API server, waits for /readyz,
// installs Meridian's CRDs, then starts the controller manager and the
// scheduler. meridiand's RBAC is the chart's.
func (l *Lab) startControlPlane(ctx context.Context) error {
	if err := writeAuditPolicy(l.layout.auditPolicyFile()); err != nil {
		return err
	}
	if _, err := l.launch.start(procSpec{Name: procEtcd, Netns: CPNetns, Argv: etcdArgv(l.st.EtcdBin, l.layout.path("etcd"))}); err != nil {
		return err
	}
	// The API server retries etcd until it answers, so it need not wait.
	if _, err := l.launch.start(procSpec{Name: procAPIServer, Netns: CPNetns, Argv: apiServerArgv(l.st.BinDir, l.layout)}); err != nil {
		return err
	}
	t0 := time.Now()
	if err := l.waitAPIServerReady(ctx); err != nil {
		return err
	}
	l.log.Info("api server ready", "url", APIServerURL(), "after", time.Since(t0).Round(time.Millisecond))
	if err := l.applyCRDs(ctx); err != nil {
		return err
	}
	for _, p := range []procSpec{
		{Name: procControllerManager, Netns: CPNetns, Argv: controllerManagerArgv(l.st.BinDir, l.layout)},
		{Name: procScheduler, Netns: CPNetns, Argv: schedulerArgv(l.st.BinDir, l.layout)},
	} {
		if _, err := l.launch.start(p); err != nil {
			return err
		}
	}
	return nil
}

// waitAPIServerReady polls /readyz as the admin, and gives up early with
// the log tail when etcd or the API server has exited.
func (l *Lab) waitAPIServerReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, apiServerReadyTimeout)
	defer cancel()
	cs, err := l.Client()
	if err != nil {
		return err
	}
	var last error
	for {
		for _, name := range []string{procEtcd, procAPIServer} {
			if info, err := l.launch.read(name); err != nil || !info.Alive {
				return fmt.Errorf("%s exited during start-up; last lines of %s:\n%s",
					name, info.Log, tailFile(info.Log, 2048))
			}
		}
		// Without mlab0 nothing can answer; say so now rather than at
		// the timeout.
		if ok, err := hostLinkExists(); err == nil && !ok {
			return fmt.Errorf("the lab's host link %s vanished during start-up (removed by another process?)", HostLink)
		}
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		rcancel()
		if err == nil && strings.TrimSpace(string(body)) == "ok" {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("api server not ready at %s (last error: %v; see %s): %w",
				APIServerURL(), last, l.launch.logPath(procAPIServer), ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// clientFor builds a clientset from a kubeconfig file.
func clientFor(kubeconfig string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.UserAgent = "meridian-lab"
	// The lab's tests and benchmarks create pods in bursts; client-go's
	// default 5 QPS would measure the client's throttle, not the cluster.
	cfg.QPS, cfg.Burst = 200, 400
	// Bound to mlab0: if the lab's link is gone, requests fail instead of
	// leaving by the default route to whatever answers for 198.18.0.2 there.
	cfg.Dial = (&net.Dialer{Timeout: 10 * time.Second, Control: bindToDevice(HostLink)}).DialContext
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("client for %s: %w", kubeconfig, err)
	}
	return cs, nil
}

// bindToDevice is a net.Dialer Control that pins the socket to a link
// (SO_BINDTODEVICE).
func bindToDevice(link string) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.BindToDevice(int(fd), link)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("bind to %s: %w", link, serr)
		}
		return nil
	}
}

// waitDefaultServiceAccount waits until the controller manager has created
// the default ServiceAccount in the default namespace; until then the
// ServiceAccount admission plugin refuses pods there.
func (l *Lab) waitDefaultServiceAccount(ctx context.Context) error {
	cs, err := l.Client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, defaultServiceAccountTimeout)
	defer cancel()
	for {
		_, err := cs.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		if info, rerr := l.launch.read(procControllerManager); rerr != nil || !info.Alive {
			return fmt.Errorf("%s exited during start-up; last lines of %s:\n%s",
				procControllerManager, info.Log, tailFile(info.Log, 2048))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no default service account (see %s): %w",
				l.launch.logPath(procControllerManager), errors.Join(err, ctx.Err()))
		case <-time.After(250 * time.Millisecond):
		}
	}
}
