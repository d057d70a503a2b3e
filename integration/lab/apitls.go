package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// APIPort is the TCP port of every node's meridiand API listener
// (--api-listen), with mutual TLS; meridianctl's --node default.
const APIPort = 9092

// APIServerName is the DNS name in the API's serving certificate. All nodes
// share one certificate, as they share one mounted Secret with the chart,
// so clients verify this name rather than the node's address
// (meridianctl --tls-server-name).
const APIServerName = "meridiand"

// APIClientTLS are the files meridianctl reaches a node's daemon with:
// --tls-cert, --tls-key, --ca and --tls-server-name.
type APIClientTLS struct {
	CertFile, KeyFile, CAFile, ServerName string
}

func (s layout) apiTLSDir() string    { return s.path("api-tls") }
func (s layout) apiClientDir() string { return s.path("api-client") }

// APIClientTLS returns the client certificate the lab issued for the
// nodes' API listeners (CN meridianctl, signed by the lab's CA).
func (l *Lab) APIClientTLS() APIClientTLS {
	d := l.layout.apiClientDir()
	return APIClientTLS{
		CertFile:   filepath.Join(d, "tls.crt"),
		KeyFile:    filepath.Join(d, "tls.key"),
		CAFile:     filepath.Join(d, "ca.crt"),
		ServerName: APIServerName,
	}
}

// writeAPITLS writes the Secret-shaped directory meridiand's
// --api-tls-secret reads (tls.crt, tls.key, ca.crt) and meridianctl's
// client files, both from the lab's CA.
func (l *Lab) writeAPITLS(p *pki, now time.Time) error {
	server, err := p.CA.issue(certSpec{CommonName: APIServerName, DNSNames: []string{APIServerName}, Server: true}, now)
	if err != nil {
		return fmt.Errorf("issue API serving certificate: %w", err)
	}
	client, err := p.CA.issue(certSpec{CommonName: "meridianctl", Client: true}, now)
	if err != nil {
		return fmt.Errorf("issue API client certificate: %w", err)
	}
	for dir, kp := range map[string]keyPair{l.layout.apiTLSDir(): server, l.layout.apiClientDir(): client} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create API TLS dir: %w", err)
		}
		for name, b := range map[string][]byte{"tls.crt": kp.CertPEM, "tls.key": kp.KeyPEM, "ca.crt": p.CA.CertPEM} {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				return fmt.Errorf("write API TLS file: %w", err)
			}
		}
	}
	return nil
}
