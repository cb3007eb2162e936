package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/edge"
	"github.com/perchhq/perch/internal/store"
)

// TestStartRequestsNameTheirSender: another host's edge asks this host to
// start a stopped machine on perch.start.<this host>.<sender> (a host's
// NATS user publishes only with its own id there, TestHostCredential);
// the machine starts with the sender's region in its reason. A request
// naming a region that is not the sender's (per the control plane's host
// record), or from a host that does not exist, is refused and starts
// nothing.
func TestStartRequestsNameTheirSender(t *testing.T) {
	st := openStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, h := range []api.Host{{ID: "h1", Region: "iad"}, {ID: "h2", Region: "ams"}} {
		if _, err := store.Put(ctx, st.Hosts, h.ID, h); err != nil {
			t.Fatal(err)
		}
	}
	on := true
	spec := store.MachineSpec{ID: "m1", App: "zz", Region: "iad", HostID: "h1", Desired: store.DesireStopped, Generation: 1,
		Config: api.MachineConfig{Services: []api.Service{{InternalPort: 8080, Autostart: &on}}}}
	if _, err := store.Put(ctx, st.Machines, spec.Key(), spec); err != nil {
		t.Fatal(err)
	}
	h1 := &Agent{st: st, log: slog.New(slog.DiscardHandler), host: api.Host{ID: "h1", Region: "iad"}}
	go h1.serveStarts(ctx)
	h2 := &Agent{st: st, log: slog.New(slog.DiscardHandler), host: api.Host{ID: "h2", Region: "ams"}, cfg: Config{Region: "ams"}}

	desired := func() store.MachineSpec {
		sp, _, err := store.Get[store.MachineSpec](ctx, st.Machines, spec.Key())
		if err != nil {
			t.Fatal(err)
		}
		return sp
	}
	// Forged requests first: refused with the reason, the machine stays stopped.
	for _, c := range []struct{ subj, region, want string }{
		{store.StartSubject("h1", "h2"), "syd", `names region "syd"`},
		{store.StartSubject("h1", "h9"), "iad", "h9"},
	} {
		b, _ := json.Marshal(store.StartRequest{App: "zz", ID: "m1", Region: c.region})
		var msg []byte
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			m, err := st.Conn().RequestWithContext(ctx, c.subj, b)
			if err == nil {
				msg = m.Data
				break
			}
			if time.Now().After(end) { // the subscription may not be there yet
				t.Fatalf("request on %s: %v", c.subj, err)
			}
		}
		var rep store.StartReply
		if err := json.Unmarshal(msg, &rep); err != nil || !strings.Contains(rep.Error, c.want) {
			t.Errorf("request on %s naming region %s: answer %s, want an error naming %q", c.subj, c.region, msg, c.want)
		}
		if sp := desired(); sp.Desired != store.DesireStopped {
			t.Fatalf("a refused request on %s started the machine: %+v", c.subj, sp)
		}
	}
	// The real one: h2's edge asks through its starter.
	if err := (starter{a: h2}).StartMachine(ctx, edge.Target{App: "zz", MachineID: "m1", HostID: "h1", Region: "iad"}); err != nil {
		t.Fatalf("host h2's edge asking h1 to start m1: %v", err)
	}
	if sp := desired(); sp.Desired != store.DesireStarted || !strings.Contains(sp.Reason, "ams edge (autostart) of host h2") {
		t.Errorf("after h2's request: desired %s, reason %q; want started for a request at the ams edge of host h2", sp.Desired, sp.Reason)
	}
}
