package lab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Identities the lab issues client certificates for. The API server maps
// CN to the user name and O to groups.
const (
	adminUser             = "admin"
	mastersGroup          = "system:masters"
	controllerManagerUser = "system:kube-controller-manager"
	schedulerUser         = "system:kube-scheduler"
)

// certValidity is long enough for any lab session; NotBefore is backdated so
// a lab started right after a clock step still verifies.
const (
	certValidity = 365 * 24 * time.Hour
	certBackdate = time.Hour
)

// keyPair is a certificate with its private key, parsed and PEM-encoded.
type keyPair struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	KeyPEM  []byte
}

// certSpec says what a certificate is for.
type certSpec struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPs          []net.IP
	Server       bool
	Client       bool
}

// pki is everything the control plane and its clients need. ECDSA P-256
// throughout: every Kubernetes component accepts it (ES256 for service
// account tokens) and keys are generated in microseconds, not the ~100 ms of
// RSA-2048.
type pki struct {
	CA                keyPair
	APIServer         keyPair
	Admin             keyPair
	ControllerManager keyPair
	Scheduler         keyPair
	// ServiceAccount signs and verifies service account tokens.
	ServiceAccount *ecdsa.PrivateKey
}

// apiServerSANs are the names the API server answers to: its lab address,
// the kubernetes Service's ClusterIP and in-cluster DNS names, and loopback
// for components that talk to it from inside the control plane namespace.
func apiServerSANs() certSpec {
	return certSpec{
		CommonName: "kube-apiserver",
		DNSNames: []string{
			"kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local", "localhost",
		},
		IPs: []net.IP{
			net.IP(APIServerIP.AsSlice()), net.IP(KubernetesServiceIP.AsSlice()),
			net.IPv4(127, 0, 0, 1),
		},
		Server: true,
	}
}

// generatePKI makes a fresh CA and every certificate the lab uses.
func generatePKI(now time.Time) (*pki, error) {
	ca, err := newCA("meridian-lab-ca", now)
	if err != nil {
		return nil, err
	}
	p := &pki{CA: ca}
	issue := []struct {
		dst  *keyPair
		spec certSpec
	}{
		{&p.APIServer, apiServerSANs()},
		{&p.Admin, certSpec{CommonName: adminUser, Organization: []string{mastersGroup}, Client: true}},
		{&p.ControllerManager, certSpec{CommonName: controllerManagerUser, Client: true}},
		{&p.Scheduler, certSpec{CommonName: schedulerUser, Client: true}},
	}
	for _, is := range issue {
		kp, err := ca.issue(is.spec, now)
		if err != nil {
			return nil, fmt.Errorf("issue %s: %w", is.spec.CommonName, err)
		}
		*is.dst = kp
	}
	p.ServiceAccount, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate service account key: %w", err)
	}
	return p, nil
}

func newCA(cn string, now time.Time) (keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyPair{}, fmt.Errorf("generate ca key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return keyPair{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-certBackdate),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return keyPair{}, fmt.Errorf("create ca certificate: %w", err)
	}
	return newKeyPair(der, key)
}

// issue signs a new key for spec with the CA.
func (ca keyPair) issue(spec certSpec, now time.Time) (keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyPair{}, fmt.Errorf("generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return keyPair{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: spec.CommonName, Organization: spec.Organization},
		NotBefore:    now.Add(-certBackdate),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		DNSNames:     spec.DNSNames,
		IPAddresses:  spec.IPs,
	}
	if spec.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if spec.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return keyPair{}, fmt.Errorf("create certificate: %w", err)
	}
	return newKeyPair(der, key)
}

func newKeyPair(der []byte, key *ecdsa.PrivateKey) (keyPair, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return keyPair{}, fmt.Errorf("parse certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return keyPair{}, err
	}
	return keyPair{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  keyPEM,
	}, nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	return n, nil
}

// pkiFiles are the paths of the PEM files the control plane reads.
type pkiFiles struct {
	CACert, CAKey               string
	APIServerCert, APIServerKey string
	SAKey, SAPub                string
}

func newPKIFiles(dir string) pkiFiles {
	j := func(n string) string { return filepath.Join(dir, n) }
	return pkiFiles{
		CACert: j("ca.crt"), CAKey: j("ca.key"),
		APIServerCert: j("apiserver.crt"), APIServerKey: j("apiserver.key"),
		SAKey: j("sa.key"), SAPub: j("sa.pub"),
	}
}

// write stores the files the control plane needs. Client certificates live
// only inside their kubeconfigs.
func (p *pki) write(f pkiFiles) error {
	saKey, err := encodeKey(p.ServiceAccount)
	if err != nil {
		return err
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&p.ServiceAccount.PublicKey)
	if err != nil {
		return fmt.Errorf("marshal service account public key: %w", err)
	}
	files := []struct {
		path string
		data []byte
	}{
		{f.CACert, p.CA.CertPEM},
		{f.CAKey, p.CA.KeyPEM},
		{f.APIServerCert, p.APIServer.CertPEM},
		{f.APIServerKey, p.APIServer.KeyPEM},
		{f.SAKey, saKey},
		{f.SAPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER})},
	}
	for _, file := range files {
		if err := os.MkdirAll(filepath.Dir(file.path), 0o700); err != nil {
			return fmt.Errorf("create pki dir: %w", err)
		}
		if err := os.WriteFile(file.path, file.data, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", file.path, err)
		}
	}
	return nil
}
