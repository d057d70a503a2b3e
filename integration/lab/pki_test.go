package lab

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

func testPKI(t *testing.T) *pki {
	t.Helper()
	p, err := generatePKI(time.Now())
	if err != nil {
		t.Fatalf("generatePKI: %v", err)
	}
	return p
}

func TestServingCertificateVerifiesForEveryAPIServerName(t *testing.T) {
	p := testPKI(t)
	roots := x509.NewCertPool()
	roots.AddCert(p.CA.Cert)
	names := []string{
		"198.18.0.2", "10.96.0.1", "127.0.0.1", "localhost",
		"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
	}
	for _, name := range names {
		if _, err := p.APIServer.Cert.Verify(x509.VerifyOptions{
			DNSName: name, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}); err != nil {
			t.Errorf("serving certificate does not verify for %s: %v", name, err)
		}
	}
	if _, err := p.APIServer.Cert.Verify(x509.VerifyOptions{DNSName: "198.18.0.3", Roots: roots}); err == nil {
		t.Errorf("serving certificate verifies for 198.18.0.3, which it must not name")
	}
	if _, err := p.APIServer.Cert.Verify(x509.VerifyOptions{
		Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err == nil {
		t.Errorf("serving certificate is also a client certificate")
	}
}

func TestClientCertificatesCarryIdentities(t *testing.T) {
	p := testPKI(t)
	roots := x509.NewCertPool()
	roots.AddCert(p.CA.Cert)
	for _, tc := range []struct {
		kp     keyPair
		cn     string
		groups []string
	}{
		{p.Admin, "admin", []string{"system:masters"}},
		{p.ControllerManager, "system:kube-controller-manager", nil},
		{p.Scheduler, "system:kube-scheduler", nil},
	} {
		if got := tc.kp.Cert.Subject.CommonName; got != tc.cn {
			t.Errorf("CN = %q, want %q", got, tc.cn)
		}
		if got := tc.kp.Cert.Subject.Organization; strings.Join(got, ",") != strings.Join(tc.groups, ",") {
			t.Errorf("%s: O = %q, want %q", tc.cn, got, tc.groups)
		}
		if _, err := tc.kp.Cert.Verify(x509.VerifyOptions{
			Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}); err != nil {
			t.Errorf("%s: client certificate does not verify: %v", tc.cn, err)
		}
		if _, err := tls.X509KeyPair(tc.kp.CertPEM, tc.kp.KeyPEM); err != nil {
			t.Errorf("%s: PEM certificate and key do not pair: %v", tc.cn, err)
		}
	}
	if !p.CA.Cert.IsCA {
		t.Errorf("CA certificate is not a CA")
	}
}

func TestPKIFilesAreReadableByTheComponents(t *testing.T) {
	p := testPKI(t)
	f := newPKIFiles(filepath.Join(t.TempDir(), "pki"))
	if err := p.write(f); err != nil {
		t.Fatalf("write: %v", err)
	}
	if _, err := tls.LoadX509KeyPair(f.APIServerCert, f.APIServerKey); err != nil {
		t.Errorf("serving pair: %v", err)
	}
	if _, err := tls.LoadX509KeyPair(f.CACert, f.CAKey); err != nil {
		t.Errorf("ca pair (cluster signing): %v", err)
	}
	pubPEM, err := os.ReadFile(f.SAPub)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pubPEM)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		t.Fatalf("sa.pub is not a PEM public key: %q", pubPEM)
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatalf("parse sa.pub: %v", err)
	}
	keyPEM, err := os.ReadFile(f.SAKey)
	if err != nil {
		t.Fatal(err)
	}
	kblk, _ := pem.Decode(keyPEM)
	if kblk == nil {
		t.Fatalf("sa.key is not PEM")
	}
	key, err := x509.ParseECPrivateKey(kblk.Bytes)
	if err != nil {
		t.Fatalf("parse sa.key: %v", err)
	}
	if !key.PublicKey.Equal(pub.(*ecdsa.PublicKey)) {
		t.Errorf("sa.pub does not belong to sa.key")
	}
	for _, path := range []string{f.CAKey, f.APIServerKey, f.SAKey} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is readable by others: %v", path, st.Mode())
		}
	}
}

// TestKubeconfigAuthenticatesOverMutualTLS renders a kubeconfig, loads it
// with client-go as every component does, and talks to a TLS server that
// uses the lab's serving certificate and demands a client certificate from
// the lab CA, the way kube-apiserver does.
func TestKubeconfigAuthenticatesOverMutualTLS(t *testing.T) {
	p := testPKI(t)
	serving, err := tls.X509KeyPair(p.APIServer.CertPEM, p.APIServer.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(p.CA.Cert)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := r.TLS.VerifiedChains[0][0]
		fmt.Fprintf(w, "%s %s", c.Subject.CommonName, strings.Join(c.Subject.Organization, ","))
	}))
	srv.Listener.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{serving},
		ClientCAs:    clientCAs,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	for _, tc := range []struct {
		kp   keyPair
		want string
	}{
		{p.Admin, "admin system:masters"},
		{p.Scheduler, "system:kube-scheduler "},
	} {
		path := filepath.Join(t.TempDir(), "kubeconfig")
		if err := writeKubeconfig(path, srv.URL, p.CA.CertPEM, tc.kp); err != nil {
			t.Fatalf("writeKubeconfig: %v", err)
		}
		raw, err := clientcmd.LoadFromFile(path)
		if err != nil {
			t.Fatalf("load kubeconfig: %v", err)
		}
		if raw.CurrentContext != kubeconfigContext || raw.Clusters[kubeconfigContext].Server != srv.URL {
			t.Errorf("kubeconfig context %q server %q", raw.CurrentContext, raw.Clusters[kubeconfigContext].Server)
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			t.Fatalf("build config: %v", err)
		}
		hc, err := rest.HTTPClientFor(cfg)
		if err != nil {
			t.Fatalf("http client: %v", err)
		}
		resp, err := hc.Get(srv.URL + "/whoami")
		if err != nil {
			t.Fatalf("request with %s kubeconfig: %v", tc.kp.Cert.Subject.CommonName, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != tc.want {
			t.Errorf("server saw %q, want %q", body, tc.want)
		}
	}

	// A certificate from another CA must be refused: the server really
	// checks, so the success above means something.
	other := testPKI(t)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := writeKubeconfig(path, srv.URL, p.CA.CertPEM, other.Admin); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := hc.Get(srv.URL + "/whoami"); err == nil {
		resp.Body.Close()
		t.Errorf("client certificate from a foreign CA was accepted")
	}
}
