package cli

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/heroku/herokutest"
)

// TestLaunchFromHerokuFailures: each way a Heroku app cannot be moved is
// explained before any machine is made: no token, a refused one, a Fir
// app, a stack with no base image, a slug failing its checksum, a rate
// limit longer than the client waits.
func TestLaunchFromHerokuFailures(t *testing.T) {
	loggedOut(t)
	url, token := startServer(t)
	t.Setenv(envAPIURL, url)
	t.Setenv(envAPIToken, token)
	t.Setenv("HEROKU_API_KEY", "")
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	c := api.NewClient(url, token)
	host, err := c.RegisterHost(ctx, api.Host{Region: "iad", Address: "127.0.0.1", CPUs: 2, MemoryMB: 2048})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for ctx.Err() == nil {
			c.RegisterHost(ctx, *host)
			select {
			case <-ctx.Done():
			case <-time.After(300 * time.Millisecond):
			}
		}
	}()

	// A tiny base image in the control plane's registry.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: 5})
	tw.Write([]byte("r:x:0"))
	tw.Close()
	l, _ := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	img, _ := mutate.AppendLayers(empty.Image, l)
	baseRef := strings.TrimPrefix(url, "http://") + "/stacks/tiny:1"
	ref, _ := name.ParseReference(baseRef, name.Insecure)
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "x", Password: token})); err != nil {
		t.Fatal(err)
	}

	h := herokutest.New("good")
	defer h.Close()
	procs := map[string]string{"web": "python3 app.py"}
	slug := herokutest.MakeSlug(map[string]string{"Procfile": "web: python3 app.py"})
	h.AddApp(herokutest.App{Name: "fir", Region: "us", Stack: "heroku-24", Generation: "fir"})
	h.ReleaseOCI("fir", "Deploy")
	h.AddApp(herokutest.App{Name: "nostack", Region: "us", Stack: "heroku-24"})
	h.Release("nostack", herokutest.Slug{Tgz: slug, ProcessTypes: procs}, "Deploy")
	h.AddApp(herokutest.App{Name: "badsum", Region: "eu", Stack: "heroku-24"})
	h.Release("badsum", herokutest.Slug{Tgz: slug, ProcessTypes: procs, Checksum: "SHA256:" + strings.Repeat("ab", 32)}, "Deploy")
	h.AddApp(herokutest.App{Name: "private", Region: "us", Stack: "heroku-24", Forbidden: true})

	launch := func(token, app string, extra ...string) error {
		t.Helper()
		args := append([]string{"launch", "--from-heroku", app, "--heroku-api", h.URL, "--dir", t.TempDir(), "--heroku-token", token, "--name", "m-" + app}, extra...)
		_, err := run(t, "", "", args...)
		return err
	}
	_, err = run(t, "", "", "launch", "--from-heroku", "fir", "--heroku-api", h.URL, "--dir", t.TempDir())
	wantErr(t, err, "no Heroku token", "HEROKU_API_KEY")
	_, err = run(t, "", "", "launch", "--dir", t.TempDir())
	wantErr(t, err, "--image REF", "--from-heroku APP")
	wantErr(t, launch("bad", "fir"), "401", "--heroku-token")
	wantErr(t, launch("good", "private"), "403", "collaborator")
	wantErr(t, launch("good", "fir"), "Fir app", "OCI images")
	wantErr(t, launch("good", "nostack"), "stack heroku-24 has no base image", "/heroku/heroku:24", "--stack-image")
	wantErr(t, launch("good", "badsum", "--stack-image", baseRef), "checksum mismatch", "SHA256:"+strings.Repeat("ab", 32))
	h.RateLimit(7200)
	wantErr(t, launch("good", "badsum"), "rate limit reached (429)", "retry after 2h0m0s")
}
