package runc

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/runtime"
)

// debianChangelog is the top of Debian 12's runc changelog, as installed
// with 1.1.5+ds1-1+deb12u1.
const debianChangelog = `runc (1.1.5+ds1-1+deb12u1) bookworm-security; urgency=high

  * Team upload.
  * CVE-2024-21626: several container breakouts due to internally leaked fds

 -- Shengjing Zhu <zhsj@debian.org>  Fri, 02 Feb 2024 21:53:05 +0800

runc (1.1.5+ds1-1) unstable; urgency=medium

  * New upstream version 1.1.5+ds1
`

func TestRuncVerdict(t *testing.T) {
	debian := "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n"
	for _, tc := range []struct {
		name, out, changelog string
		want                 string // "" safe, "vulnerable", or "unknown"
	}{
		{"fixed upstream", "runc version 1.1.12\ncommit: v1.1.12-0-g51d5e946\n", "", ""},
		{"newer upstream", "runc version 1.2.4\ncommit: v1.2.4-0-g6c52b3fc\n", "", ""},
		{"old upstream", "runc version 1.1.11\ncommit: v1.1.11-0-g4bccb38c\n", "", "vulnerable"},
		{"release candidate", "runc version 1.0.0-rc93\n", "", "vulnerable"},
		{"debian backport", debian, debianChangelog, ""},
		{"debian before the backport", "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1\n", debianChangelog, "vulnerable"},
		{"debian version, no changelog", debian, "", "vulnerable"},
		{"a build claiming another version", "runc version 1.1.5\ncommit: v1.1.5-0-gf19387a6\n", debianChangelog, "vulnerable"},
		{"unreadable", "something else\n", "", "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := runcVerdict("/usr/sbin/runc", tc.out, tc.changelog)
			switch tc.want {
			case "":
				if err != nil {
					t.Errorf("got %v, want runc accepted", err)
				}
			case "vulnerable":
				if !errors.Is(err, ErrVulnerableRunc) || !strings.Contains(err.Error(), "CVE-2024-21626") || !strings.Contains(err.Error(), "upgrade runc") {
					t.Errorf("got %v, want it refused naming CVE-2024-21626 and the upgrade", err)
				}
			case "unknown":
				if err == nil || errors.Is(err, ErrVulnerableRunc) {
					t.Errorf("got %v, want an error saying the version cannot be read", err)
				}
			}
		})
	}
}

// TestHostRunc: the runc on this host passes the check (Debian 12's has
// the fix backported), so the agent runs machines here.
func TestHostRunc(t *testing.T) {
	p, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("no runc on this host")
	}
	out, _ := exec.Command(p, "--version").Output()
	if err := checkEscapes(p); err != nil {
		t.Errorf("this host's runc (%s) is refused: %v", strings.TrimSpace(string(out)), err)
	}
}

// TestVulnerableRuncRefusesMachines: with a runc that reports 1.1.11 the
// driver starts (machines left by an earlier agent can still be listed
// and destroyed) but refuses to create or start one, saying why.
func TestVulnerableRuncRefusesMachines(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "runc")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'runc version 1.1.11'\necho 'commit: v1.1.11-0-g4bccb38c'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{StateDir: filepath.Join(dir, "state"), ShimCommand: []string{"true"}, RuncPath: fake})
	if err != nil {
		t.Fatalf("New with a vulnerable runc: %v, want the driver to start", err)
	}
	err = d.Create(context.Background(), runtime.Spec{ID: "m1", Process: runtime.Process{Args: []string{"/app"}}})
	if !errors.Is(err, ErrVulnerableRunc) || !strings.Contains(err.Error(), "runc 1.1.11") {
		t.Errorf("Create: %v, want a refusal naming the vulnerable runc", err)
	}
	if err := d.Start(context.Background(), "m1"); !errors.Is(err, ErrVulnerableRunc) {
		t.Errorf("Start: %v, want a refusal naming the vulnerable runc", err)
	}
	if _, err := d.List(context.Background()); err != nil {
		t.Errorf("List: %v", err)
	}
}
