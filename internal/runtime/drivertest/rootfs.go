package drivertest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Users and groups of the root filesystem BuildRootfs makes.
const (
	passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
	group  = "root:x:0:\napp:x:1000:\nextra:x:2000:app\n"
)

// What BuildRootfs puts under /run, as images do (Debian's postgres has
// /run/postgresql owned by postgres).
const (
	runMarker        = "/run/app/marker"
	runMarkerContent = "from the image\n"
	runAppDir        = "/run/postgresql" // owned by app, mode 2775
)

// BuildRootfs makes a root filesystem in a temporary directory holding
// testapp, built static, as /app, with /etc/passwd and /etc/group
// (root; app 1000:1000, also in group extra 2000), a world-writable /tmp,
// an empty /srv, and under /run a file (runMarker) and a directory owned
// by app (runAppDir). It has no /etc/hosts, so drivers can show they add
// one. Run as root: it gives files to app.
func BuildRootfs(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("needs the go tool to build the test program: ", err)
	}
	dir := t.TempDir()
	// t.TempDir is private to root; the machine's users must reach /app.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goTool, "build", "-trimpath", "-o", filepath.Join(dir, "app"),
		"github.com/perchhq/perch/internal/runtime/drivertest/testapp")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build testapp: %v\n%s", err, out)
	}
	for _, d := range []string{"etc", "srv", "tmp", "home/app", "run/app", runAppDir[1:]} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"etc/passwd": passwd, "etc/group": group, runMarker[1:]: runMarkerContent}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := filepath.Join(dir, runAppDir)
	if err := os.Lchown(run, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(run, 0o775|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	return dir
}
