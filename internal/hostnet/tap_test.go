package hostnet_test

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/hostnet/hostnettest"
)

// TestTap: a microVM's tap is a port of the bridge, made once however
// often it is attached, listed, and removed by Detach; a tap of that name
// that belongs to another machine is refused, not taken over.
func TestTap(t *testing.T) {
	b := hostnettest.New(t)
	id := newID(t, "tp")
	n := b.Net(t)
	t.Cleanup(func() { hostnet.Detach(id) })
	tap, err := hostnet.AttachTap(id, n)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := hostnet.AttachTap(id, n); err != nil || again != tap {
		t.Fatalf("second AttachTap = %q, %v; want %q, nil", again, err, tap)
	}
	out, err := exec.Command("ip", "-j", "-d", "link", "show", "dev", tap).Output()
	if err != nil {
		t.Fatal(err)
	}
	var links []struct {
		Master   string `json:"master"`
		Alias    string `json:"ifalias"`
		LinkInfo struct {
			Data struct {
				Type    string `json:"type"`
				Persist bool   `json:"persist"`
			} `json:"info_data"`
		} `json:"linkinfo"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip link show %s: %v\n%s", tap, err, out)
	}
	if l := links[0]; l.Master != b.Name || l.Alias != id || l.LinkInfo.Data.Type != "tap" || !l.LinkInfo.Data.Persist {
		t.Errorf("tap %s = %+v; want a persistent tap named for %s on bridge %s", tap, l, id, b.Name)
	}
	if ids, err := hostnet.List(); err != nil || !slices.Contains(ids, id) {
		t.Errorf("List() = %v, %v; want it to contain %s", ids, err, id)
	}

	// Another machine whose id starts the same cannot take it.
	other := id + "x"
	if _, err := hostnet.AttachTap(other, n); err == nil || !strings.Contains(err.Error(), "belongs to") {
		t.Errorf("AttachTap of %s over %s's tap: err = %v, want one saying whose it is", other, id, err)
	}
	if err := hostnet.Detach(other); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.Command("ip", "link", "show", "dev", tap).Output(); err != nil {
		t.Fatalf("Detach of %s removed %s's tap", other, id)
	}

	for range 2 { // the second time finds nothing to do
		if err := hostnet.Detach(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := exec.Command("ip", "link", "show", "dev", tap).Run(); err == nil {
		t.Errorf("tap %s still there after Detach", tap)
	}
	if ids, _ := hostnet.List(); slices.Contains(ids, id) {
		t.Errorf("List() still has %s after Detach", id)
	}
}
