package nodeagent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// prober runs one container probe the kubelet's way: from the node, against
// the pod's address (the node's, for host-network pods) unless the probe
// names a host; HTTP status 200..399 or an accepted TCP connection pass.
type prober struct {
	probe  *corev1.Probe
	ctr    corev1.Container
	podIP  string
	client *http.Client
}

func newProber(p *corev1.Probe, c corev1.Container, podIP string) *prober {
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	return &prober{probe: p, ctr: c, podIP: podIP, client: &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			// The kubelet does not verify probe certificates either.
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // as the kubelet
		},
		// The kubelet follows redirects on the same host (up to 10) and
		// counts one to another host as a pass without following it.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 || req.URL.Hostname() != via[0].URL.Hostname() {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}}
}

// port resolves a probe port: a number, or the name of one of the
// container's ports.
func probePort(c corev1.Container, p intstr.IntOrString) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, p.StrVal)
}

// once runs the probe one time.
func (p *prober) once(ctx context.Context) error {
	h := p.probe.ProbeHandler
	switch {
	case h.HTTPGet != nil:
		g := h.HTTPGet
		port, err := probePort(p.ctr, g.Port)
		if err != nil {
			return err
		}
		host := g.Host
		if host == "" {
			host = p.podIP
		}
		scheme := strings.ToLower(string(g.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		path := g.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort(host, strconv.Itoa(port))+path, nil)
		if err != nil {
			return err
		}
		for _, hd := range g.HTTPHeaders {
			if strings.EqualFold(hd.Name, "Host") {
				req.Host = hd.Value
				continue
			}
			req.Header.Add(hd.Name, hd.Value)
		}
		if req.Header.Get("User-Agent") == "" {
			req.Header.Set("User-Agent", "kube-probe/meridian-lab")
		}
		if req.Header.Get("Accept") == "" {
			req.Header.Set("Accept", "*/*")
		}
		resp, err := p.client.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
		}
		return nil
	case h.TCPSocket != nil:
		port, err := probePort(p.ctr, h.TCPSocket.Port)
		if err != nil {
			return err
		}
		host := h.TCPSocket.Host
		if host == "" {
			host = p.podIP
		}
		d := net.Dialer{Timeout: p.client.Timeout}
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return c.Close()
	}
	return errors.New("only httpGet and tcpSocket probes are supported by the lab agent")
}

// run probes until ctx ends, calling report with each change of the
// result: to passing after successThreshold passes in a row, to failing
// after failureThreshold failures. The result starts at initial.
func (p *prober) run(ctx context.Context, initial bool, report func(ok bool, err error)) {
	pr := p.probe
	period := time.Duration(max(pr.PeriodSeconds, 1)) * time.Second
	succ, fail := max(pr.SuccessThreshold, 1), max(pr.FailureThreshold, 1)
	delay := time.Duration(pr.InitialDelaySeconds) * time.Second
	state := initial
	var okRun, failRun int32
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = period
		err := p.once(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			okRun, failRun = okRun+1, 0
		} else {
			okRun, failRun = 0, failRun+1
		}
		switch {
		case !state && okRun >= succ:
			state = true
			report(true, nil)
		case state && failRun >= fail:
			state = false
			report(false, err)
		}
	}
}
