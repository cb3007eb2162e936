package devcluster_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// perchBin is the perch binary built once for the end-to-end tests: the
// agents and the CLI run from it as separate processes, as users run them.
var perchBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("devcluster end-to-end tests need root (runc, network namespaces); skipping")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "perch-e2e-bin-")
	if err != nil {
		panic(err)
	}
	perchBin = filepath.Join(dir, "perch")
	cmd := exec.Command("go", "build", "-o", perchBin, "./cmd/perch")
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Printf("build perch: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..")
}
