package testimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
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
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

// ErrNoMirror is returned when a Debian root filesystem has to be built
// and the Debian mirror cannot be reached: a test then skips.
var ErrNoMirror = errors.New("the Debian mirror cannot be reached")

// Defaults of DebianImage.
const (
	DefaultSuite  = "bookworm"
	DefaultMirror = "http://deb.debian.org/debian"
)

// DebianImage describes a one-layer image made from Debian packages: a
// debootstrap --variant=minbase root filesystem, the packages installed
// with apt-get (no recommends, no service started), Files written, Setup
// run, apt's caches and the documentation removed.
type DebianImage struct {
	Suite    string   // DefaultSuite if empty
	Mirror   string   // DefaultMirror if empty; not part of the cache key
	Packages []string // installed with apt-get install --no-install-recommends
	// Files are written into the root filesystem after the packages are
	// installed (paths relative to /, parents made 0755).
	Files map[string]File
	// Setup are shell commands (sh -ec) run last, chrooted to the root
	// filesystem, as root, with /proc mounted: make users, directories.
	Setup []string
	// Config is the image's config, as `docker inspect` shows it.
	Config v1.Config
}

// Debian returns the image d describes. The root filesystem takes
// debootstrap minutes the first time; it is cached as a gzip tar under
// CacheDir, keyed by a hash of the suite, packages, files and setup, and
// built under a lock file so concurrent test binaries build it once. Only
// root can build it (debootstrap, chroot). A cache miss with no reachable
// mirror is ErrNoMirror.
func Debian(ctx context.Context, d DebianImage) (v1.Image, error) {
	if d.Suite == "" {
		d.Suite = DefaultSuite
	}
	if d.Mirror == "" {
		d.Mirror = DefaultMirror
	}
	tgz, err := cachedRootfs(ctx, d)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromFile(tgz)
	if err != nil {
		return nil, fmt.Errorf("layer from %s: %w", tgz, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Config = d.Config
	cf.OS, cf.Architecture = "linux", "amd64"
	return mutate.ConfigFile(img, cf)
}

// NeedDebian is Debian for a test: it skips the test when the mirror
// cannot be reached to build an image not yet cached, and fails it on any
// other error. A first build takes minutes: give go test a -timeout to
// match.
func NeedDebian(t testing.TB, d DebianImage) v1.Image {
	t.Helper()
	begin := time.Now()
	img, err := Debian(context.Background(), d)
	if errors.Is(err, ErrNoMirror) {
		t.Skipf("cannot build the Debian test image %v: %v", d.Packages, err)
	}
	if err != nil {
		t.Fatalf("Debian test image %v: %v", d.Packages, err)
	}
	if took := time.Since(begin); took > 5*time.Second {
		t.Logf("built the Debian test image %v in %v", d.Packages, took.Round(time.Second))
	}
	return img
}

// Push writes img to ref (host:port/repo:tag, plain HTTP allowed), as the
// user with token when token is not empty.
func Push(ctx context.Context, img v1.Image, ref, token string) error {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	opts := []remote.Option{remote.WithContext(ctx)}
	if token != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: "x", Password: token}))
	}
	if err := remote.Write(r, img, opts...); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// CacheDir is where built root filesystems are kept: $PERCH_TEST_CACHE,
// else /var/cache/perch-test, with Debian's under debian/.
func CacheDir() string {
	if d := os.Getenv("PERCH_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/perch-test"
}

// cacheVersion changes when the way a root filesystem is built does.
const cacheVersion = "1"

// key names d's root filesystem in the cache.
func (d DebianImage) key() string {
	h := sha256.New()
	files := make([]string, 0, len(d.Files))
	for p, f := range sortedKeys(d.Files) {
		files = append(files, fmt.Sprintf("%s %o %x", p, f.Mode, sha256.Sum256(f.Data)))
	}
	pkgs := slices.Clone(d.Packages)
	slices.Sort(pkgs)
	json.NewEncoder(h).Encode([]any{cacheVersion, d.Suite, pkgs, files, d.Setup})
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// cachedRootfs returns the path of d's root filesystem tarball, building
// it if no other process has.
func cachedRootfs(ctx context.Context, d DebianImage) (string, error) {
	dir := filepath.Join(CacheDir(), "debian")
	key := d.key()
	tgz := filepath.Join(dir, key+".tar.gz")
	if _, err := os.Stat(tgz); err == nil {
		return tgz, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("test image cache: %w", err)
	}
	unlock, err := lockFile(filepath.Join(dir, key+".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(tgz); err == nil {
		return tgz, nil // another process built it while we waited
	}
	if err := build(ctx, d, dir, tgz); err != nil {
		return "", fmt.Errorf("build Debian %s root filesystem with %v: %w", d.Suite, d.Packages, err)
	}
	return tgz, nil
}

// lockFile holds an exclusive flock on path until the returned func is
// called; the kernel drops it if the process dies.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// build makes d's root filesystem in a temporary directory beside tgz and
// renames the finished tarball into place, so a crash leaves no half
// entry in the cache.
func build(ctx context.Context, d DebianImage, dir, tgz string) error {
	if os.Geteuid() != 0 {
		return errors.New("building a Debian root filesystem needs root (debootstrap, chroot)")
	}
	if err := probeMirror(ctx, d.Mirror, d.Suite); err != nil {
		return err
	}
	if err := needDebootstrap(ctx); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "rootfs")
	if out, err := exec.CommandContext(ctx, "debootstrap", "--variant=minbase", d.Suite, root, d.Mirror).CombinedOutput(); err != nil {
		return fmt.Errorf("debootstrap: %w\n%s", err, tail(out))
	}
	// No package's service starts in the chroot.
	if err := os.WriteFile(filepath.Join(root, "usr/sbin/policy-rc.d"), []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return err
	}
	if len(d.Packages) > 0 {
		install := "apt-get update -qq && apt-get install -y -qq --no-install-recommends " + strings.Join(d.Packages, " ")
		if err := inChroot(ctx, root, install); err != nil {
			return err
		}
	}
	for p, f := range sortedKeys(d.Files) {
		full := filepath.Join(root, filepath.Clean("/"+p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, f.Data, os.FileMode(f.Mode)); err != nil {
			return err
		}
		if err := os.Chmod(full, os.FileMode(f.Mode)); err != nil { // past the umask
			return err
		}
	}
	for _, s := range d.Setup {
		if err := inChroot(ctx, root, s); err != nil {
			return err
		}
	}
	// What the image should not carry: apt's lists and caches, logs, docs,
	// the build host's resolv.conf and hostname.
	if err := inChroot(ctx, root, "apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old "+
		"/var/log/*.log /var/log/apt/* /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* "+
		"/usr/sbin/policy-rc.d /etc/resolv.conf /etc/hostname /tmp/* /var/tmp/* /root/.cache"); err != nil {
		return err
	}
	out := filepath.Join(tmp, "rootfs.tar.gz")
	tar := exec.CommandContext(ctx, "tar", "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
		"-czf", out, "-C", root, ".")
	if b, err := tar.CombinedOutput(); err != nil {
		return fmt.Errorf("tar the root filesystem: %w\n%s", err, b)
	}
	return os.Rename(out, tgz)
}

// inChroot runs script with sh -ec chrooted to root, in its own mount and
// PID namespaces with /proc mounted: what the script starts ends with it,
// and nothing stays mounted.
func inChroot(ctx context.Context, root, script string) error {
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--pid", "--fork", "--mount-proc="+filepath.Join(root, "proc"),
		"chroot", root, "/bin/sh", "-ec", script)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C", "HOME=/root"}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("in the chroot, %q: %w\n%s", script, err, tail(out))
	}
	return nil
}

// probeMirror tells an unreachable mirror (ErrNoMirror) from a failing
// build.
func probeMirror(ctx context.Context, mirror, suite string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	url := strings.TrimSuffix(mirror, "/") + "/dists/" + suite + "/Release"
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoMirror, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: HEAD %s: %s", ErrNoMirror, url, resp.Status)
	}
	return nil
}

// needDebootstrap installs debootstrap with apt-get when it is missing
// (scripts/deps.sh installs it too).
func needDebootstrap(ctx context.Context) error {
	if _, err := exec.LookPath("debootstrap"); err == nil {
		return nil
	}
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "--no-install-recommends", "debootstrap"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("debootstrap is missing and apt-get %s failed: %w\n%s", args[0], err, tail(out))
		}
	}
	return nil
}

// tail is the end of a command's output, which says what went wrong.
func tail(out []byte) []byte {
	const max = 4000
	if len(out) > max {
		return out[len(out)-max:]
	}
	return out
}
