package internaldns_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/hostnet/hostnettest"
	"github.com/perchhq/perch/internal/internaldns"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/runc"
)

// TestMain lets the test binary be the runc driver's shim, as the perch
// binary is in production.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "runc-shim" {
		os.Exit(runc.ShimMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// TestFromInsideAMachine: the sample app in a runc machine, whose
// resolv.conf names the server on its bridge's gateway, resolves its own
// app and organisation through Go's resolver, and not another
// organisation's: the server knows the machine by the bridge address its
// queries come from.
func TestFromInsideAMachine(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for runc and network namespaces; run the tests as root")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("needs runc: ", err)
	}
	br := hostnettest.New(t)
	n := br.Net6(t)
	gw := br.Gateway.Addr()
	n.DNS = []netip.Addr{gw}
	self := internaldns.Machine{App: "web", ID: "m" + strconv.Itoa(os.Getpid()), Region: "ams", Org: "acme",
		Addr: n.Addr6.Addr(), IPv4: n.Addr.Addr(), Started: true}
	peer := internaldns.Machine{App: "db", ID: "0d1", Region: "iad", Org: "acme", Addr: netip.MustParseAddr("fdaa:0:2::ac1e:202"), Started: true}
	other := internaldns.Machine{App: "secret", ID: "0e1", Region: "ams", Org: "other", Addr: netip.MustParseAddr("fdaa:0:2::ac1e:203"), Started: true}
	w := &world{}
	w.set(self, peer, other)
	// Resolvers ask port 53; the gateway address is this test's own.
	start(t, netip.AddrPortFrom(gw, 53).String(), internaldns.Config{Source: w})

	d, err := runc.New(runc.Config{StateDir: t.TempDir(), ShimCommand: []string{os.Args[0], "runc-shim"}})
	if err != nil {
		t.Fatal(err)
	}
	spec := runtime.Spec{
		ID: self.ID, Rootfs: helloRootfs(t), Hostname: self.ID, Net: n,
		Process: runtime.Process{Args: []string{"/app"}, Env: []string{"PORT=8080"}},
	}
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Stop(ctx, spec.ID, syscall.SIGKILL, time.Second)
		if err := d.Destroy(ctx, spec.ID); err != nil {
			t.Error(err)
		}
	})
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://%s:8080", n.Addr.Addr())
	for _, tc := range []struct {
		path string
		code int
		want []string
	}{
		{"/dns/web.internal", 200, []string{self.Addr.String()}},
		{"/dns/ams.web.internal", 200, []string{self.Addr.String()}},
		{"/dns/" + self.ID + ".vm.web.internal", 200, []string{self.Addr.String()}},
		{"/dns/db.internal", 200, []string{peer.Addr.String()}},
		{"/dns/" + self.ID, 200, []string{n.Addr.Addr().String(), self.Addr.String()}}, // /etc/hosts
		{"/dns/_apps.internal?type=txt", 200, []string{"db,web"}},
		{"/dns/secret.internal", 500, nil},
		{"/dns/nope.internal", 500, nil},
	} {
		code, body := getWhenUp(t, base+tc.path)
		if code != tc.code {
			t.Errorf("GET %s = %d %s, want %d", tc.path, code, body, tc.code)
			continue
		}
		if code != 200 {
			if !strings.Contains(body, "no such host") {
				t.Errorf("GET %s = %d %s, want the resolver to say no such host", tc.path, code, body)
			}
			continue
		}
		var a struct {
			Addrs []string `json:"addrs"`
			TXT   []string `json:"txt"`
		}
		if err := json.Unmarshal([]byte(body), &a); err != nil {
			t.Fatalf("GET %s: %v: %s", tc.path, err, body)
		}
		got := append(a.Addrs, a.TXT...)
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("GET %s: the machine resolved %q, want %q", tc.path, got, tc.want)
		}
	}
}

// helloRootfs is a root filesystem holding the sample app as /app.
func helloRootfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "app"), "github.com/perchhq/perch/examples/hello")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build hello: %v\n%s", err, out)
	}
	if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// getWhenUp GETs url, retrying while the machine's server comes up.
func getWhenUp(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{}, Timeout: 15 * time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := c.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, strings.TrimSpace(string(b))
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
