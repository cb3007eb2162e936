package server

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/certs"
)

// TestCertificateEndpoints: what the API answers for certificates it can
// or cannot give (issuance itself is tested in internal/certs and end to
// end in internal/devcluster).
func TestCertificateEndpoints(t *testing.T) {
	ctx := context.Background()
	noCA := startServer(t, t.TempDir())
	if _, err := noCA.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	_, err := noCA.c.AddCertificate(ctx, "web", "www.example.test")
	wantStatus(t, err, 422, "--acme-ca")
	noCA.stop()

	if _, err := os.Stat(filepath.Join(noCA.cfg.DataDir, DevCAFile)); err == nil {
		t.Errorf("%s written without the dev CA", DevCAFile)
	}
	s := startServer(t, t.TempDir(), func(c *Config) {
		// A CA nobody answers at: requests stay pending or fail, which is
		// all these checks need.
		c.Certs = certs.Config{ACME: certs.ACMEConfig{Directory: "https://127.0.0.1:1/dir"}, DevCA: true}
	})
	// The dev CA's certificate is in the data dir, for clients to trust
	// (a dev world of several servers reads it there).
	if b, err := os.ReadFile(filepath.Join(s.cfg.DataDir, DevCAFile)); err != nil || !bytes.Equal(b, s.DevCACert()) || len(b) == 0 {
		t.Errorf("%s in the data dir: %v; want the dev CA's certificate", DevCAFile, err)
	}
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "shop"}); err != nil {
		t.Fatal(err)
	}
	_, err = s.c.AddCertificate(ctx, "web", "*.example.test")
	wantStatus(t, err, 400, "wildcard")
	_, err = s.c.AddCertificate(ctx, "nope", "www.example.test")
	wantStatus(t, err, 404, "app \"nope\" not found")

	c, err := s.c.AddCertificate(ctx, "web", "www.example.test")
	if err != nil || c.Hostname != "www.example.test" || c.App != "web" || c.Source != "acme" {
		t.Fatalf("add: %+v %v", c, err)
	}
	_, err = s.c.AddCertificate(ctx, "shop", "www.example.test")
	wantStatus(t, err, 409, "app web")

	a, err := s.c.GetApp(ctx, "web")
	if err != nil || len(a.Hostnames) != 1 || a.Hostnames[0] != "www.example.test" {
		t.Errorf("app does not route the hostname: %+v %v", a, err)
	}

	// Every app has its dev certificate, which cannot be removed by hand.
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := s.c.ListCertificates(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 2 && list[0].Hostname == "web.perch.local" && list[0].Status == "issued" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("web's certificates: %+v; want its issued dev certificate and www.example.test", list)
		}
		time.Sleep(50 * time.Millisecond)
	}
	err = s.c.RemoveCertificate(ctx, "web", "web.perch.local")
	wantStatus(t, err, 400, "comes with the app")
	if len(s.DevCACert()) == 0 {
		t.Errorf("no dev CA certificate")
	}

	if err := s.c.RemoveCertificate(ctx, "web", "www.example.test"); err != nil {
		t.Fatal(err)
	}
	_, err = s.c.GetCertificate(ctx, "web", "www.example.test")
	wantStatus(t, err, 404, "perch certs list")
	a, _ = s.c.GetApp(ctx, "web")
	if len(a.Hostnames) != 0 {
		t.Errorf("removed hostname still routed: %v", a.Hostnames)
	}
}
