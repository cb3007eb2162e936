package main

import (
	"crypto/x509"
	"fmt"
	"os"

	"github.com/perchhq/perch/internal/certs"
	"github.com/spf13/pflag"
)

// acmeFlags are the ACME flags of `perch server` and `perch dev up`.
type acmeFlags struct {
	directory, email, rootFile string
}

func (a *acmeFlags) register(f *pflag.FlagSet) {
	f.StringVar(&a.directory, "acme-ca", "", "ACME directory URL for custom hostnames' certificates (e.g. https://acme-v02.api.letsencrypt.org/directory; default: none, perch certs add is refused)")
	f.StringVar(&a.email, "acme-email", "", "contact address of the ACME account")
	f.StringVar(&a.rootFile, "acme-ca-root", "", "PEM file of the root to trust for the ACME CA's HTTPS (a private or test CA); default: the system roots")
}

func (a *acmeFlags) config() (certs.ACMEConfig, error) {
	c := certs.ACMEConfig{Directory: a.directory, Email: a.email}
	if a.rootFile == "" {
		return c, nil
	}
	b, err := os.ReadFile(a.rootFile)
	if err != nil {
		return c, fmt.Errorf("--acme-ca-root: %w", err)
	}
	c.Roots = x509.NewCertPool()
	if !c.Roots.AppendCertsFromPEM(b) {
		return c, fmt.Errorf("--acme-ca-root %s holds no PEM certificate", a.rootFile)
	}
	return c, nil
}
