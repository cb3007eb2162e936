package billing

import (
	"context"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

func TestDefaultPricesFollowFly(t *testing.T) {
	p := DefaultPrices()
	month := PriceMonth.Seconds()
	if got := p.RunningPerSecond(api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 256}, "iad") * month; !near(got, 1.94) {
		t.Errorf("shared-cpu-1x 256 MB a month = %v, want 1.94", got)
	}
	if got := p.RunningPerSecond(api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 1024}, "ams") * month; !near(got, 1.94+0.75*5) {
		t.Errorf("shared-cpu-1x 1 GB a month = %v, want 5.69", got)
	}
	egress := Record{Kind: KindEgress, Region: "ams", Bytes: 10e9}
	if got := p.Cost(egress); !near(got, 0.20) {
		t.Errorf("10 GB out of ams = %v, want 0.20", got)
	}
	egress.Region = "sin"
	if got := p.Cost(egress); !near(got, 0.40) {
		t.Errorf("10 GB out of sin = %v, want 0.40", got)
	}
}

func TestParsePrices(t *testing.T) {
	good := `
memory_per_gb = 4.0
[sizes.shared-cpu-1x]
monthly = 2.5
memory_mb = 256
[regions.iad]
multiplier = 1.0
egress_per_gb = 0.02
[regions.ams]
multiplier = 1.2
egress_per_gb = 0.03
`
	p, err := ParsePrices([]byte(good), []string{"iad", "ams"})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.RunningPerSecond(api.Guest{CPUs: 1, MemoryMB: 256}, "ams") * PriceMonth.Seconds(); !near(got, 3.0) {
		t.Errorf("ams shared-cpu-1x = %v, want 2.5 * 1.2", got)
	}
	for _, c := range []struct{ file, want string }{
		{"[sizes.tiny-1x]\nmonthly = 1\nmemory_mb = 256\n", `unknown size "tiny-1x"`},
		{good, "no price for region(s) sin: add [regions.sin]"},
		{"[regions.iad]\nmultiplier = -1\n", "multiplier must be > 0"},
		{"bogus = 1\n", "unknown key"},
		{"[regions.zzz]\nmultiplier = 1.0\n[regions.\"*\"]\nmultiplier = 1.0\n", `unknown region "zzz"`},
		{"[sizes.shared-cpu-1x]\nmonthly = \"cheap\"\n", "line 2"},
	} {
		_, err := ParsePrices([]byte(c.file), []string{"iad", "ams", "sin"})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParsePrices(%q) = %v, want an error containing %q", c.file, err, c.want)
		}
	}
}

func TestBudgetValidate(t *testing.T) {
	for _, c := range []struct {
		b    Budget
		want string
	}{
		{Budget{Scope: "app", Monthly: -5}, "positive number"},
		{Budget{Scope: "app", Monthly: math.NaN()}, "positive number"},
		{Budget{Scope: "app", Monthly: 5, Webhook: "ftp://x/y"}, "http:// or https://"},
		{Budget{Scope: "app", Monthly: 5, Webhook: "example.com/hook"}, "http:// or https://"},
		{Budget{Scope: "app", Monthly: 5, Alerts: []int{0}}, "1 to 100"},
	} {
		if err := c.b.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want %q", c.b, err, c.want)
		}
	}
	b := Budget{Scope: "app", Monthly: 10, Webhook: "https://hooks.example/x"}
	if err := b.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := b.Due("2026-12", 8.5); len(got) != 2 || got[0] != 50 || got[1] != 80 {
		t.Errorf("Due at 85%% = %v, want [50 80]", got)
	}
	b.Alerted = map[string][]int{"2026-12": {50}}
	if got := b.Due("2026-12", 10); len(got) != 2 || got[0] != 80 {
		t.Errorf("Due at 100%% after 50 = %v, want [80 100]", got)
	}
}

func TestLedgerCountsEachRecordOnce(t *testing.T) {
	l := NewLedger(DefaultPrices())
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	r := Record{Kind: KindMachine, App: "a", Region: "iad", Machine: "m1", State: "started", CPUs: 1, MemoryMB: 256,
		Start: start, End: start.Add(PriceMonth / 2)}
	r.ID = MachineRecordID(r.Machine, r.Start)
	if !l.Add(r) || l.Add(r) {
		t.Fatal("the same record was counted twice or not at all")
	}
	u := l.App("2026-12", "a", start.Add(PriceMonth/2))
	if !near(u.Cost, 0.97) || u.StartedSeconds != (PriceMonth/2).Seconds() || l.Duplicates() != 1 {
		t.Errorf("usage %+v, dups %d; want $0.97 over half a price month, 1 duplicate", u, l.Duplicates())
	}
	if want := 0.97 / 15 * 31; !near(u.Projected, want) {
		t.Errorf("projected %v, want %v", u.Projected, want)
	}
}

func TestSplitAtMonthBoundary(t *testing.T) {
	end := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	r := Record{ID: "m.x.1", Kind: KindMachine, Start: end.Add(-time.Hour), End: end.Add(2 * time.Hour)}
	parts := Split(r)
	if len(parts) != 2 || !parts[0].End.Equal(end) || !parts[1].Start.Equal(end) || parts[1].ID != "m.x.1.1" || parts[0].ID != "m.x.1" {
		t.Fatalf("Split = %+v", parts)
	}
	if MonthOf(parts[0].Start) != "2026-12" || MonthOf(parts[1].Start) != "2027-01" {
		t.Error("pieces in the wrong months")
	}
}

func TestProjection(t *testing.T) {
	now := time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC) // one day left
	perDay := 1.0 / 86400
	end := MonthOf(now).End()
	if ok, _, _ := Projection(10, 5, 2*perDay, perDay, now, end); !ok {
		t.Error("5 + 3 a day for a day = 8 refused under 10")
	}
	ok, p, why := Projection(10, 5, 4*perDay, 2*perDay, now, end)
	if ok || !near(p, 11) || !strings.Contains(why, "$11.00") || !strings.Contains(why, "$10") {
		t.Errorf("5 + 6 = 11 over 10: ok %v, projected %v, %q", ok, p, why)
	}
}

func TestFastClock(t *testing.T) {
	c := FastClock{Epoch: time.Now(), Start: time.Date(2026, 12, 19, 0, 0, 0, 0, time.UTC), Rate: 86400}
	back, err := ParseFastClock(c.String())
	if err != nil || !back.Start.Equal(c.Start) || back.Rate != c.Rate || !back.Epoch.Equal(c.Epoch) {
		t.Fatalf("round trip %v: %+v %v", c.String(), back, err)
	}
	if _, err := ParseFastClock("start=2026-12-01T00:00:00Z,rate=0"); err == nil {
		t.Error("a clock without epoch and rate accepted")
	}
	if d := c.Now().Sub(c.Start); d < 0 || d > 24*time.Hour*30 {
		t.Errorf("fast clock moved %v", d)
	}
}

func TestWebhookSignedAndRetried(t *testing.T) {
	var calls atomic.Int32
	var sigOK atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if calls.Add(1) < 3 {
			http.Error(w, "not yet", http.StatusInternalServerError)
			return
		}
		sigOK.Store(Verify("s3cret", body, r.Header.Get(SignatureHeader)) && !Verify("other", body, r.Header.Get(SignatureHeader)))
	}))
	defer srv.Close()
	old := WebhookBackoff
	WebhookBackoff = 10 * time.Millisecond
	defer func() { WebhookBackoff = old }()
	err := SendWebhook(context.Background(), srv.Client(), srv.URL, "s3cret", Alert{Type: "budget.alert", Percent: 50}, slog.New(slog.DiscardHandler))
	if err != nil || calls.Load() != 3 || !sigOK.Load() {
		t.Fatalf("err %v, calls %d, signature ok %v; want success on the third call with a valid signature", err, calls.Load(), sigOK.Load())
	}
}

func TestPeriodsAndDays(t *testing.T) {
	at := time.Date(2026, 12, 10, 5, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		anchor     int
		start, key string
	}{
		{0, "2026-12-01", "2026-12"}, {1, "2026-12-01", "2026-12"},
		{10, "2026-12-10", "2026-12-10"}, {15, "2026-11-15", "2026-11-15"},
	} {
		p := PeriodOf(at, c.anchor)
		if p.Start.Format("2006-01-02") != c.start || p.Key != c.key || !p.End.Equal(p.Start.AddDate(0, 1, 0)) {
			t.Errorf("PeriodOf(%s, %d) = %+v, want start %s key %s", at, c.anchor, p, c.start, c.key)
		}
	}
	l := NewLedger(DefaultPrices())
	start := time.Date(2026, 12, 14, 12, 0, 0, 0, time.UTC)
	r := Record{ID: "m.x.1", Kind: KindMachine, App: "a", Region: "iad", State: "started", CPUs: 1, MemoryMB: 256, Start: start, End: start.Add(48 * time.Hour)}
	for _, piece := range Split(r) {
		l.Add(piece)
	}
	day := DefaultPrices().RunningPerSecond(api.Guest{CPUs: 1, MemoryMB: 256}, "iad") * 86400
	p := PeriodOf(start.Add(48*time.Hour), 15)
	if got := l.Between([]string{"a"}, p.Start, start.Add(48*time.Hour)); !near(got, 1.5*day) {
		t.Errorf("cost since the 15th = %v, want a day and a half's %v", got, 1.5*day)
	}
	if got := l.App("2026-12", "a", start).Cost; !near(got, 2*day) {
		t.Errorf("December = %v, want two days' %v", got, 2*day)
	}
}

// TestUsageByDay: a month's usage carries each day's cost (the
// dashboard's spend over time), a record across midnight split between
// its days, a record of another month not in it, and an organisation's
// days the sum of its apps'.
func TestUsageByDay(t *testing.T) {
	l := NewLedger(DefaultPrices())
	day := DefaultPrices().RunningPerSecond(api.Guest{CPUs: 1, MemoryMB: 256}, "iad") * 86400
	add := func(app string, start time.Time, d time.Duration) {
		r := Record{Kind: KindMachine, App: app, Machine: app + "-m", Region: "iad", State: "started", CPUs: 1, MemoryMB: 256, Start: start, End: start.Add(d)}
		r.ID = MachineRecordID(r.Machine, r.Start)
		for _, piece := range Split(r) {
			l.Add(piece)
		}
	}
	add("a", time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC), 24*time.Hour) // November
	add("a", time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC), 12*time.Hour) // 6 h on the 3rd, 6 h on the 4th
	add("b", time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC), 24*time.Hour)
	now := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	u := l.App("2026-12", "a", now)
	if len(u.ByDay) != 2 || !near(u.ByDay["2026-12-03"], day/4) || !near(u.ByDay["2026-12-04"], day/4) {
		t.Errorf("a's December by day: %v, want a quarter day's %v on the 3rd and the 4th", u.ByDay, day/4)
	}
	if nov := l.App("2026-11", "a", now); len(nov.ByDay) != 1 || !near(nov.ByDay["2026-11-30"], day) {
		t.Errorf("a's November by day: %v, want a day's %v on the 30th", nov.ByDay, day)
	}
	org := l.Apps("2026-12", []string{"a", "b"}, now)
	if len(org.ByDay) != 2 || !near(org.ByDay["2026-12-04"], day*1.25) || !near(org.ByDay["2026-12-03"]+org.ByDay["2026-12-04"], org.Cost) {
		t.Errorf("the organisation's December by day: %v (cost %v), want the apps' days summed", org.ByDay, org.Cost)
	}
}

// TestLedgerMemoryIsBoundedAndCountsOnce: 3 machines' records over two
// months (a record every 10 s, 17,000 in all), each batch sent twice and
// some records again much later, count once, and a ledger rebuilt from the
// same sequence (a restart) agrees; the ledger remembers one cursor per
// machine, not one ID per record; once the month before the previous is
// closed, its records are refused as late and the silent machine's cursor
// goes.
func TestLedgerMemoryIsBoundedAndCountsOnce(t *testing.T) {
	start := time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC)
	var stream []Record // what the stream holds, resends included
	var want float64
	p := DefaultPrices()
	for _, mach := range []string{"m1", "m2", "m3"} {
		var batch []Record
		at := start
		n := 5700
		if mach == "m3" {
			n = 100 // silent after November
		}
		for range n {
			r := Record{Kind: KindMachine, App: "a", Region: "iad", Machine: mach, State: "started", CPUs: 1, MemoryMB: 256,
				Start: at, End: at.Add(10 * time.Second)}
			r.ID = MachineRecordID(mach, r.Start)
			for _, piece := range Split(r) {
				batch = append(batch, piece)
				want += p.Cost(piece)
			}
			at = r.End
			if len(batch) == 50 {
				stream = append(stream, batch...)
				stream = append(stream, batch...) // a resend after a lost ack
				batch = nil
			}
		}
		stream = append(stream, batch...)
	}
	stream = append(stream, stream[:200]...) // a spool replayed much later
	count := func() (*Ledger, float64) {
		l := NewLedger(p)
		for _, r := range stream {
			l.Add(r)
		}
		return l, l.App("2026-11", "a", start).Cost + l.App("2026-12", "a", start).Cost
	}
	l, got := count()
	if !near(got, want) {
		t.Errorf("counted $%.6f, want $%.6f (each record once)", got, want)
	}
	if _, again := count(); again != got {
		t.Errorf("a rebuilt ledger counted $%.6f, the first $%.6f", again, got)
	}
	if l.Cursors() != 3 {
		t.Errorf("the ledger remembers %d cursors for 3 machines' %d records", l.Cursors(), len(stream))
	}
	l.Forget(Month("2027-01").Prev()) // January: November is closed
	if l.Cursors() != 2 {
		t.Errorf("%d cursors after closing November, want 2 (m3 forgotten)", l.Cursors())
	}
	nov := l.App("2026-11", "a", start).Cost
	late := Record{ID: "m.m3.late", Kind: KindMachine, App: "a", Region: "iad", Machine: "m3", State: "started", CPUs: 1, MemoryMB: 256,
		Start: start.Add(time.Minute), End: start.Add(2 * time.Minute)}
	if l.Add(late) || l.Late() != 1 || l.App("2026-11", "a", start).Cost != nov {
		t.Errorf("a record of a closed month was counted (late %d)", l.Late())
	}
}
