package edge

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/testport"
)

// freePort is a port free on 127.0.0.1 for TCP and UDP (testport.Free).
func freePort(t *testing.T) int { return testport.Free(t) }

func TestListenerFollowsApps(t *testing.T) {
	w := newListeningWorld(t)
	run(t, w.e)
	port := freePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	accepts := func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}

	w.app("shop")
	w.place("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), port, api.StateStarted)
	w.commit()
	waitFor(t, "the edge to listen on the app's port", accepts)
	if got := w.e.Listening(); len(got) != 1 || got[0] != port {
		t.Errorf("Listening() = %v, want [%d]", got, port)
	}

	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = "shop.perch.local"
	res, body := do(t, c, req)
	if res.StatusCode != http.StatusOK || answeredBy(t, body).Machine != "s1" {
		t.Fatalf("through the public port: %d %q", res.StatusCode, body)
	}

	w.e.table.removeApp("shop")
	w.e.table.removeMachine("shop.s1")
	w.commit()
	waitFor(t, "the edge to close the port of the app that went", func() bool { return !accepts() })
	if got := w.e.Listening(); len(got) != 0 {
		t.Errorf("Listening() = %v after the app went, want none", got)
	}
}

// A port that is taken is not fatal: the edge serves its other ports and
// takes the port once it is free.
func TestBusyPortIsRetried(t *testing.T) {
	w := newListeningWorld(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	taken := busy.Addr().(*net.TCPAddr).Port
	free := freePort(t)
	w.app("shop")
	w.place("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), taken, api.StateStarted)
	w.place("shop", startMachine(t, "s2", "ams", "127.0.0.3", nil), free, api.StateStarted)
	w.commit()
	run(t, w.e)

	waitFor(t, "the free port to open", func() bool { l := w.e.Listening(); return len(l) == 1 && l[0] == free })
	busy.Close()
	w.commit() // any change of the routes retries the port
	waitFor(t, "the freed port to open", func() bool { return len(w.e.Listening()) == 2 })
}

func newListeningWorld(t *testing.T) *world {
	t.Helper()
	e, err := newEdge(Config{Region: "ams", Addr: netip.MustParseAddr("127.0.0.1"), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	return &world{t: t, e: e}
}
