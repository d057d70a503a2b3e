package nodeagent

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
)

// defaultHTTPPort is served for a container that declares no port: most
// images the lab's seed uses without ports (nginx, httpd) listen on 80.
const defaultHTTPPort = 80

// servicePort is one socket a pod's stand-in servers listen on.
type servicePort struct {
	Protocol corev1.Protocol
	Port     int32
}

func (p servicePort) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Protocol) }

// podPorts lists, sorted and without duplicates, the sockets the pod's
// containers would listen on: every declared TCP or UDP containerPort, and
// TCP 80 for a container that declares none. SCTP ports are skipped: the
// lab has no SCTP stand-in. Init containers are not long-running and get
// none, except sidecars (restartPolicy Always), which run beside the others.
func podPorts(pod *corev1.Pod) []servicePort {
	var out []servicePort
	add := func(c corev1.Container) {
		if len(c.Ports) == 0 {
			out = append(out, servicePort{Protocol: corev1.ProtocolTCP, Port: defaultHTTPPort})
			return
		}
		for _, p := range c.Ports {
			proto := cmp.Or(p.Protocol, corev1.ProtocolTCP)
			if proto != corev1.ProtocolTCP && proto != corev1.ProtocolUDP {
				continue
			}
			out = append(out, servicePort{Protocol: proto, Port: p.ContainerPort})
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if isSidecar(c) {
			add(c)
		}
	}
	for _, c := range pod.Spec.Containers {
		add(c)
	}
	slices.SortFunc(out, func(a, b servicePort) int {
		return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
	})
	return slices.Compact(out)
}

// standInPorts are podPorts without the CoreDNS container's, which the real
// CoreDNS serves.
func standInPorts(pod *corev1.Pod) []servicePort {
	dns, ok := coreDNSContainer(pod)
	if !ok {
		return podPorts(pod)
	}
	p := *pod
	p.Spec.Containers = slices.DeleteFunc(slices.Clone(pod.Spec.Containers),
		func(c corev1.Container) bool { return c.Name == dns.Name })
	return podPorts(&p)
}

func isSidecar(c corev1.Container) bool {
	return c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

// servers are one pod's stand-in containers: listeners created inside the
// pod's netns, each with its own accept or read loop, and the connections
// they accepted. Stop ends all of them and waits for their goroutines.
type servers struct {
	log   *slog.Logger
	id    podIdentity
	ports []servicePort

	listeners []net.Listener
	packets   []net.PacketConn
	wg        sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// startServers listens on every port inside the netns at netnsPath (the
// current netns when netnsPath is empty) and starts serving. A socket keeps
// the netns it was created in, so only the socket calls need the thread to
// be switched; serving runs on ordinary goroutines. Nothing is left behind
// on error.
func startServers(netnsPath string, ports []servicePort, id podIdentity, log *slog.Logger) (*servers, error) {
	s := &servers{log: log, id: id, ports: ports, conns: map[net.Conn]struct{}{}}
	listen := func() error {
		for _, p := range ports {
			// The brief for the lab: listen on the IPv4 wildcard, as the
			// pods are single-stack IPv4.
			addr := net.JoinHostPort("0.0.0.0", strconv.Itoa(int(p.Port)))
			switch p.Protocol {
			case corev1.ProtocolTCP:
				l, err := net.Listen("tcp4", addr)
				if err != nil {
					return fmt.Errorf("listen %s: %w", p, err)
				}
				s.listeners = append(s.listeners, l)
			case corev1.ProtocolUDP:
				pc, err := net.ListenPacket("udp4", addr)
				if err != nil {
					return fmt.Errorf("listen %s: %w", p, err)
				}
				s.packets = append(s.packets, pc)
			}
		}
		return nil
	}
	var err error
	if netnsPath == "" {
		err = listen()
	} else {
		err = ns.WithNetNSPath(netnsPath, func(ns.NetNS) error { return listen() })
	}
	if err != nil {
		s.closeSockets()
		return nil, err
	}
	for _, l := range s.listeners {
		s.wg.Add(1)
		go s.acceptLoop(l)
	}
	for _, pc := range s.packets {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := serveUDP(pc); err != nil {
				s.log.Debug("udp echo ended", "addr", pc.LocalAddr().String(), "err", err)
			}
		}()
	}
	return s, nil
}

func (s *servers) acceptLoop(l net.Listener) {
	defer s.wg.Done()
	for {
		conn, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Warn("accept failed", "addr", l.Addr().String(), "err", err)
			}
			return
		}
		if !s.track(conn) {
			conn.Close()
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(conn)
			if err := serveConn(conn, s.id); err != nil {
				s.log.Debug("connection ended", "remote", conn.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// track records an accepted connection so Stop can close it; it refuses
// once Stop has begun, so no connection outlives Stop.
func (s *servers) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *servers) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// addrs are the bound local addresses, TCP first; tests that listen on
// port 0 learn their ports here.
func (s *servers) addrs() []net.Addr {
	var out []net.Addr
	for _, l := range s.listeners {
		out = append(out, l.Addr())
	}
	for _, pc := range s.packets {
		out = append(out, pc.LocalAddr())
	}
	return out
}

// matches reports whether the running servers are the ones wanted for
// these ports and this pod IP.
func (s *servers) matches(ports []servicePort, ip netip.Addr) bool {
	return s != nil && slices.Equal(s.ports, ports) && s.id.IP == ip.String()
}

func (s *servers) closeSockets() {
	for _, l := range s.listeners {
		l.Close()
	}
	for _, pc := range s.packets {
		pc.Close()
	}
}

// Stop closes the listeners and every open connection and waits until all
// goroutines of these servers have returned. It is safe to call twice.
func (s *servers) Stop() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.closed = true
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.closeSockets()
	for _, c := range conns {
		c.Close()
	}
	s.wg.Wait()
}
