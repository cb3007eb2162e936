package benchworld

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// DirectRunc is the peer the start benchmarks compare with: `runc run -d`
// of a copy of a machine's own bundle (same root filesystem, same network
// namespace, a cgroup of its own), with no agent, shim or API in the way.
type DirectRunc struct {
	dir, root string
}

// NewDirectRunc prepares the copy of bundle (a machine directory of the
// runc driver) in a new temporary directory.
func NewDirectRunc(bundle string) (*DirectRunc, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, err
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, err
	}
	spec["root"].(map[string]any)["path"] = filepath.Join(bundle, "rootfs")
	spec["linux"].(map[string]any)["cgroupsPath"] = "/perch-bench/direct"
	delete(spec, "annotations")
	dir, err := os.MkdirTemp("", "perch-bench-bundle-")
	if err != nil {
		return nil, err
	}
	if b, err = json.Marshal(spec); err == nil {
		err = os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &DirectRunc{dir: dir, root: filepath.Join(dir, "runc-root")}, nil
}

// Run starts the bundle with `runc run -d` and returns how long until url
// answered 200.
func (d *DirectRunc) Run(url string) (time.Duration, error) {
	out, err := os.Create(filepath.Join(d.dir, "out.log"))
	if err != nil {
		return 0, err
	}
	defer out.Close()
	cmd := exec.Command("runc", "--root", d.root, "run", "-d", "--bundle", d.dir, "bench-direct")
	cmd.Stdout, cmd.Stderr = out, out
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(filepath.Join(d.dir, "out.log"))
		return 0, fmt.Errorf("runc run: %w\n%s", err, b)
	}
	if err := WaitHTTP(url, "", t0); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// Delete removes the container Run started.
func (d *DirectRunc) Delete() {
	_ = exec.Command("runc", "--root", d.root, "delete", "-f", "bench-direct").Run()
}

// Close deletes the container and the bundle's copy.
func (d *DirectRunc) Close() {
	d.Delete()
	os.RemoveAll(d.dir)
}

var quick = &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// WaitHTTP polls url (with Host host, if not empty) every 2 ms until it
// answers 200, for up to a minute from t0.
func WaitHTTP(url, host string, t0 time.Time) error {
	for {
		req, err := http.NewRequest("GET", url, nil)
		if err != nil {
			return err
		}
		if host != "" {
			req.Host = host
		}
		resp, err := quick.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Since(t0) > time.Minute {
			return fmt.Errorf("%s never answered: %v", url, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
