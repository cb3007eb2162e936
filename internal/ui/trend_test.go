package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/billing"
)

// TestSpendOverTime: usage records a host sends for the month so far
// (two days of a machine, ending now) show on the app page as spend over
// time: a point per day of the month so far, each day's own cost, the
// running total reaching the month to date, the projection to the
// month's end and the budget line; the dashboard draws the
// organisation's the same way.
func TestSpendOverTime(t *testing.T) {
	w := startWorld(t, "ams")
	ctx := context.Background()
	org := w.orgClient()
	if _, err := org.CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	m := w.machine("web", "ams", api.StateStarted)
	if err := org.PutBudget(ctx, "app", "web", billing.BudgetRequest{Monthly: 50}, nil); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	monthStart := billing.MonthOf(now).Start()
	start := now.Add(-48 * time.Hour)
	if start.Before(monthStart) {
		start = monthStart // the 1st or 2nd of the month: what there is of it
	}
	rec := billing.Record{Kind: billing.KindMachine, App: "web", Region: "ams", Machine: m.ID, State: api.StateStarted,
		CPUKind: "shared", CPUs: 1, MemoryMB: 256, Start: start, End: now}
	rec.ID = billing.MachineRecordID(m.ID, start)
	data, _ := json.Marshal(billing.Batch{Host: w.hosts["ams"], Records: billing.Split(rec)})
	if _, err := w.srv.Store().JetStream().Publish(ctx, billing.SubjectPrefix+w.hosts["ams"], data); err != nil {
		t.Fatal(err)
	}
	var us billing.Usage
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := org.Usage(ctx, "app", "web", "", &us)
		if err == nil && us.Cost > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the usage records were not counted within 20 s: %+v %v", us, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(us.ByDay) == 0 {
		t.Fatalf("usage of the month has no days: %+v", us)
	}

	c := browser(t)
	login(t, c, w.srv.URL(), w.orgTok)
	p := get(t, c, w.srv.URL()+"/ui/apps/web")
	if p.status != http.StatusOK {
		t.Fatalf("app page: %d", p.status)
	}
	svg := regexp.MustCompile(`(?s)<svg class="trend".*?</svg>`).FindString(p.body)
	if svg == "" {
		t.Fatalf("the app page has no spend-over-time chart")
	}
	days := regexp.MustCompile(`data-day="([0-9-]+)"[^>]*><title>[^:]+: \$([0-9.]+) that day, \$([0-9.]+) so far`).FindAllStringSubmatch(svg, -1)
	if want := now.Day(); len(days) != want {
		t.Errorf("%d days on the chart, want %d (the month so far)", len(days), want)
	}
	for _, d := range days {
		want := fmt.Sprintf("%.2f", us.ByDay[d[1]])
		if d[2] != want {
			t.Errorf("%s on the chart: $%s that day, want $%s", d[1], d[2], want)
		}
	}
	if n := len(days); n > 0 && days[n-1][3] != fmt.Sprintf("%.2f", us.Cost) {
		t.Errorf("the chart's running total ends at $%s, want the month to date $%.2f", days[n-1][3], us.Cost)
	}
	for _, want := range []string{fmt.Sprintf("$%.2f projected", us.Projected), `class="budget"`, "budget $50.00", `class="proj"`} {
		if !strings.Contains(svg, want) {
			t.Errorf("the chart lacks %q:\n%s", want, svg)
		}
	}
	if d := get(t, c, w.srv.URL()+"/ui/"); !strings.Contains(d.body, `<svg class="trend"`) || !strings.Contains(d.body, fmt.Sprintf("$%.2f so far", us.Cost)) {
		t.Errorf("the dashboard has no spend-over-time chart of the organisation with $%.2f so far", us.Cost)
	}
}
