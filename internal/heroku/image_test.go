package heroku_test

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/perchhq/perch/internal/heroku"
	"github.com/perchhq/perch/internal/heroku/herokutest"
)

// baseImage is a stand-in stack image holding only /etc/passwd.
func baseImage(t *testing.T, passwd string) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd))})
	tw.Write([]byte(passwd))
	tw.Close()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.Config.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

type entry struct {
	hdr  *tar.Header
	data string
}

func flatten(t *testing.T, img v1.Image) map[string]entry {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	out := map[string]entry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out[strings.TrimSuffix(h.Name, "/")] = entry{h, string(b)}
	}
}

func writeSlug(t *testing.T, tgz []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "slug.tgz")
	if err := os.WriteFile(p, tgz, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// The image is the base, the slug's ./app at /app owned by heroku-24's
// user (1001), and the launcher, started with the process type; config
// as a dyno: workdir /app, HOME, STACK, the user.
func TestBuildImage(t *testing.T) {
	base := baseImage(t, "root:x:0:0:root:/root:/bin/bash\nheroku:x:1001:1001::/app:/bin/bash\n")
	slug := herokutest.MakeSlug(map[string]string{"Procfile": "web: python3 app.py", ".profile.d/env.sh": "export A=1\n", "app.py": "print(1)\n", "bin/run": "#!/bin/sh\n"})
	img, info, err := heroku.BuildImage(heroku.ImageOptions{Base: base, SlugPath: writeSlug(t, slug), ProcessTypes: procs, Stack: "heroku-24",
		Labels: map[string]string{"heroku.app": "shop"}, TmpDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if info.User != "1001:1001" || info.UserName != "heroku" {
		t.Errorf("user = %q (%s); want 1001:1001 (heroku)", info.User, info.UserName)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if !slices.Equal(c.Entrypoint, []string{heroku.LauncherPath}) || !slices.Equal(c.Cmd, []string{"web"}) || c.WorkingDir != "/app" || c.User != "1001:1001" || c.StopSignal != "SIGTERM" {
		t.Errorf("config: entrypoint %v cmd %v workdir %q user %q stop %q", c.Entrypoint, c.Cmd, c.WorkingDir, c.User, c.StopSignal)
	}
	for _, want := range []string{"HOME=/app", "STACK=heroku-24", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"} {
		if !slices.Contains(c.Env, want) {
			t.Errorf("env %v lacks %s", c.Env, want)
		}
	}
	if c.Labels["heroku.app"] != "shop" {
		t.Errorf("labels = %v", c.Labels)
	}
	fs := flatten(t, img)
	for _, p := range []string{"app", "app/Procfile", "app/.profile.d/env.sh", "app/app.py", "app/bin/run"} {
		e, ok := fs[p]
		if !ok {
			t.Errorf("/%s missing", p)
			continue
		}
		if e.hdr.Uid != 1001 || e.hdr.Gid != 1001 {
			t.Errorf("/%s owned by %d:%d; want 1001:1001", p, e.hdr.Uid, e.hdr.Gid)
		}
	}
	if fs["app/bin/run"].hdr.Mode&0o111 == 0 {
		t.Errorf("/app/bin/run lost its executable bit: %o", fs["app/bin/run"].hdr.Mode)
	}
	if _, ok := fs["etc/passwd"]; !ok {
		t.Error("the base's files are gone")
	}
	l := fs[strings.TrimPrefix(heroku.LauncherPath, "/")]
	if l.hdr == nil || l.hdr.Mode&0o111 == 0 || l.hdr.Uid != 0 {
		t.Fatalf("launcher missing, not executable or not root's: %+v", l.hdr)
	}
	if !strings.HasPrefix(l.data, "#!/bin/bash\n") { // what it does: launcher_test.go
		t.Errorf("launcher is not a bash script: %.40q", l.data)
	}
	for typ, cmd := range procs {
		if got := fs["perch/heroku/process-types/"+typ].data; got != cmd {
			t.Errorf("process type %s: %q; want %q", typ, got, cmd)
		}
	}
}

// Without uid 1001 in the base the image keeps the base's user; a slug
// that is not a tar.gz of ./app, or with no process types, is refused.
func TestBuildImageRefusals(t *testing.T) {
	base := baseImage(t, "root:x:0:0:root:/root:/bin/bash\n")
	slug := writeSlug(t, herokutest.MakeSlug(map[string]string{"Procfile": "web: x"}))
	_, info, err := heroku.BuildImage(heroku.ImageOptions{Base: base, SlugPath: slug, ProcessTypes: procs, Stack: "heroku-22", TmpDir: t.TempDir()})
	if err != nil || info.User != "" {
		t.Errorf("base without 1001: user %q, %v; want the base's (root)", info.User, err)
	}
	if _, _, err := heroku.BuildImage(heroku.ImageOptions{Base: base, SlugPath: slug, Stack: "heroku-24"}); err == nil || !strings.Contains(err.Error(), "Procfile") {
		t.Errorf("no process types: %v", err)
	}
	notGzip := writeSlug(t, []byte("PK\x03\x04 a zip"))
	if _, _, err := heroku.BuildImage(heroku.ImageOptions{Base: base, SlugPath: notGzip, ProcessTypes: procs}); err == nil || !strings.Contains(err.Error(), "tar.gz of ./app") {
		t.Errorf("a zip as slug: %v", err)
	}
}
