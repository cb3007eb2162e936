package registry

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// lookTool finds a client binary or skips the test, saying how to get it.
func lookTool(t *testing.T, name string, paths ...string) string {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Skipf("%s not installed (crane: go install github.com/google/go-containerregistry/cmd/crane@latest; skopeo: apt-get install skopeo); skipping the %s client test", name, name)
	return ""
}

func run(t *testing.T, env []string, bin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// checkPulled checks that ref on a restarted registry is img, every blob intact.
func checkPulled(t *testing.T, srv *testServer, ref string, img v1.Image) {
	t.Helper()
	want, _ := img.Digest()
	got, err := remote.Image(srv.ref(t, ref), withToken(testToken))
	if err != nil {
		t.Fatalf("pull %s after restart: %v", ref, err)
	}
	if gd, _ := got.Digest(); gd != want {
		t.Fatalf("%s has digest %s after restart, want %s", ref, gd, want)
	}
	if err := validate.Image(got); err != nil {
		t.Fatalf("%s after restart: %v", ref, err)
	}
}

// ociImage builds an image with OCI media types throughout: skopeo's oci:
// transport ignores Docker-typed manifests in an index.
func ociImage(t *testing.T) v1.Image {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for range 2 {
		l, err := random.Layer(2048, types.OCILayer)
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

func TestCranePush(t *testing.T) {
	crane := lookTool(t, "crane", "/root/go/bin/crane")
	dir := t.TempDir()
	srv := startRegistry(t, dir)
	img, _ := random.Image(2048, 2)
	tarPath := filepath.Join(t.TempDir(), "image.tar")
	tag, _ := name.NewTag(srv.Host + "/crane/app:v1")
	if err := tarball.WriteToFile(tarPath, tag, img); err != nil {
		t.Fatal(err)
	}
	env := []string{"DOCKER_CONFIG=" + t.TempDir()}

	out, err := run(t, env, crane, "push", "--insecure", tarPath, tag.String())
	if err == nil || !strings.Contains(out, "401") {
		t.Fatalf("crane push without login: err = %v, output:\n%s\nwant a 401 failure", err, out)
	}
	if out, err := run(t, env, crane, "auth", "login", srv.Host, "-u", "x", "-p", testToken); err != nil {
		t.Fatalf("crane auth login: %v\n%s", err, out)
	}
	if out, err := run(t, env, crane, "push", "--insecure", tarPath, tag.String()); err != nil {
		t.Fatalf("crane push: %v\n%s", err, out)
	}
	srv.Close()

	srv = startRegistry(t, dir)
	checkPulled(t, srv, "crane/app:v1", img)
}

func TestSkopeoCopy(t *testing.T) {
	skopeo := lookTool(t, "skopeo")
	dir := t.TempDir()
	srv := startRegistry(t, dir)
	img := ociImage(t)
	lp, err := layout.Write(t.TempDir(), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "v1"})); err != nil {
		t.Fatal(err)
	}
	copyTo := func(creds string) (string, error) {
		return run(t, []string{"HOME=" + t.TempDir()}, skopeo, "--insecure-policy", "copy",
			"--dest-tls-verify=false", "--dest-creds", creds,
			"oci:"+string(lp)+":v1", "docker://"+srv.Host+"/skopeo/app:v1")
	}

	if out, err := copyTo("x:wrong"); err == nil || !strings.Contains(out, "unauthorized") {
		t.Fatalf("skopeo copy with a wrong token: err = %v, output:\n%s\nwant an unauthorized failure", err, out)
	}
	if out, err := copyTo("x:" + testToken); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	srv.Close()

	srv = startRegistry(t, dir)
	checkPulled(t, srv, "skopeo/app:v1", img)
}
