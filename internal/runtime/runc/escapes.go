package runc

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Known container escapes in runc itself. CVE-2024-21626 ("Leaky
// Vessels"): before 1.1.12 runc leaks a host directory fd into the
// container, and an image's working directory of /proc/self/fd/<n> lands
// the process in the host's file system. A machine's image is untrusted
// input, so the driver refuses to create or start machines with such a
// runc; distributions that backported the fix (Debian 12's
// 1.1.5+ds1-1+deb12u1) are recognised by the package changelog.

// ErrVulnerableRunc matches, with errors.Is, the error of a driver whose
// runc has a known escape.
var ErrVulnerableRunc = errors.New("runc has a known container escape")

const (
	escapeCVE  = "CVE-2024-21626"
	fixedRunc  = "1.1.12"
	debChanges = "/usr/share/doc/runc/changelog.Debian.gz"
)

// checkEscapes runs runc --version and says whether runc is safe from
// the known escapes: nil, an error matching ErrVulnerableRunc, or another
// error when it cannot tell.
func checkEscapes(runcPath string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, runcPath, "--version").Output()
	if err != nil {
		return fmt.Errorf("%s --version: %w", runcPath, err)
	}
	changelog, _ := readChangelog(debChanges) // absent: not a Debian package
	return runcVerdict(runcPath, string(out), changelog)
}

var versionRE = regexp.MustCompile(`(?m)^runc version v?(\d+)\.(\d+)\.(\d+)`)

// runcVerdict decides from runc --version's output and the Debian
// changelog of the installed package (empty if none).
func runcVerdict(path, versionOut, changelog string) error {
	m := versionRE.FindStringSubmatch(versionOut)
	if m == nil {
		return fmt.Errorf("cannot read the version of %s from %q", path, firstLine(versionOut))
	}
	v := [3]int{}
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	if v[0] > 1 || (v[0] == 1 && (v[1] > 1 || (v[1] == 1 && v[2] >= 12))) {
		return nil
	}
	// Debian builds print the package version as the commit.
	var commit string
	for _, l := range strings.Split(versionOut, "\n") {
		if c, ok := strings.CutPrefix(l, "commit: "); ok {
			commit = strings.TrimSpace(c)
		}
	}
	if commit != "" && backported(changelog, commit) {
		return nil
	}
	version := fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2])
	if commit != "" {
		version += " (" + commit + ")"
	}
	return fmt.Errorf("%w: runc %s at %s is vulnerable to %s (a machine's image can escape to the host; fixed in runc %s): upgrade runc (apt-get install --only-upgrade runc, or a release from https://github.com/opencontainers/runc/releases), then restart the agent",
		ErrVulnerableRunc, version, path, escapeCVE, fixedRunc)
}

// backported reports whether the Debian changelog's entry for version pkg,
// or an older one, lists the CVE's fix.
func backported(changelog, pkg string) bool {
	in := false
	for _, l := range strings.Split(changelog, "\n") {
		if strings.HasPrefix(l, "runc (") {
			v, _, _ := strings.Cut(strings.TrimPrefix(l, "runc ("), ")")
			if v == pkg {
				in = true
			}
		}
		if in && strings.Contains(l, escapeCVE) {
			return true
		}
	}
	return false
}

func readChangelog(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	zr, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(zr, 4<<20))
	return string(b), err
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
