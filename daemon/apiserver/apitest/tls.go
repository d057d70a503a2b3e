package apitest

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

// TLSDirs are a CA's server Secret directory (tls.crt, tls.key, ca.crt as
// meridiand's --api-tls-secret reads them) and a client's files, both
// issued by one fresh CA.
type TLSDirs struct {
	Server string
	// Client holds tls.crt, tls.key and ca.crt (the CA of the server's
	// certificate) for meridianctl's --tls-cert, --tls-key and --ca.
	Client string
}

// WriteTLS issues a CA, a server certificate for ips and a client
// certificate into dir/server and dir/client.
func WriteTLS(dir string, ips ...net.IP) (TLSDirs, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return TLSDirs{}, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "apitest-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return TLSDirs{}, fmt.Errorf("create CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return TLSDirs{}, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	d := TLSDirs{Server: filepath.Join(dir, "server"), Client: filepath.Join(dir, "client")}
	for i, leaf := range []struct {
		dir   string
		cn    string
		usage x509.ExtKeyUsage
		ips   []net.IP
	}{
		{d.Server, "meridiand", x509.ExtKeyUsageServerAuth, ips},
		{d.Client, "operator", x509.ExtKeyUsageClientAuth, nil},
	} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return TLSDirs{}, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: leaf.cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{leaf.usage},
			IPAddresses: leaf.ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return TLSDirs{}, fmt.Errorf("issue %s: %w", leaf.cn, err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return TLSDirs{}, err
		}
		if err := os.MkdirAll(leaf.dir, 0o700); err != nil {
			return TLSDirs{}, err
		}
		for name, b := range map[string][]byte{
			"tls.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			"tls.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
			"ca.crt":  caPEM,
		} {
			if err := os.WriteFile(filepath.Join(leaf.dir, name), b, 0o600); err != nil {
				return TLSDirs{}, err
			}
		}
	}
	return d, nil
}
