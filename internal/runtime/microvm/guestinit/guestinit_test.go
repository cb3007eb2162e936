package guestinit

import (
	"bytes"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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

// TestNetParams: the 6PN address and nameservers the host puts on the
// command line come back to the init, which writes them into the
// machine's /etc/hosts and /etc/resolv.conf.
func TestNetParams(t *testing.T) {
	addr6 := netip.MustParsePrefix("fdaa:0:1::ac1e:105/64")
	dns := []netip.Addr{netip.MustParseAddr("172.30.1.1"), netip.MustParseAddr("fdaa:0:1::3")}
	ps := NetParams(addr6, dns)
	line := "console=ttyS0 " + IPParam(netip.MustParsePrefix("172.30.1.5/24"), netip.MustParseAddr("172.30.1.1"), "m1", "eth0") + " " + strings.Join(ps, " ")
	c := parseCmdlineString(line)
	if c.ip6 != addr6 || !slices.Equal(c.dns, dns) {
		t.Fatalf("parsed %q as ip6 %v, dns %v", line, c.ip6, c.dns)
	}
	if got := NetParams(netip.Prefix{}, nil); len(got) != 0 {
		t.Errorf("NetParams with nothing to say = %q", got)
	}
	if c := parseCmdlineString("perch.ip6=10.0.0.1/24 perch.dns=bogus"); c.ip6.IsValid() || len(c.dns) != 0 {
		t.Errorf("bad perch.ip6 and perch.dns parsed as %v, %v", c.ip6, c.dns)
	}

	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	// An image's link to systemd's stub resolver is replaced, not followed.
	os.Symlink("/run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc/resolv.conf"))
	r, err := os.OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := writeEtc(r, "hosts", hostsFile("m1", c)); err != nil {
		t.Fatal(err)
	}
	if err := writeEtc(r, "resolv.conf", resolvConf(c.dns)); err != nil {
		t.Fatal(err)
	}
	hosts, _ := os.ReadFile(filepath.Join(root, "etc/hosts"))
	want := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n172.30.1.5\tm1\nfdaa:0:1::ac1e:105\tm1\n"
	if diff := cmp.Diff(want, string(hosts)); diff != "" {
		t.Errorf("/etc/hosts (-want +got):\n%s", diff)
	}
	resolv, _ := os.ReadFile(filepath.Join(root, "etc/resolv.conf"))
	if diff := cmp.Diff("nameserver 172.30.1.1\nnameserver fdaa:0:1::3\n", string(resolv)); diff != "" {
		t.Errorf("/etc/resolv.conf (-want +got):\n%s", diff)
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

// eofThen reads as end-of-file, with nothing read, n times (a virtio port
// whose host side has not said it is connected), then reads r.
type eofThen struct {
	n int
	r *bytes.Reader
}

func (e *eofThen) Read(p []byte) (int, error) {
	if e.n > 0 {
		e.n--
		return 0, io.EOF
	}
	return e.r.Read(p)
}

// TestFirstFrameWaitsForTheHost: the config read goes on past a port that
// reads as end-of-file before the host is connected, but not past a real
// end (the deadline) or a frame cut short.
func TestFirstFrameWaitsForTheHost(t *testing.T) {
	var buf bytes.Buffer
	if err := NewWriter(&buf).Send(FrameConfig, []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	typ, payload, err := readFirstFrame(&eofThen{n: 3, r: bytes.NewReader(buf.Bytes())}, 5*time.Second)
	if err != nil || typ != FrameConfig || string(payload) != `{"a":1}` {
		t.Fatalf("after three empty reads: %q %q %v, want the config frame", typ, payload, err)
	}
	if _, _, err := readFirstFrame(&eofThen{n: 1 << 30}, 50*time.Millisecond); err != io.EOF {
		t.Errorf("a port that stays at end-of-file: %v, want io.EOF after the timeout", err)
	}
	cut := buf.Bytes()[:len(buf.Bytes())-2]
	if _, _, err := readFirstFrame(bytes.NewReader(cut), 5*time.Second); err == nil || err == io.EOF {
		t.Errorf("a frame cut short: %v, want a short-frame error at once", err)
	}
}
