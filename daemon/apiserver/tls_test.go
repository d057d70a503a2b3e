package apiserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// testCA issues certificates for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, cn string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns PEM certificate and key for cn; server certificates name
// 127.0.0.1.
func (ca testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// writeSecretDir writes files the way a mounted kubernetes.io/tls Secret
// holds them.
func writeSecretDir(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// serverDir is a Secret directory for a server certificate from ca that
// trusts clients of clientCA.
func serverDir(t *testing.T, ca, clientCA testCA) string {
	dir := t.TempDir()
	crt, key := ca.issue(t, "meridiand", x509.ExtKeyUsageServerAuth)
	writeSecretDir(t, dir, map[string][]byte{TLSCertFile: crt, TLSKeyFile: key, TLSCAFile: clientCA.pem})
	return dir
}

// clientTLS writes a client certificate from ca and the server CA
// serverCA, and loads them with ClientTLS.
func clientTLS(t *testing.T, ca, serverCA testCA, usage x509.ExtKeyUsage) *tls.Config {
	dir := t.TempDir()
	crt, key := ca.issue(t, "operator", usage)
	writeSecretDir(t, dir, map[string][]byte{"tls.crt": crt, "tls.key": key, "ca.crt": serverCA.pem})
	cfg, err := ClientTLS(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt"), "")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startTCP(t *testing.T, tlsDir string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(testSources(), nil).ServeTCP(ctx, ln, tlsDir) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeTCP: %v", err)
		}
	})
	return ln.Addr().String()
}

// check calls the health service over TLS config cfg (nil: plaintext).
func check(t *testing.T, addr string, cfg *tls.Config) error {
	t.Helper()
	creds := credentials.NewTLS(cfg)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
	return err
}

func TestServeTCPRequiresClientCertificates(t *testing.T) {
	ca, other := newTestCA(t, "cluster-ca"), newTestCA(t, "other-ca")
	addr := startTCP(t, serverDir(t, ca, ca))

	good := clientTLS(t, ca, ca, x509.ExtKeyUsageClientAuth)
	if err := check(t, addr, good); err != nil {
		t.Fatalf("client with a certificate from the cluster CA refused: %v", err)
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	// Go clients send no certificate the server's CertificateRequest does
	// not name the CA of; force it, so the server's own verification is
	// what refuses it.
	forced := clientTLS(t, other, ca, x509.ExtKeyUsageClientAuth)
	cert := forced.Certificates[0]
	forced.Certificates = nil
	forced.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	cases := map[string]*tls.Config{
		"no client certificate":                 {RootCAs: pool, MinVersion: tls.VersionTLS12},
		"certificate from another CA":           clientTLS(t, other, ca, x509.ExtKeyUsageClientAuth),
		"another CA's certificate, sent anyway": forced,
		// A server certificate of the right CA is not a client's.
		"server certificate as client": clientTLS(t, ca, ca, x509.ExtKeyUsageServerAuth),
	}
	for name, cfg := range cases {
		err := check(t, addr, cfg)
		if err == nil {
			t.Errorf("%s: health check succeeded, want the handshake refused", name)
		}
		t.Logf("%s: %v", name, err)
	}
}

func TestServeTCPRefusesWithoutTLS(t *testing.T) {
	for name, dir := range map[string]string{
		"no directory": "",
		"empty":        t.TempDir(),
		"no CA to check clients": func() string {
			ca := newTestCA(t, "ca")
			d := serverDir(t, ca, ca)
			os.Remove(filepath.Join(d, TLSCAFile))
			return d
		}(),
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		err = New(testSources(), nil).ServeTCP(context.Background(), ln, dir)
		if err == nil {
			t.Errorf("%s: ServeTCP served", name)
		}
		// The listener is closed: nothing answers on it.
		if c, derr := net.DialTimeout("tcp", ln.Addr().String(), time.Second); derr == nil {
			c.Close()
			t.Errorf("%s: listener still accepts after ServeTCP failed (%v)", name, err)
		}
	}
}

// A rotated Secret is served without a restart; a half-written rotation
// (certificate without its key) keeps the previous one.
func TestServeTCPReloadsRotatedCertificates(t *testing.T) {
	oldCA, newCA := newTestCA(t, "old-ca"), newTestCA(t, "new-ca")
	dir := serverDir(t, oldCA, oldCA)
	addr := startTCP(t, dir)
	oldClient := clientTLS(t, oldCA, oldCA, x509.ExtKeyUsageClientAuth)
	newClient := clientTLS(t, newCA, newCA, x509.ExtKeyUsageClientAuth)
	if err := check(t, addr, oldClient); err != nil {
		t.Fatalf("before rotation: %v", err)
	}

	crt, key := newCA.issue(t, "meridiand", x509.ExtKeyUsageServerAuth)
	writeSecretDir(t, dir, map[string][]byte{TLSCertFile: crt})
	time.Sleep(reloadInterval + 100*time.Millisecond)
	if err := check(t, addr, oldClient); err != nil {
		t.Fatalf("certificate without its key: previous certificates not kept: %v", err)
	}

	writeSecretDir(t, dir, map[string][]byte{TLSKeyFile: key, TLSCAFile: newCA.pem})
	time.Sleep(reloadInterval + 100*time.Millisecond)
	if err := check(t, addr, newClient); err != nil {
		t.Fatalf("after rotation, client of the new CA refused: %v", err)
	}
	if err := check(t, addr, oldClient); err == nil {
		t.Fatal("after rotation, client of the old CA still accepted")
	}
}
