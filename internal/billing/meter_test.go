package billing

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
)

type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *manualClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *manualClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestMeterSpoolSurvivesCutAndKill: records closed while the stream is
// unreachable stay in the spool; a meter dropped without a word (SIGKILL)
// and made again from the spool goes on from its cursors; records sent
// twice (a publish whose ack was lost) count once. The ledger's started
// seconds equal the machine's running time exactly.
func TestMeterSpoolSurvivesCutAndKill(t *testing.T) {
	clock := &manualClock{t: time.Date(2026, 12, 31, 23, 5, 0, 0, time.UTC)}
	ledger := NewLedger(DefaultPrices())
	var cut bool
	var mu sync.Mutex
	publish := func(_ context.Context, b Batch) error {
		mu.Lock()
		defer mu.Unlock()
		if cut {
			return errors.New("nats: timeout")
		}
		for _, r := range b.Records {
			ledger.Add(r)
		}
		return nil
	}
	path := filepath.Join(t.TempDir(), "meter.json")
	newMeter := func() *Meter {
		m, err := NewMeter(MeterConfig{Host: "h1", Region: "iad", Path: path, Clock: clock, Publish: publish})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	g := api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 256}
	ctx := context.Background()
	m := newMeter()
	m.Observe("a.m1", "a", "m1", "iad", g, api.StateStarted, Storage{})
	for range 3 {
		clock.add(10 * time.Minute)
		if err := m.Close(map[string]int64{"a": 1e9}); err != nil {
			t.Fatal(err)
		}
		if err := m.Send(ctx); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	cut = true
	mu.Unlock()
	for range 6 { // an hour cut off, across the month's end
		clock.add(10 * time.Minute)
		_ = m.Close(nil)
		if err := m.Send(ctx); err == nil {
			t.Fatal("send succeeded while cut off")
		}
	}
	if m.Pending() != 7 { // 6 intervals, one split at midnight
		t.Fatalf("%d records pending, want 7", m.Pending())
	}
	// SIGKILL: the meter is gone; the machine runs on for 5 minutes.
	clock.add(5 * time.Minute)
	mu.Lock()
	cut = false
	mu.Unlock()
	m = newMeter()
	if m.Pending() != 7 {
		t.Fatalf("after restart %d records pending, want 7", m.Pending())
	}
	m.Observe("a.m1", "a", "m1", "iad", g, api.StateStarted, Storage{})
	clock.add(5 * time.Minute)
	m.Observe("a.m1", "a", "m1", "iad", g, api.StateStopped, Storage{})
	clock.add(10 * time.Minute)
	if err := m.Close(nil); err != nil {
		t.Fatal(err)
	}
	pending := append([]Record(nil), m.spool.Pending...)
	if err := m.Send(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range pending { // the same records again: no effect
		if ledger.Add(r) {
			t.Fatalf("record %s counted twice", r.ID)
		}
	}
	dec := ledger.App("2026-12", "a", clock.Now())
	jan := ledger.App("2027-01", "a", clock.Now())
	if got := dec.StartedSeconds + jan.StartedSeconds; got != (100 * time.Minute).Seconds() {
		t.Errorf("started seconds %v, want %v (100 minutes)", got, (100 * time.Minute).Seconds())
	}
	if dec.StartedSeconds != 3300 || jan.StoppedSeconds != 600 {
		t.Errorf("December %v started s, want 3300; January %v stopped s, want 600", dec.StartedSeconds, jan.StoppedSeconds)
	}
	if dec.BytesOut != 3e9 {
		t.Errorf("bytes out %d, want 3e9", dec.BytesOut)
	}
}

// TestStoppedAndSuspendedMachinesAccrueStorage: a machine's hour started
// costs compute only (its rootfs is not billed while it runs); its hour
// stopped with a 2 GB writable layer and its hour suspended with 3 GB
// (layer and snapshot) cost storage only, at $0.15 per GB-month; a
// volume's GB would be billed in every state.
func TestStoppedAndSuspendedMachinesAccrueStorage(t *testing.T) {
	clock := &manualClock{t: time.Date(2026, 12, 10, 0, 0, 0, 0, time.UTC)}
	ledger := NewLedger(DefaultPrices())
	var sent []Record
	m, err := NewMeter(MeterConfig{Host: "h1", Region: "iad", Path: filepath.Join(t.TempDir(), "meter.json"), Clock: clock,
		Publish: func(_ context.Context, b Batch) error {
			for _, r := range b.Records {
				ledger.Add(r)
			}
			sent = append(sent, b.Records...)
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	g := api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 256}
	m.Observe("a.m1", "a", "m1", "iad", g, api.StateStarted, Storage{RootfsGB: 9})
	clock.add(time.Hour)
	m.Observe("a.m1", "a", "m1", "iad", g, api.StateStopped, Storage{RootfsGB: 2})
	clock.add(time.Hour)
	m.Observe("a.m1", "a", "m1", "iad", g, api.StateSuspended, Storage{RootfsGB: 3})
	clock.add(time.Hour)
	if err := m.Close(nil); err != nil {
		t.Fatal(err)
	}
	if err := m.Send(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(sent) != 3 || sent[0].RootfsGB != 0 || sent[1].RootfsGB != 2 || sent[2].RootfsGB != 3 || sent[2].State != api.StateSuspended {
		t.Fatalf("records %+v, want started (rootfs unbilled), stopped 2 GB, suspended 3 GB", sent)
	}
	u := ledger.App("2026-12", "a", clock.Now())
	perGBHour := 0.15 / PriceMonth.Hours()
	compute := DefaultPrices().RunningPerSecond(g, "iad") * 3600
	if !near(u.ByKind["storage"], 5*perGBHour) || !near(u.ByKind["compute"], compute) || u.StoppedSeconds != 7200 {
		t.Errorf("storage $%g (want $%g), compute $%g (want $%g), stopped %v s (want 7200)",
			u.ByKind["storage"], 5*perGBHour, u.ByKind["compute"], compute, u.StoppedSeconds)
	}
	vol := Record{Kind: KindMachine, Region: "iad", State: api.StateStarted, CPUs: 1, MemoryMB: 256, VolumeGB: 10,
		Start: clock.Now(), End: clock.Now().Add(time.Hour)}
	if got, want := DefaultPrices().Cost(vol), compute+10*perGBHour; !near(got, want) {
		t.Errorf("a started machine with a 10 GB volume costs $%g an hour, want $%g", got, want)
	}
}
