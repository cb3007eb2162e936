package devcluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/perchhq/perch/internal/anycast"
	"github.com/perchhq/perch/internal/geo"
)

// TestClaimLabNetApart: anycast worlds started at the same moment claim
// different management networks and so different lab ids (the names of
// their namespaces and links); a released claim can be taken again.
func TestClaimLabNetApart(t *testing.T) {
	const n = 4
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		nets     = map[string]bool{}
		ids      = map[string]bool{}
		releases []func()
	)
	for range n {
		wg.Go(func() {
			p, id, release, err := claimLabNet()
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			nets[p.String()], ids[id] = true, true
			releases = append(releases, release)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(nets) != n || len(ids) != n {
		t.Fatalf("%d worlds at once claimed management networks %v and ids %v; want %d different of each", n, nets, ids, n)
	}
	for _, r := range releases {
		r()
	}
	p, _, release, err := claimLabNet()
	if err != nil {
		t.Fatal(err)
	}
	release()
	if !nets[p.String()] {
		t.Errorf("after every claim was released the next claim took %s, not one of the freed %v", p, nets)
	}
}

// TestGeoLinks: each city is linked to its two nearest, and two groups
// whose cities' nearest are all in their own group (Europe's three,
// Asia's three) are still joined.
func TestGeoLinks(t *testing.T) {
	w := geo.Default()
	cities := []string{"lhr", "ams", "cdg", "sin", "nrt", "hkg"}
	links := geoLinks(w, cities)
	has := func(a, b string) bool {
		return slices.Contains(links, [2]string{min(a, b), max(a, b)})
	}
	for _, c := range cities {
		others := slices.DeleteFunc(slices.Clone(cities), func(o string) bool { return o == c })
		for _, o := range w.Nearest(c, others)[:2] {
			if !has(c, o) {
				t.Errorf("%s is not linked to %s, one of its two nearest; links %v", c, o, links)
			}
		}
	}
	// Every city reaches every other.
	seen := map[string]bool{"lhr": true}
	for changed := true; changed; {
		changed = false
		for _, l := range links {
			if seen[l[0]] != seen[l[1]] {
				seen[l[0]], seen[l[1]], changed = true, true, true
			}
		}
	}
	if len(seen) != len(cities) {
		t.Errorf("links %v leave %v apart from lhr", links, cities)
	}
	if len(links) != 7 {
		t.Errorf("links %v: want the two triangles and one link joining them", links)
	}
}

// TestRemoveLab: what `perch dev down` does for a world whose process
// died: from world.json's list alone, the routers stop and the
// namespaces, the management bridge and the routers' files go.
func TestRemoveLab(t *testing.T) {
	for _, bin := range []string{"bird", "birdc", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("the anycast lab needs %s (bird2, iproute2: scripts/deps.sh)", bin)
		}
	}
	mgmt, id, release, err := claimLabNet()
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	lab, err := anycast.NewLab(anycast.LabConfig{Cities: []anycast.LabCity{{Name: "lhr", Host: true}, {Name: "ams"}},
		Links: [][2]string{{"lhr", "ams"}}, Dir: filepath.Join(t.TempDir(), "lab"), Mgmt: true, MgmtNet: mgmt, ID: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	res := lab.Resources()
	if err := removeLab(res); err != nil {
		t.Fatal(err)
	}
	for _, ns := range res.Namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("namespace %s left", ns)
		}
	}
	for _, link := range append(res.Links, res.Bridge) {
		if _, err := os.Stat(filepath.Join("/sys/class/net", link)); err == nil {
			t.Errorf("link %s left", link)
		}
	}
	for city, pid := range res.Birds {
		// Killed, not yet reaped by this process, its parent: a zombie.
		if stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && !strings.Contains(string(stat), ") Z") {
			t.Errorf("the router of %s (pid %d) still runs", city, pid)
		}
	}
	if _, err := os.Stat(res.Dir); err == nil {
		t.Errorf("the routers' files in %s left", res.Dir)
	}
}

// TestClientNamespace: perch dev exec's city lookup, and its errors for
// a world without a lab and for a city the lab does not have.
func TestClientNamespace(t *testing.T) {
	plain := Info{Dir: "/w"}
	if _, err := plain.ClientNamespace("lhr"); err == nil || !strings.Contains(err.Error(), "perch dev up --anycast") {
		t.Errorf("a world without a lab: %v; want an error saying to start one with perch dev up --anycast", err)
	}
	i := Info{Dir: "/w", Anycast: &AnycastInfo{Cities: []AnycastCity{{Name: "lhr", ClientNS: "acc-w01-lhr"}, {Name: "sin", ClientNS: "acc-w01-sin"}}}}
	if ns, err := i.ClientNamespace("sin"); err != nil || ns != "acc-w01-sin" {
		t.Errorf("sin: %q, %v; want acc-w01-sin", ns, err)
	}
	if _, err := i.ClientNamespace("syd"); err == nil || !strings.Contains(err.Error(), `no city "syd"`) || !strings.Contains(err.Error(), "lhr, sin") {
		t.Errorf("an unknown city: %v; want an error naming it and the cities lhr, sin", err)
	}
}
