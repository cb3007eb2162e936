package devcluster_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/image"
)

// TestImageLayersSharedAndCollected: 20 deploys of the sample app, each a
// new image that differs only in its config (a label, as a rebuild with a
// new build arg gives) and a new [env], unpack its layers once; with the
// app gone, the host's image GC brings the store back within
// --image-cache-max, and `perch hosts` shows it.
func TestImageLayersSharedAndCollected(t *testing.T) {
	t.Parallel() // see TestMain

	const capBytes = 1_000_000 // --image-cache-max 0.001 (GB): below one copy of the app
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}, AgentArgs: []string{"--image-cache-max", "0.001"}})
	info := w.Info()
	storeDir := filepath.Join(info.Regions[0].StateDir, "images")
	base := buildSample(t)
	baseLayers, err := base.Layers()
	if err != nil {
		t.Fatal(err)
	}
	push := func(i int) string {
		t.Helper()
		cf, err := base.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.Config.Labels = map[string]string{"build": fmt.Sprint(i)}
		img, err := mutate.ConfigFile(base, cf)
		if err != nil {
			t.Fatal(err)
		}
		ref := fmt.Sprintf("%s/hello:build%d", info.Registry, i)
		r, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, img, remote.WithAuth(&authn.Basic{Username: "x", Password: info.Token})); err != nil {
			t.Fatalf("push %s: %v", ref, err)
		}
		return ref
	}
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", push(0), "--regions", "iad", "--name", "disk")
	toml, err := os.ReadFile(filepath.Join(dir, "perch.toml"))
	if err != nil {
		t.Fatal(err)
	}
	var firstUnpacked map[string]time.Time
	const deploys = 20
	for i := 1; i <= deploys; i++ {
		if err := os.WriteFile(filepath.Join(dir, "perch.toml"), fmt.Appendf(append([]byte{}, toml...), "\n[env]\n  BUILD = \"%d\"\n", i), 0o644); err != nil {
			t.Fatal(err)
		}
		mustPerch(t, w, dir, "deploy", "--image", push(i), "--smoke-window", "0")
		layers, err := image.New(storeDir, nil).Layers()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]time.Time{}
		for _, l := range layers {
			got[l.DiffID] = l.Unpacked
		}
		if firstUnpacked == nil {
			firstUnpacked = got
		}
		if len(got) != len(baseLayers) {
			t.Fatalf("after deploy %d the layer store holds %d layers, want the image's %d", i, len(got), len(baseLayers))
		}
		for id, when := range got {
			if !when.Equal(firstUnpacked[id]) {
				t.Fatalf("deploy %d unpacked layer %s again (at %v, first at %v)", i, id, when, firstUnpacked[id])
			}
		}
	}
	expectAnswer(t, info.Regions[0].EdgeAddr+":80", "disk", "iad")

	// The app goes; its images are unused now.
	mustPerch(t, w, dir, "apps", "destroy", "disk", "--yes")
	eventually(t, 30*time.Second, "the image store is back within its cap", func() (bool, string) {
		u, err := image.New(storeDir, nil).Usage()
		if err != nil {
			return false, err.Error()
		}
		return u.Bytes <= capBytes && u.Images == 0, fmt.Sprintf("%+v", u)
	})
	eventually(t, 30*time.Second, "perch hosts reports the image store within its cap", func() (bool, string) {
		// Hosts are the operator's: the admin token, not the world's
		// organisation token.
		out, err := perchEnv(t, w, dir, []string{"PERCH_API_TOKEN=" + w.AdminToken()}, "hosts", "--json")
		if err != nil {
			return false, out
		}
		var hosts []api.Host
		if err := json.Unmarshal([]byte(out), &hosts); err != nil {
			return false, out
		}
		for _, h := range hosts {
			if h.Region == "iad" && h.Disk != nil && h.Disk.ImageMaxBytes == capBytes && h.Disk.ImageBytes <= capBytes && h.Disk.TotalBytes > 0 {
				return true, ""
			}
		}
		return false, out
	})
}
