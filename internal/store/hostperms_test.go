package store

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"
)

// TestHostCredential connects as host A with its own NATS user and tries,
// with the nats.go client directly, what a compromised host would: write
// host B's heartbeat, its machine's status or spec, read the TLS storage
// (the dev CA's key), the secrets, the tokens and the host credentials,
// publish B's machine's logs and B's usage, listen to others' replies.
// Each is refused with a permissions violation; A's own writes (also for
// a machine placed on it while connected) and the reads its agent and
// edge need succeed.
func TestHostCredential(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := RunEmbedded(t.TempDir(), "127.0.0.1:0", "server-secret", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	srv, err := Open(ctx, e.URL(), "server-secret", "server")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	user := func(id, region string, machines ...string) HostUser {
		bc, err := bcrypt.GenerateFromPassword([]byte("pw-"+id), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return HostUser{HostID: id, Region: region, PassBcrypt: string(bc), Machines: machines}
	}
	// Host A (iad) runs machine m2 of app1 and has volume vol_a, host B
	// (ams) m1 and vol_b.
	if err := e.SetHostUsers(user("iad-aaaa", "iad", "app1.m2", VolumeGrantPrefix+"app1.vol_a")); err != nil {
		t.Fatal(err)
	}
	// What the control plane holds.
	for kv, key := range map[jetstream.KeyValue]string{
		srv.TLS: "perch/dev-ca/perch.local/ca.key", srv.Secrets: "app1", srv.Tokens: "hash1",
		srv.HostAuth: "host.ams-bbbb", srv.Hosts: "ams-bbbb", srv.Machines: "app1.m1", srv.Status: "app1.m1",
		srv.EdgeTLS: "certificates/dev/app1/app1.crt",
	} {
		if _, err := kv.Put(ctx, key, []byte(`{"secret":"x"}`)); err != nil {
			t.Fatal(err)
		}
	}
	for _, key := range []string{"app1.vol_a", "app1.vol_b"} {
		kv := srv.Volumes
		if _, err := kv.Put(ctx, key, []byte(`{"secret":"x"}`)); err != nil {
			t.Fatal(err)
		}
	}

	// A wrong password is refused outright.
	if _, err := OpenHost(ctx, e.URL(), Auth{User: "iad-aaaa", Password: "pw-ams-bbbb"}, "a"); err == nil {
		t.Fatal("host A connected with host B's password")
	}
	a, err := OpenHost(ctx, e.URL(), Auth{User: "iad-aaaa", Password: "pw-iad-aaaa", InboxPrefix: HostInboxPrefix("iad-aaaa")}, "host-a")
	if err != nil {
		t.Fatalf("host A cannot open its buckets: %v", err)
	}
	t.Cleanup(a.Close)
	// B joins while A and the control plane are connected: both stay.
	var reconnects atomic.Int32
	a.Conn().SetReconnectHandler(func(*nats.Conn) { reconnects.Add(1) })
	if err := e.SetHostUsers(user("ams-bbbb", "ams", "app1.m1")); err != nil {
		t.Fatal(err)
	}
	errs := &violations{}
	a.Conn().SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs.add(err) })
	js := a.JetStream()
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 200*time.Millisecond) }

	// Allowed: A's statuses, autostop locks of its region, reading what
	// its edge routes by and serves (its heartbeat goes through the API).
	if _, err := a.Status.Put(ctx, "app1.m2", []byte(`{}`)); err != nil {
		t.Errorf("host A cannot write its machine's status: %v", err)
	}
	if _, err := a.Machines.Put(ctx, "app1.m2", []byte(`{"desired":"stopped"}`)); err != nil {
		t.Errorf("host A cannot record an autostop of its machine: %v", err)
	}
	// A machine placed on A while it is connected: granted at once.
	if err := e.SetHostMachines(map[string][]string{"iad-aaaa": {"app1.m2", "app1.m4", VolumeGrantPrefix + "app1.vol_a"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Status.Put(ctx, "app1.m4", []byte(`{}`)); err != nil {
		t.Errorf("host A cannot write the status of a machine placed on it after it connected: %v", err)
	}
	release, ok, err := a.TryLock(ctx, "autostop.app1.iad", time.Minute)
	if err != nil || !ok {
		t.Errorf("host A cannot take an autostop lock of its region: ok=%v err=%v", ok, err)
	} else {
		release()
	}
	if _, _, err := Get[map[string]any](ctx, a.Machines, "app1.m1"); err != nil {
		t.Errorf("host A cannot read a machine spec: %v", err)
	}
	// Session ticket keys: its own region's, not another's.
	if _, err := srv.Tickets.Put(ctx, "ams", []byte(`{"keys":[]}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Tickets.Put(ctx, "iad", []byte(`{"keys":[]}`)); err != nil {
		t.Errorf("host A cannot write its region's ticket keys: %v", err)
	}
	if _, err := a.Tickets.Get(ctx, "iad"); err != nil {
		t.Errorf("host A cannot read its region's ticket keys: %v", err)
	}
	{
		c, cancel := short()
		if _, err := a.Tickets.Get(c, "ams"); err == nil {
			t.Errorf("host A (iad) read region ams's ticket keys")
		}
		cancel()
	}
	seen := make(chan Change, 10)
	wctx, wcancel := context.WithCancel(ctx)
	go a.Watch(wctx, a.EdgeTLS, nil, func(c Change) { seen <- c })
	select {
	case c := <-seen:
		if c.All == nil || c.All["certificates/dev/app1/app1.crt"] == nil {
			t.Errorf("host A's watch of the edge certificates read %v", c)
		}
	case <-ctx.Done():
		t.Fatal("host A cannot watch the edge certificates")
	}
	wcancel()
	// Core publishes it may make: none draws a violation (checked after
	// a refused one, whose error arrives after theirs would have).
	// Requests between hosts: A asks every edge to drain and B answers;
	// B asks A to start a machine and A answers (replies to inboxes that
	// are not theirs, allowed once per request received).
	b, err := OpenHost(ctx, e.URL(), Auth{User: "ams-bbbb", Password: "pw-ams-bbbb", InboxPrefix: HostInboxPrefix("ams-bbbb")}, "host-b")
	if err != nil {
		t.Fatalf("host B cannot open its buckets: %v", err)
	}
	t.Cleanup(b.Close)
	for _, r := range []struct {
		from, to *Store
		subj     string
	}{{a, b, DrainSubject("iad-aaaa")}, {b, a, StartSubject("iad-aaaa", "ams-bbbb")}} {
		sub, err := r.to.Conn().Subscribe(r.subj, func(m *nats.Msg) { _ = m.Respond([]byte("ok")) })
		if err != nil {
			t.Fatal(err)
		}
		if err := r.to.Conn().Flush(); err != nil {
			t.Fatal(err)
		}
		if m, err := r.from.Conn().Request(r.subj, []byte("{}"), 5*time.Second); err != nil || string(m.Data) != "ok" {
			t.Errorf("request on %s between hosts: %v", r.subj, err)
		}
		_ = sub.Unsubscribe()
	}

	allowed := []string{LogSubject("app1", "iad", "m2"), LogSubject("app1", "iad", "edge"), "perch.usage.iad-aaaa", DemandSubject("iad", "iad-aaaa"), DrainSubject("iad-aaaa"), StartSubject("ams-bbbb", "iad-aaaa")}
	for _, subj := range allowed {
		if err := a.Conn().Publish(subj, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}

	// denied runs op, which must fail, and waits for the server's
	// permissions violation naming subj.
	denied := func(what, subj string, op func(context.Context) error) {
		t.Helper()
		c, cancel := short()
		start := time.Now()
		err := op(c)
		cancel()
		t.Logf("%s: %v in %v", what, err, time.Since(start))
		if err == nil {
			t.Errorf("host A could %s", what)
			return
		}
		if !errs.wait(subj, 5*time.Second) {
			t.Errorf("host A could not %s (%v), but the server reported no permissions violation for %s", what, err, subj)
		}
	}
	pub := func(subj string) func(context.Context) error {
		return func(c context.Context) error {
			if err := a.Conn().Publish(subj, []byte("forged")); err != nil {
				return err
			}
			if err := a.Conn().FlushWithContext(c); err != nil {
				return err
			}
			if errs.wait(subj, 5*time.Second) {
				return errors.New("refused")
			}
			return nil
		}
	}
	// The control plane assigns every host's subnets and mesh address
	// and alone writes perch_hosts: A can neither move its own /64 onto
	// B's nor rewrite B's.
	if _, err := srv.Hosts.Put(ctx, "iad-aaaa", []byte(`{"subnet6":"fdaa:0:1::/64","mesh_addr":"fdaa::1"}`)); err != nil {
		t.Fatal(err)
	}
	denied("claim another host's 6PN /64 in its own record", "$KV.perch_hosts.iad-aaaa", func(c context.Context) error {
		_, err := a.Hosts.Put(c, "iad-aaaa", []byte(`{"subnet6":"fdaa:0:2::/64","mesh_addr":"fdaa::2"}`))
		return err
	})
	denied("delete its own host record", "$KV.perch_hosts.iad-aaaa", func(c context.Context) error { return a.Hosts.Delete(c, "iad-aaaa") })
	denied("write host B's heartbeat", "$KV.perch_hosts.ams-bbbb", func(c context.Context) error {
		_, err := a.Hosts.Put(c, "ams-bbbb", []byte(`{"status":"down"}`))
		return err
	})
	denied("write the status of host B's machine", "$KV.perch_machine_status.app1.m1", func(c context.Context) error {
		_, err := a.Status.Put(c, "app1.m1", []byte(`{"state":"destroyed"}`))
		return err
	})
	denied("rewrite the spec of host B's machine", "$KV.perch_machines.app1.m1", func(c context.Context) error {
		_, err := a.Machines.Put(c, "app1.m1", []byte(`{"desired":"destroyed"}`))
		return err
	})
	denied("delete host B's record", "$KV.perch_hosts.ams-bbbb", func(c context.Context) error { return a.Hosts.Delete(c, "ams-bbbb") })
	denied("delete the record of host B's volume", "$KV.perch_volumes.app1.vol_b", func(c context.Context) error { return a.Volumes.Delete(c, "app1.vol_b") })
	vctx, vcancel := context.WithTimeout(ctx, 10*time.Second)
	err = a.Volumes.Delete(vctx, "app1.vol_a")
	vcancel()
	if err != nil {
		t.Errorf("host A deleting the record of its own volume: %v", err)
	}
	for _, b := range []string{BucketTLS, BucketSecrets, BucketTokens, BucketHostAuth, BucketReleases, BucketCerts, BucketAutoscale} {
		denied("open bucket "+b, "$JS.API.STREAM.INFO.KV_"+b, func(c context.Context) error { _, err := js.KeyValue(c, b); return err })
		denied("read "+b+" by a direct get", "$JS.API.DIRECT.GET.KV_"+b, func(c context.Context) error {
			_, err := a.Conn().RequestWithContext(c, "$JS.API.DIRECT.GET.KV_"+b+".$KV."+b+".>", nil)
			return err
		})
		denied("make a consumer on "+b, "$JS.API.CONSUMER.CREATE.KV_"+b, func(c context.Context) error {
			_, err := js.CreateOrUpdateConsumer(c, "KV_"+b, jetstream.ConsumerConfig{Name: "steal"})
			return err
		})
		denied("write "+b, "$KV."+b+".x", pub("$KV."+b+".x"))
	}
	denied("read a lock that is not autostop's", "$JS.API.DIRECT.GET.KV_perch_locks.$KV.perch_locks.certmagic", func(c context.Context) error {
		_, err := a.Locks.Get(c, "certmagic")
		return err
	})
	denied("take an autostop lock of another region", "$KV.perch_locks.lock.autostop.app1.ams", func(c context.Context) error {
		_, _, err := a.TryLock(c, "autostop.app1.ams", time.Minute)
		return err
	})
	denied("publish a log line of host B's machine", "perch.logs.app1.ams.m1", pub(LogSubject("app1", "ams", "m1")))
	denied("publish a log line of host B's machine as if from its own region", "perch.logs.app1.iad.m1", pub(LogSubject("app1", "iad", "m1")))
	denied("publish host B's usage", "perch.usage.ams-bbbb", pub("perch.usage.ams-bbbb"))
	denied("publish another region's demand", "perch.demand.ams.iad-aaaa", pub(DemandSubject("ams", "iad-aaaa")))
	denied("publish its region's demand as host B", "perch.demand.iad.ams-bbbb", pub(DemandSubject("iad", "ams-bbbb")))
	denied("ask host B to start a machine as host B", "perch.start.ams-bbbb.ams-bbbb", pub(StartSubject("ams-bbbb", "ams-bbbb")))
	denied("ask host B to start a machine as another host", "perch.start.ams-bbbb.ord-cccc", pub(StartSubject("ams-bbbb", "ord-cccc")))
	denied("publish a start request with no sender", "perch.start.ams-bbbb", pub("perch.start.ams-bbbb"))
	denied("ask the edges to drain as host B", "perch.drain.ams-bbbb", pub(DrainSubject("ams-bbbb")))
	for _, subj := range []string{"_INBOX.>", HostInboxPrefix("ams-bbbb") + ".>", StartSubjects("ams-bbbb"), VolumeSubject("ams-bbbb"), "perch.logs.>", "$KV.>", ">"} {
		denied("subscribe to "+subj, subj, func(c context.Context) error {
			if _, err := a.Conn().SubscribeSync(subj); err != nil {
				return err
			}
			if errs.wait(subj, 5*time.Second) {
				return errors.New("refused")
			}
			return nil
		})
	}
	for _, subj := range allowed {
		if errs.has(`publish to "` + subj + `"`) {
			t.Errorf("host A's publish to %s, which its agent makes, was refused", subj)
		}
	}
	if n := reconnects.Load(); n != 0 || !srv.Conn().IsConnected() {
		t.Errorf("reloading users cost host A %d reconnections; the control plane is connected: %v", n, srv.Conn().IsConnected())
	}
	// The control plane still sees B's record, and A's, as they were.
	rec, _, err := Get[map[string]any](ctx, srv.Hosts, "ams-bbbb")
	if err != nil || rec["status"] != nil {
		b, _ := json.Marshal(rec)
		t.Errorf("host B's record after host A's attempts: %s, %v", b, err)
	}
	rec, _, err = Get[map[string]any](ctx, srv.Hosts, "iad-aaaa")
	if err != nil || rec["subnet6"] != "fdaa:0:1::/64" || rec["mesh_addr"] != "fdaa::1" {
		b, _ := json.Marshal(rec)
		t.Errorf("host A's record after its attempts: %s, %v; want the control plane's fdaa:0:1::/64 and fdaa::1", b, err)
	}
}

// violations collects a connection's asynchronous errors.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) add(err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.errs = append(v.errs, err.Error())
}

// has says whether a permissions violation naming subj (the start of the
// quoted subject, or a longer text such as `publish to "x"`) arrived.
func (v *violations) has(subj string) bool {
	if !strings.Contains(subj, `"`) {
		subj = `"` + subj
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range v.errs {
		if strings.Contains(strings.ToLower(e), "permissions violation") && strings.Contains(e, subj) {
			return true
		}
	}
	return false
}

// wait polls for a violation naming subj until d has passed.
func (v *violations) wait(subj string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !v.has(subj) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
