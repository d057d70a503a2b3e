package apiserver

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// The file names of a kubernetes.io/tls Secret mounted as a directory, with
// the ca.crt cert-manager and `kubectl create secret generic --from-file`
// add beside them.
const (
	TLSCertFile = "tls.crt"
	TLSKeyFile  = "tls.key"
	TLSCAFile   = "ca.crt"
)

// reloadInterval bounds how often a handshake re-reads the files: rotation
// takes the kubelet up to a minute to project, so a second is plenty fresh
// and keeps a burst of connections from reading the disk for each one.
const reloadInterval = time.Second

// CertReloader serves the TCP listener's TLS configuration from a Secret
// directory and picks up rotated files without a restart. The kubelet
// swaps a mounted Secret atomically (a ..data symlink to a new directory),
// so comparing the files' bytes finds every rotation whatever the
// timestamps say. A rotation that leaves the files unreadable or
// mismatched keeps the last good configuration and logs why.
type CertReloader struct {
	dir string
	log *slog.Logger

	mu      sync.Mutex
	checked time.Time
	raw     [3][]byte // cert, key, CA as last loaded
	cfg     *tls.Config
}

// NewCertReloader loads dir once; a missing or invalid file is an error, so
// meridiand refuses to open a TCP listener it could not protect.
func NewCertReloader(dir string, log *slog.Logger) (*CertReloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &CertReloader{dir: dir, log: log}
	raw, err := readTLSDir(dir)
	if err != nil {
		return nil, err
	}
	cfg, err := serverTLS(raw)
	if err != nil {
		return nil, fmt.Errorf("TLS directory %s: %w", dir, err)
	}
	r.raw, r.cfg, r.checked = raw, cfg, time.Now()
	return r, nil
}

// ServerConfig is the configuration to listen with; every handshake gets
// the current certificates from the directory.
func (r *CertReloader) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return r.current(), nil },
	}
}

func (r *CertReloader) current() *tls.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < reloadInterval {
		return r.cfg
	}
	r.checked = time.Now()
	raw, err := readTLSDir(r.dir)
	if err != nil {
		r.log.Warn("API TLS files unreadable; serving the previous certificates", "dir", r.dir, "err", err)
		return r.cfg
	}
	if bytes.Equal(raw[0], r.raw[0]) && bytes.Equal(raw[1], r.raw[1]) && bytes.Equal(raw[2], r.raw[2]) {
		return r.cfg
	}
	cfg, err := serverTLS(raw)
	if err != nil {
		// Mid-rotation a projected volume can briefly hold the new
		// certificate with the old key; the next handshake looks again.
		r.log.Warn("API TLS files changed but are not usable; serving the previous certificates", "dir", r.dir, "err", err)
		return r.cfg
	}
	r.raw, r.cfg = raw, cfg
	r.log.Info("API TLS certificates reloaded", "dir", r.dir)
	return cfg
}

func readTLSDir(dir string) ([3][]byte, error) {
	var raw [3][]byte
	var errs []error
	for i, name := range []string{TLSCertFile, TLSKeyFile, TLSCAFile} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			errs = append(errs, err)
		}
		raw[i] = b
	}
	if err := errors.Join(errs...); err != nil {
		return raw, fmt.Errorf("read TLS directory (a kubernetes.io/tls Secret with ca.crt): %w", err)
	}
	return raw, nil
}

func serverTLS(raw [3][]byte) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(raw[0], raw[1])
	if err != nil {
		return nil, fmt.Errorf("load %s and %s: %w", TLSCertFile, TLSKeyFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw[2]) {
		return nil, fmt.Errorf("%s holds no PEM certificate to verify clients with", TLSCAFile)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		// Verification includes the client certificate's extended key
		// usage: a server certificate from the same CA is not a client.
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  pool,
	}, nil
}

// ClientTLS is the configuration a client dials the TCP listener with: its
// certificate and key, and the CA that signed the server's certificate.
// serverName is the name the server's certificate must carry; empty means
// the host dialled.
func ClientTLS(certFile, keyFile, caFile, serverName string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("mutual TLS needs a client certificate, its key and the CA of the server's certificate")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load client certificate: %w", err)
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
	}, nil
}
