package build

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/perchhq/perch/internal/registry"
	"github.com/perchhq/perch/internal/testimage"
)

const testToken = "perch_build_test_token"

// needBuilder skips the test where buildkitd cannot run.
func needBuilder(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("buildkitd runs build steps with runc: needs root")
	}
	if _, err := Binary("buildkitd"); err != nil {
		t.Skip(err.Error())
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc is not installed")
	}
}

// startRegistry serves a Perch registry on loopback, taking testToken.
func startRegistry(t *testing.T) string {
	t.Helper()
	return startRegistryOn(t, "127.0.0.1:0")
}

func startRegistryOn(t *testing.T, addr string) string {
	t.Helper()
	reg, err := registry.NewStandalone(t.TempDir(), registry.TokenFunc(func(tok string) bool { return tok == testToken }), registry.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(reg)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestPlainHTTPRegistryByName: a plain-HTTP registry BuildKit does not
// take for loopback (here this host's name, which resolves to a loopback
// address, so no traffic leaves the machine) needs the daemon's config;
// Start given it restarts the running daemon with it, and FROM pulls work.
func TestPlainHTTPRegistryByName(t *testing.T) {
	needBuilder(t)
	hn, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	addrs, err := net.LookupHost(hn)
	if err != nil || len(addrs) == 0 || !net.ParseIP(addrs[0]).IsLoopback() {
		t.Skipf("this host's name %q does not resolve to a loopback address (%v %v): nothing to test on without leaving the machine", hn, addrs, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, port, _ := net.SplitHostPort(startRegistryOn(t, net.JoinHostPort(addrs[0], "0")))
	host := net.JoinHostPort(hn, port)
	base := pushBase(t, host)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"Dockerfile": "ARG BASE\nFROM ${BASE}\nRUN echo ok > /ok\n"})
	bk := filepath.Join(t.TempDir(), "bk")
	build := func(d *Daemon) error {
		_, err := Build(ctx, Options{Addr: d.Addr, Dir: dir, Ref: host + "/app:x", Insecure: true,
			Args: map[string]string{"BASE": base}, Username: "x", Password: testToken})
		return err
	}

	d1, err := Start(ctx, bk, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d1.Stop)
	if err := build(d1); err == nil || !strings.Contains(err.Error(), "HTTP response to HTTPS client") {
		t.Fatalf("FROM %s without the daemon configured: err = %v, want BuildKit's HTTPS attempt refused", base, err)
	}
	d2, err := Start(ctx, bk, []string{host}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d2.Stop)
	if !d2.Started || d2.pid == d1.pid {
		t.Fatalf("Start with a new plain-HTTP registry reused the daemon (started %v)", d2.Started)
	}
	if err := build(d2); err != nil {
		t.Fatalf("FROM %s with the daemon configured: %v", base, err)
	}
	// The same registry again: the running daemon is reused.
	if d3, err := Start(ctx, bk, []string{host}, nil); err != nil || d3.Started {
		t.Errorf("third Start: started %v, err %v; want the running daemon", d3 != nil && d3.Started, err)
	}
}

// pushBase pushes a base image with a shell (Debian's busybox-static as
// /bin/sh) and a user "app", and returns its reference.
func pushBase(t *testing.T, host string) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("busybox-static is not installed (scripts/deps.sh installs it): ", err)
	}
	img, err := testimage.FromFiles(map[string]testimage.File{
		"bin/sh":     {Mode: 0o755, Data: bb},
		"bin/cat":    {Mode: 0o755, Data: bb},
		"etc/passwd": {Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n")},
		"etc/group":  {Mode: 0o644, Data: []byte("root:x:0:\napp:x:1000:\n")},
		"tmp/.keep":  {Mode: 0o644},
	}, v1.Config{Env: []string{"PATH=/bin"}, WorkingDir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/base/busybox:1"
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithAuth(&authn.Basic{Username: "x", Password: testToken})); err != nil {
		t.Fatalf("push base %s: %v", ref, err)
	}
	return ref
}

const dockerfile = `ARG BASE
FROM ${BASE} AS build
ARG GREETING=hello
WORKDIR /src
COPY gen.txt .
RUN echo "$GREETING from $(cat gen.txt)" > out.txt && echo built out.txt

FROM ${BASE}
ENV APP_MODE=production
WORKDIR /srv
COPY --from=build /src/out.txt /srv/out.txt
COPY . /srv/ctx/
USER app
EXPOSE 8080
CMD ["/bin/sh"]
`

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, s := range files {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBuildDockerfile builds a multi-stage Dockerfile with a local
// buildkitd into a real registry, checks the image a deploy would run,
// that a one-file change re-runs only the steps after it, and that a
// failing RUN names its step.
func TestBuildDockerfile(t *testing.T) {
	needBuilder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	host := startRegistry(t)
	base := pushBase(t, host)

	t0 := time.Now()
	d, err := Start(ctx, filepath.Join(t.TempDir(), "bk"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	t.Logf("buildkitd started in %v", time.Since(t0).Round(time.Millisecond))
	// A second Start finds it running.
	if again, err := Start(ctx, d.Dir, nil, nil); err != nil || again.Started {
		t.Fatalf("second Start: started=%v err=%v, want the running daemon", again != nil && again.Started, err)
	}

	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"Dockerfile":      dockerfile,
		"Dockerfile.fail": "ARG BASE\nFROM ${BASE}\nRUN echo step one\nRUN echo about to fail; echo second line; exit 3\n",
		".dockerignore":   "secret.txt\n*.log\n",
		"gen.txt":         "gen",
		"app.txt":         "v1",
		"secret.txt":      "do not ship",
		"debug.log":       "noise",
	})
	build := func(file, ref string) (string, Result, error) {
		var out bytes.Buffer
		res, err := Build(ctx, Options{
			Addr: d.Addr, Dir: dir, Dockerfile: file, Ref: ref,
			Args:     map[string]string{"BASE": base, "GREETING": "hi"},
			Username: "x", Password: testToken, Insecure: true,
			Progress: &out,
		})
		return out.String(), res, err
	}

	t0 = time.Now()
	out, res, err := build("", host+"/app:deployment-1")
	cold := time.Since(t0)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	t.Logf("cold build %v:\n%s", cold.Round(time.Millisecond), out)
	if res.Digest == "" {
		t.Error("no digest for the pushed image")
	}
	img := pull(t, res.Ref)
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(cfg.Config.Env, "APP_MODE=production") {
		t.Errorf("env %v lacks APP_MODE=production", cfg.Config.Env)
	}
	if cfg.Config.User != "app" || cfg.Config.WorkingDir != "/srv" {
		t.Errorf("user %q workdir %q, want app and /srv", cfg.Config.User, cfg.Config.WorkingDir)
	}
	if _, ok := cfg.Config.ExposedPorts["8080/tcp"]; !ok {
		t.Errorf("exposed ports %v lack 8080/tcp", cfg.Config.ExposedPorts)
	}
	files := fileContents(t, img)
	if got := files["srv/out.txt"]; got != "hi from gen\n" {
		t.Errorf("/srv/out.txt (from the build stage, with --build-arg GREETING=hi) = %q", got)
	}
	if files["srv/ctx/app.txt"] != "v1" {
		t.Errorf("/srv/ctx/app.txt = %q, want v1", files["srv/ctx/app.txt"])
	}
	for _, f := range []string{"srv/ctx/secret.txt", "srv/ctx/debug.log"} {
		if _, ok := files[f]; ok {
			t.Errorf("%s is in the image although .dockerignore excludes it", f)
		}
	}

	// One changed file: the build stage and COPY --from come from the cache,
	// only the COPY of the context runs again.
	writeFiles(t, dir, map[string]string{"app.txt": "v2"})
	t0 = time.Now()
	out, res, err = build("", host+"/app:deployment-2")
	warm := time.Since(t0)
	if err != nil {
		t.Fatalf("rebuild: %v\n%s", err, out)
	}
	t.Logf("warm rebuild (one file changed) %v:\n%s", warm.Round(time.Millisecond), out)
	for _, want := range []string{"=> CACHED [build 4/4] RUN echo", "=> CACHED [stage-1 3/4] COPY --from=build"} {
		if !strings.Contains(out, want) {
			t.Errorf("rebuild output lacks %q", want)
		}
	}
	if strings.Contains(out, "CACHED [stage-1 4/4] COPY . /srv/ctx/") {
		t.Error("the COPY of the changed context was taken from the cache")
	}
	if got := fileContents(t, pull(t, res.Ref))["srv/ctx/app.txt"]; got != "v2" {
		t.Errorf("rebuilt /srv/ctx/app.txt = %q, want v2", got)
	}
	t.Logf("cold %v, warm %v", cold.Round(time.Millisecond), warm.Round(time.Millisecond))

	// Target: the build stage alone.
	res, err = Build(ctx, Options{
		Addr: d.Addr, Dir: dir, Ref: host + "/app:target", Target: "build", Insecure: true,
		Args: map[string]string{"BASE": base}, Username: "x", Password: testToken,
	})
	if err != nil {
		t.Fatalf("build --target build: %v", err)
	}
	tcfg, err := pull(t, res.Ref).ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := fileContents(t, pull(t, res.Ref))["src/out.txt"]; tcfg.Config.WorkingDir != "/src" || got != "hello from gen\n" {
		t.Errorf("target build: workdir %q, /src/out.txt %q; want the build stage (/src, GREETING's default)", tcfg.Config.WorkingDir, got)
	}

	// A base image the registry does not have, and one from a registry
	// that refuses anonymous pulls (the Perch token goes only to the
	// registry of the pushed image): the error names the registry that
	// refused and its answer.
	other := startRegistry(t)
	otherBase := pushBase(t, other)
	for _, tc := range []struct{ base, registry, answer string }{
		{host + "/base/nope:1", host, "not found"},
		{otherBase, other, "401 Unauthorized"},
	} {
		_, err = Build(ctx, Options{
			Addr: d.Addr, Dir: dir, Ref: host + "/app:deployment-x", Insecure: true,
			Args:     map[string]string{"BASE": tc.base},
			Username: "x", Password: testToken,
		})
		var be *BaseImageError
		if !errors.As(err, &be) || be.Registry != tc.registry || be.Perch != (tc.registry == host) || !strings.Contains(err.Error(), "the registry "+tc.registry+" refused it") ||
			!strings.Contains(err.Error(), tc.base) || !strings.Contains(be.Answer, tc.answer) {
			t.Errorf("base image %s: err = %v, want a BaseImageError naming the image, registry %s and its answer %q", tc.base, err, tc.registry, tc.answer)
		}
		t.Logf("base image %s: %v", tc.base, err)
	}

	out, _, err = build("Dockerfile.fail", host+"/app:deployment-3")
	var se *StepError
	if !errors.As(err, &se) {
		t.Fatalf("failing RUN: err = %v, want a StepError\n%s", err, out)
	}
	if !strings.Contains(se.Step, "RUN echo about to fail") || !slices.Contains(se.Lines, "second line") || !strings.Contains(se.Error(), "exit code: 3") {
		t.Errorf("failing RUN error does not name the step, its output and exit code:\n%v", err)
	}
	t.Logf("failing RUN: %v", err)
}

// The Perch token goes only to the registry the image is pushed to.
func TestCredentialsOnlyForPerchRegistry(t *testing.T) {
	if c := credentialsFor("127.0.0.1:4280", "127.0.0.1:4280", "x", "tok"); c.Password != "tok" {
		t.Errorf("Perch's registry got %+v, want the token", c)
	}
	for _, h := range []string{"registry-1.docker.io", "ghcr.io", "127.0.0.1:4281"} {
		if c := credentialsFor(h, "127.0.0.1:4280", "x", "tok"); c.Password != "" || c.Username != "" {
			t.Errorf("%s got credentials %+v, want none", h, c)
		}
	}
}

// TestContextTooLarge: a context over the limit is refused before the
// builder is contacted (the address here answers nothing).
func TestContextTooLarge(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"Dockerfile":    "FROM scratch\nCOPY . /\n",
		".dockerignore": "big/\n",
		"data.bin":      strings.Repeat("x", 3000),
	})
	if err := os.Mkdir(filepath.Join(dir, "big"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"big/huge.bin": strings.Repeat("y", 100000)})
	_, err := Build(context.Background(), Options{Addr: "unix:///nonexistent/buildkitd.sock", Dir: dir, Ref: "127.0.0.1:1/app:x", MaxContext: 2000})
	var tl *ContextTooLargeError
	if !errors.As(err, &tl) || !strings.Contains(err.Error(), ".dockerignore") {
		t.Fatalf("err = %v, want a ContextTooLargeError saying what to do", err)
	}
	// The ignored directory does not count.
	if n, err := ContextSize(dir, 1<<20); err != nil || n > 4000 {
		t.Errorf("ContextSize = %d, %v; want the ignored big/ left out", n, err)
	}
}

func pull(t *testing.T, ref string) v1.Image {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r, remote.WithAuth(&authn.Basic{Username: "x", Password: testToken}))
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	return img
}

// fileContents flattens img and returns its small regular files.
func fileContents(t *testing.T, img v1.Image) map[string]string {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	files := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && h.Size < 4096 {
			b, _ := io.ReadAll(tr)
			files[strings.TrimPrefix(h.Name, "/")] = string(b)
		}
	}
}

// TestBaseImageErrorText: BuildKit's errors for a FROM image it could not
// get (as buildkitd v0.34 words them) become the registry and its answer.
func TestBaseImageErrorText(t *testing.T) {
	const ref = "127.0.0.1:4280/debian-nope:bookworm"
	for _, tc := range []struct{ err, registry, answer string }{
		{"failed to solve: " + ref + ": failed to resolve source metadata for " + ref + ": " + ref + ": not found", "127.0.0.1:4280", "not found"},
		{"failed to solve: " + ref + ": failed to resolve source metadata for " + ref + ": unexpected status from HEAD request to http://127.0.0.1:4280/v2/debian-nope/manifests/bookworm: 403 Forbidden\ndenied: denied: repository debian-nope does not exist or is not your organisation's (personal)",
			"127.0.0.1:4280", "403 Forbidden (HEAD http://127.0.0.1:4280/v2/debian-nope/manifests/bookworm): denied: repository debian-nope does not exist or is not your organisation's (personal)"},
	} {
		be := baseImageError("[internal] load metadata for "+ref, errors.New(tc.err))
		if be == nil || be.Ref != ref || be.Registry != tc.registry || be.Answer != tc.answer {
			t.Errorf("baseImageError(%q) = %+v, want registry %s, answer %q", tc.err, be, tc.registry, tc.answer)
		}
	}
	if be := baseImageError("[internal] load metadata for debian:bookworm", errors.New("x: not found")); be == nil || be.Registry != "docker.io" {
		t.Errorf("FROM debian:bookworm: %+v, want Docker Hub named", be)
	}
	if be := baseImageError("[2/3] RUN make", errors.New("exit code: 2")); be != nil {
		t.Errorf("a failed RUN taken for a base image: %+v", be)
	}
}
