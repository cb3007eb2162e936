package certs

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
)

// devCAIssuerKey names the dev CA in storage paths.
const devCAIssuerKey = "perch-dev-ca"

// devCA is the built-in CA of dev worlds. Its certificate is name
// constrained to the dev domain, so a user who trusts it trusts it for
// nothing else.
type devCA struct {
	cert     *x509.Certificate
	certPEM  []byte
	key      crypto.Signer
	domain   string
	lifetime time.Duration
}

var _ certmagic.Issuer = (*devCA)(nil)

// loadOrCreateDevCA returns the dev CA for domain from storage, making it
// on first use (under a lock, so that control planes sharing a store agree
// on one CA).
func loadOrCreateDevCA(ctx context.Context, s *Storage, domain string, lifetime time.Duration) (*devCA, error) {
	dir := "perch/dev-ca/" + certmagic.StorageKeys.Safe(domain)
	certKey, keyKey := dir+"/ca.crt", dir+"/ca.key"
	lock := "perch_dev_ca_" + domain
	if err := s.Lock(ctx, lock); err != nil {
		return nil, err
	}
	defer func() { _ = s.Unlock(context.WithoutCancel(ctx), lock) }()
	certPEM, err := s.Load(ctx, certKey)
	if errors.Is(err, fs.ErrNotExist) {
		var keyPEM []byte
		certPEM, keyPEM, err = newDevCA(domain)
		if err != nil {
			return nil, err
		}
		if err := s.Store(ctx, keyKey, keyPEM); err != nil {
			return nil, err
		}
		if err := s.Store(ctx, certKey, certPEM); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	keyPEM, err := s.Load(ctx, keyKey)
	if err != nil {
		return nil, err
	}
	return parseDevCA(certPEM, keyPEM, domain, lifetime)
}

func parseDevCA(certPEM, keyPEM []byte, domain string, lifetime time.Duration) (*devCA, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, errors.New("certs: dev CA certificate in storage is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certs: dev CA certificate: %w", err)
	}
	k, err := certmagic.PEMDecodePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certs: dev CA key: %w", err)
	}
	return &devCA{cert: cert, certPEM: certPEM, key: k, domain: domain, lifetime: lifetime}, nil
}

func newDevCA(domain string) (certPEM, keyPEM []byte, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: dev CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:                serial,
		Subject:                     pkix.Name{CommonName: "Perch dev CA for " + domain + " " + serial.Text(16)[:8], Organization: []string{"Perch dev world"}},
		NotBefore:                   now.Add(-time.Hour),
		NotAfter:                    now.AddDate(10, 0, 0),
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLenZero:              true,
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         []string{domain},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: dev CA certificate: %w", err)
	}
	keyPEM, err = certmagic.PEMEncodePrivateKey(k)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: dev CA key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// IssuerKey names the dev CA in storage paths.
func (ca *devCA) IssuerKey() string { return devCAIssuerKey }

// Issue signs csr if every name in it is under the dev domain.
func (ca *devCA) Issue(_ context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certs: dev CA: bad CSR signature: %w", err)
	}
	if len(csr.DNSNames) == 0 || len(csr.IPAddresses) > 0 || len(csr.URIs) > 0 || len(csr.EmailAddresses) > 0 {
		return nil, errors.New("certs: dev CA signs DNS names only")
	}
	for _, n := range csr.DNSNames {
		if !underDomain(n, ca.domain) {
			return nil, fmt.Errorf("certs: dev CA signs names under %s only, not %q", ca.domain, n)
		}
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: csr.DNSNames[0]},
		DNSNames:     csr.DNSNames,
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(ca.lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("certs: dev CA: sign: %w", err)
	}
	return &certmagic.IssuedCertificate{Certificate: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

func underDomain(name, domain string) bool {
	name = strings.ToLower(name)
	return name == domain || strings.HasSuffix(name, "."+domain)
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certs: serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1<<32)), nil
}
