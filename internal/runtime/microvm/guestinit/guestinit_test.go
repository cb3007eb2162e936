package guestinit

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestIPParam: what the host writes on the kernel command line is what the
// init reads back, as the kernel's own ip= format.
func TestIPParam(t *testing.T) {
	for _, tc := range []struct {
		addr netip.Prefix
		gw   netip.Addr
		want string
	}{
		{netip.MustParsePrefix("172.30.1.5/24"), netip.MustParseAddr("172.30.1.1"), "ip=172.30.1.5::172.30.1.1:255.255.255.0:m1:eth0:off"},
		{netip.MustParsePrefix("10.0.0.9/20"), netip.MustParseAddr("10.0.0.1"), "ip=10.0.0.9::10.0.0.1:255.255.240.0:m1:eth0:off"},
		{netip.MustParsePrefix("10.1.2.3/32"), netip.Addr{}, "ip=10.1.2.3:::255.255.255.255:m1:eth0:off"},
	} {
		p := IPParam(tc.addr, tc.gw, "m1", "eth0")
		if p != tc.want {
			t.Errorf("IPParam(%v, %v) = %q, want %q", tc.addr, tc.gw, p, tc.want)
		}
		c := parseCmdlineString("console=ttyS0 quiet " + p + " perch.root=/dev/vdb")
		want := ipConfig{Addr: tc.addr, Gateway: tc.gw, Device: "eth0"}
		if c.ip != want || c.root != "/dev/vdb" || c.rootType != "ext4" || c.probe {
			t.Errorf("parsed %q as %+v", p, c)
		}
	}
	if c := parseCmdlineString("ip=off perch.probe=1"); c.ip.Addr.IsValid() || !c.probe || c.root != "/dev/vda" {
		t.Errorf("parsed ip=off perch.probe=1 as %+v", c)
	}
}

// TestFrames: frames arrive whole and in order, a payload over the limit
// is split, and a corrupt length is refused instead of allocated.
func TestFrames(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	big := bytes.Repeat([]byte("x"), maxFrame+10)
	w.Send(FrameStdout, []byte("hello\n"))
	w.Send(FrameExit, []byte("3"))
	w.Send(FrameStderr, big)
	w.Send(FrameBye, nil)
	var got []string
	var stderr []byte
	for {
		typ, p, err := ReadFrame(&buf)
		if err != nil {
			break
		}
		if typ == FrameStderr {
			stderr = append(stderr, p...)
			continue
		}
		got = append(got, string(typ)+":"+string(p))
	}
	if diff := cmp.Diff([]string{"o:hello\n", "x:3", "B:"}, got); diff != "" {
		t.Errorf("frames (-want +got):\n%s", diff)
	}
	if !bytes.Equal(stderr, big) {
		t.Errorf("a %d-byte payload came back as %d bytes", len(big), len(stderr))
	}
	if _, _, err := ReadFrame(bytes.NewReader([]byte{'o', 0xff, 0xff, 0xff, 0xff})); err == nil {
		t.Error("a frame claiming 4 GiB was accepted")
	}
}

// TestLookPath: the app's program is found as its own root sees it, and a
// missing or non-executable one gets the shell's exit code.
func TestLookPath(t *testing.T) {
	root := t.TempDir()
	for name, mode := range map[string]os.FileMode{
		"usr/bin/app": 0o755, "srv/run.sh": 0o755, "usr/local/bin/data": 0o644, "opt/jdk/bin/java": 0o755,
	} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(name)), 0o755)
		os.WriteFile(filepath.Join(root, name), []byte("#!/bin/sh\n"), mode)
	}
	// An absolute link inside the image resolves inside it, not on the host.
	os.Symlink("/usr/bin", filepath.Join(root, "bin"))
	os.MkdirAll(filepath.Join(root, "etc/alternatives"), 0o755)
	os.Symlink("/opt/jdk/bin/java", filepath.Join(root, "etc/alternatives/java"))
	os.Symlink("../../etc/alternatives/java", filepath.Join(root, "usr/bin/java"))
	env := []string{"PATH=/usr/local/bin:/bin"}
	for _, tc := range []struct {
		name, cwd, want string
		code            int
	}{
		{"app", "/", "/bin/app", 0},
		{"/usr/bin/app", "/", "/usr/bin/app", 0},
		{"./run.sh", "/srv", "/srv/run.sh", 0},
		{"data", "/", "", ExitNotExecutable},
		{"java", "/", "/bin/java", 0},
		{"nope", "/", "", ExitNotFound},
		{"/srv/nope", "/", "/srv/nope", ExitNotFound},
	} {
		got, code := lookPath(root, tc.cwd, tc.name, env)
		if code != tc.code || (code == 0 && got != tc.want) {
			t.Errorf("lookPath(%q in %s) = %q, %d; want %q, %d", tc.name, tc.cwd, got, code, tc.want, tc.code)
		}
	}
}
