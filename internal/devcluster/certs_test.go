package devcluster_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/certs"
	"github.com/perchhq/perch/internal/certs/certstest"
	"github.com/perchhq/perch/internal/devcluster"
)

// TestCertificates: every app gets a dev certificate that the dev CA in
// ca.pem vouches for; `perch certs add` issues one certificate from an
// ACME CA (Pebble), which all three regions' edges serve; it is renewed
// once; `perch certs remove` takes it off every edge.
func TestCertificates(t *testing.T) {
	// Serial: certstest.Start sets Pebble's environment (t.Setenv).
	// Twenty-second certificates, renewed with 40% of their life left:
	// about 12s after issuance, then every 12s.
	pebble := certstest.Start(t, certstest.Options{EdgeAddr: netip.MustParseAddr("127.0.0.1"), Validity: 20 * time.Second, Log: testWriter{t}})
	w := startWorld(t, devcluster.Options{Certs: certs.Config{
		ACME:          certs.ACMEConfig{Directory: pebble.Directory, Roots: pebble.Roots},
		RenewCheck:    250 * time.Millisecond,
		RenewalWindow: 0.4,
	}})
	info := w.Info()
	// The CA validates at the iad edge: the hostname's DNS points there.
	pebble.SetEdge(netip.MustParseAddr(info.Regions[0].EdgeAddr))
	ref := pushImage(t, w, "hello:v1")
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad,ams,sin", "--name", "hello")
	mustPerch(t, w, dir, "deploy")
	for _, r := range info.Regions {
		expectAnswer(t, r.EdgeAddr+":80", "hello", r.Code)
	}

	// https://hello.perch.local works out of the box for a client that
	// trusts the world's dev CA.
	devRoots := x509.NewCertPool()
	pem, err := os.ReadFile(info.CACert)
	if err != nil || !devRoots.AppendCertsFromPEM(pem) {
		t.Fatalf("world.json's ca_cert %q is not a PEM certificate: %v", info.CACert, err)
	}
	for _, r := range info.Regions {
		eventually(t, 30*time.Second, r.Code+" edge answers https://hello.perch.local", func() (bool, string) {
			code, body, err := httpsGet(r.EdgeAddr, "hello.perch.local", devRoots)
			if err != nil {
				return false, err.Error()
			}
			return code == 200 && strings.Contains(body, "hello from "+r.Code), fmt.Sprintf("%d %s", code, body)
		})
	}

	// One issuance from the ACME CA, served by every region.
	out := mustPerch(t, w, dir, "certs", "add", "www.example.test")
	if !strings.Contains(out, "Certificate for www.example.test issued by") {
		t.Errorf("perch certs add did not say the certificate was issued:\n%s", out)
	}
	if n := pebble.Issued(); n != 1 {
		t.Fatalf("the CA issued %d certificates for one perch certs add; want 1", n)
	}
	acmeRoots := pebble.IssuerRoots()
	serials := map[string]string{}
	for _, r := range info.Regions {
		eventually(t, 10*time.Second, r.Code+" edge serves the ACME certificate", func() (bool, string) {
			leaf, err := handshake(r.EdgeAddr+":443", "www.example.test", acmeRoots)
			if err != nil {
				return false, err.Error()
			}
			serials[r.Code] = leaf.SerialNumber.String()
			return true, ""
		})
		code, body, err := httpsGet(r.EdgeAddr, "www.example.test", acmeRoots)
		if err != nil || code != 200 || !strings.Contains(body, "hello from "+r.Code) {
			t.Errorf("%s edge, https://www.example.test: %d %q %v; want the app's answer", r.Code, code, body, err)
		}
	}
	if serials["iad"] != serials["ams"] || serials["iad"] != serials["sin"] {
		t.Errorf("regions serve different certificates: %v", serials)
	}
	list := mustPerch(t, w, dir, "certs", "list")
	for _, want := range []string{"hello.perch.local  dev-ca", "www.example.test   acme", "issued"} {
		if !strings.Contains(list, want) {
			t.Errorf("perch certs list lacks %q:\n%s", want, list)
		}
	}

	// Renewal: done once, by the control plane, and every edge picks it up.
	first := serials["iad"]
	for _, r := range info.Regions {
		eventually(t, 30*time.Second, r.Code+" edge serves the renewed certificate", func() (bool, string) {
			leaf, err := handshake(r.EdgeAddr+":443", "www.example.test", acmeRoots)
			if err != nil {
				return false, err.Error()
			}
			serials[r.Code] = leaf.SerialNumber.String()
			return serials[r.Code] != first, serials[r.Code]
		})
	}
	if n := pebble.Issued(); n != 2 {
		t.Errorf("the CA issued %d certificates by the first renewal; want 2 (one issuance, one renewal for all regions)", n)
	}
	if serials["iad"] != serials["ams"] || serials["iad"] != serials["sin"] {
		t.Errorf("regions serve different renewed certificates: %v", serials)
	}
	show := mustPerch(t, w, dir, "certs", "show", "www.example.test")
	if !strings.Contains(show, "Status:      issued") || !strings.Contains(show, "Pebble") {
		t.Errorf("perch certs show:\n%s", show)
	}

	// Removal takes it off every edge.
	mustPerch(t, w, dir, "certs", "remove", "www.example.test", "--yes")
	for _, r := range info.Regions {
		eventually(t, 10*time.Second, r.Code+" edge stops serving the removed certificate", func() (bool, string) {
			_, err := handshake(r.EdgeAddr+":443", "www.example.test", acmeRoots)
			return err != nil, "still served"
		})
	}
	if out, err := perch(t, w, dir, "certs", "show", "www.example.test"); err == nil || !strings.Contains(out, "no certificate") {
		t.Errorf("perch certs show after remove: %v\n%s", err, out)
	}
}

// handshake connects to addr with SNI name, trusting roots, and returns
// the certificate the edge showed.
func handshake(addr, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := &tls.Dialer{Config: &tls.Config{ServerName: name, RootCAs: roots}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// httpsGet fetches https://host/ from the edge at edgeAddr:443.
func httpsGet(edgeAddr, host string, roots *x509.CertPool) (int, string, error) {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, edgeAddr+":443")
		},
		ForceAttemptHTTP2: true,
	}
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := c.Get("https://" + host + "/")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}
