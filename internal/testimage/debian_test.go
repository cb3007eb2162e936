package testimage_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/hostnet/hostnettest"
	"github.com/perchhq/perch/internal/image"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/runc"
	"github.com/perchhq/perch/internal/testimage"
)

// TestMain lets the test binary be the runc shim, as the perch binary is.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "runc-shim" {
		os.Exit(runc.ShimMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// TestDebianRecipes: each ready-made Debian image, pushed to the real
// registry and pulled by the agent's image store, runs under runc as its
// config says and serves what its doc comment promises, as the user it
// names.
func TestDebianRecipes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for debootstrap, runc and the host bridge; run the tests as root")
	}
	br := hostnettest.New(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d, err := runc.New(runc.Config{StateDir: t.TempDir(), ShimCommand: []string{exe, "runc-shim"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		image testimage.DebianImage
		port  int
		user  string // of the serving process, by /proc
		check func(t *testing.T, addr string)
	}{
		{"nginx", testimage.Nginx(), 80, "www-data", func(t *testing.T, addr string) {
			if body := httpGet(t, "http://"+addr+"/"); !strings.Contains(body, "Welcome to nginx!") {
				t.Errorf("GET / = %q, want Debian's welcome page", body)
			}
		}},
		{"gunicorn", testimage.Gunicorn(), 8080, "app", func(t *testing.T, addr string) {
			if body := httpGet(t, "http://"+addr+"/hello"); !strings.Contains(body, `"path": "/hello"`) || !strings.Contains(body, `"uid": 1000`) {
				t.Errorf("GET /hello = %q, want its path and uid 1000", body)
			}
			resp, err := http.Post("http://"+addr+"/", "text/plain", strings.NewReader("posted body"))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "posted body" {
				t.Errorf("POST / = %d %q, want the body echoed", resp.StatusCode, b)
			}
		}},
		{"redis", testimage.Redis(), 6379, "redis", func(t *testing.T, addr string) {
			if got := redis(t, addr, "SET k v", "GET k"); got != "+OK\r\n$1\r\nv\r\n" {
				t.Errorf("SET k v; GET k answered %q", got)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			img := testimage.Unpack(t, testimage.NeedDebian(t, tc.image), tc.name+":test")
			spec := machine(t, img, br.Net(t))
			ctx := context.Background()
			if err := d.Create(ctx, spec); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if t.Failed() {
					for _, l := range d.Logs(spec.ID) {
						b, _ := os.ReadFile(l.Path)
						t.Logf("%s:\n%s", l.Stream, b)
					}
				}
				d.Destroy(context.Background(), spec.ID)
			})
			if err := d.Start(ctx, spec.ID); err != nil {
				t.Fatal(err)
			}
			addr := fmt.Sprintf("%s:%d", spec.Net.Addr.Addr(), tc.port)
			waitListening(t, addr, time.Minute)
			tc.check(t, addr)
			st, err := d.State(ctx, spec.ID)
			if err != nil {
				t.Fatal(err)
			}
			if users := processUsers(t, st.Pid); !strings.Contains(users, tc.user) {
				t.Errorf("the machine's processes run as %s; want %s among them", users, tc.user)
			}
			if err := d.Stop(ctx, spec.ID, syscall.SIGTERM, 10*time.Second); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// machine runs img as its config says.
func machine(t *testing.T, img *image.Image, n runtime.Net) runtime.Spec {
	b := make([]byte, 5)
	rand.Read(b)
	return runtime.Spec{
		ID:     "ti" + hex.EncodeToString(b),
		Rootfs: img.Rootfs, Layers: img.Layers,
		Process: runtime.Process{
			Args: append(append([]string{}, img.Config.Entrypoint...), img.Config.Cmd...),
			Env:  img.Config.Env, Cwd: img.Config.WorkingDir, User: img.Config.User,
		},
		Hostname: "debian",
		Net:      n,
		CPUs:     1,
		MemoryMB: 256,
	}
}

func waitListening(t *testing.T, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s after %v: %v", addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

// redis sends inline commands and returns the replies.
func redis(t *testing.T, addr string, cmds ...string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, strings.Join(cmds, "\r\n")+"\r\nQUIT\r\n"); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	return strings.TrimSuffix(string(b), "+OK\r\n")
}

// processUsers names the users of pid and its descendants, from /proc
// and the machine's own /etc/passwd.
func processUsers(t *testing.T, pid int) string {
	t.Helper()
	root := fmt.Sprintf("/proc/%d/root", pid)
	names := map[string]string{}
	if f, err := os.Open(filepath.Join(root, "etc/passwd")); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if f := strings.Split(s.Text(), ":"); len(f) > 2 {
				names[f[2]] = f[0]
			}
		}
		f.Close()
	}
	seen := map[string]bool{}
	var users []string
	pids := []int{pid}
	for len(pids) > 0 {
		p := pids[0]
		pids = pids[1:]
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if uid, ok := strings.CutPrefix(line, "Uid:"); ok {
				u := names[insideUID(t, p, strings.Fields(uid)[0])]
				if !seen[u] {
					seen[u] = true
					users = append(users, u)
				}
			}
		}
		children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p, p))
		for _, c := range strings.Fields(string(children)) {
			var n int
			fmt.Sscan(c, &n)
			pids = append(pids, n)
		}
	}
	return strings.Join(users, ",")
}

// insideUID is host uid of process pid as the process's user namespace
// sees it (a machine's root is an unprivileged host uid).
func insideUID(t *testing.T, pid int, hostUID string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", pid))
	if err != nil {
		return hostUID
	}
	var h int
	fmt.Sscan(hostUID, &h)
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var inside, outside, n int
		if _, err := fmt.Sscan(l, &inside, &outside, &n); err == nil && h >= outside && h < outside+n {
			return fmt.Sprint(inside + h - outside)
		}
	}
	return hostUID
}
