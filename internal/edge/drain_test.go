package edge

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// TestDrainOnlyFromTheMachinesHost: the edge answers a drain request
// from the machine's own host (after the request's wait, the machine
// still in rotation), and ignores the same request sent as another host
// (a host's NATS user publishes drains only on its own subject), which
// therefore ties up nothing of the edge's.
func TestDrainOnlyFromTheMachinesHost(t *testing.T) {
	w := newStoreWorld(t)
	port := freePort(t)
	w.rawApp("shop", port, api.StateStarted, "127.0.0.2:5432")
	w.waitListening("shop", port, 1)
	nc := w.st.Conn()
	req, _ := json.Marshal(store.DrainRequest{App: "shop", ID: "shop-m1", Wait: 200 * time.Millisecond})

	// As another host: no answer, though the wait is long over.
	_, err := nc.Request(store.DrainSubject("h-other"), req, 2*time.Second)
	if !errors.Is(err, nats.ErrTimeout) {
		t.Errorf("drain of h-ams's machine asked as h-other: %v, want no answer (a timeout)", err)
	}
	// As its host: answered after the wait, still routed.
	m, err := nc.Request(store.DrainSubject("h-ams"), req, 5*time.Second)
	if err != nil {
		t.Fatalf("drain asked by the machine's host: %v", err)
	}
	var r store.DrainReply
	if err := json.Unmarshal(m.Data, &r); err != nil || r.HostID != "h-ams" || !r.Routed {
		t.Errorf("drain answer %s (%v); want from h-ams, the machine still routed", m.Data, err)
	}
}
