package billing

import (
	"maps"
	"slices"
	"sync"
	"time"
)

// Usage is what an app (or an organisation) used in a month.
type Usage struct {
	Month string `json:"month"`
	// Cost is month to date, in US dollars; Projected runs the month's
	// average rate so far to the month's end.
	Cost      float64            `json:"cost"`
	Projected float64            `json:"projected"`
	ByRegion  map[string]float64 `json:"by_region"`
	// ByKind: "compute" (started machines), "storage" (stopped or
	// suspended root filesystems, volumes), "egress".
	ByKind         map[string]float64 `json:"by_kind"`
	StartedSeconds float64            `json:"started_seconds"`
	StoppedSeconds float64            `json:"stopped_seconds"`
	BytesOut       int64              `json:"bytes_out"`
	// ByDay is the cost of each day of the month so far ("2026-12-07"),
	// for a chart of spend over time; days without usage are absent.
	ByDay map[string]float64 `json:"by_day,omitempty"`
	// Apps, in an organisation's usage, by app name.
	Apps map[string]Usage `json:"apps,omitempty"`
	// Now is the clock's time the projection was made at.
	Now time.Time `json:"now"`
}

func newUsage(m Month) Usage {
	return Usage{Month: string(m), ByRegion: map[string]float64{}, ByKind: map[string]float64{}}
}

// add folds o into u (both of one month).
func (u *Usage) add(o Usage) {
	u.Cost += o.Cost
	u.StartedSeconds += o.StartedSeconds
	u.StoppedSeconds += o.StoppedSeconds
	u.BytesOut += o.BytesOut
	for k, v := range o.ByRegion {
		u.ByRegion[k] += v
	}
	for k, v := range o.ByKind {
		u.ByKind[k] += v
	}
	for k, v := range o.ByDay {
		if u.ByDay == nil {
			u.ByDay = map[string]float64{}
		}
		u.ByDay[k] += v
	}
}

// Ledger sums records into usage per month and app, counting each record
// once. It is the control plane's in-memory view, rebuilt from the stream
// on start.
//
// Counting once without keeping every record ID: a machine's records come
// from one host's spool in order and follow each other (the next starts
// where the last ended), and so do a host's egress records for one app.
// So the ledger keeps, per machine and per (host, app), the end of the
// last record it counted (its cursor); a record starting before it is a
// resend and is refused. Cursors of machines silent since before the
// previous month are dropped by Forget, and records of months before the
// previous one are refused as late: the ledger's memory is one time per
// machine and per (host, app) of the last two months, whatever the
// number of records.
type Ledger struct {
	prices Prices
	mu     sync.Mutex
	cursor map[string]time.Time
	// keep is the first month still open to records (Forget).
	keep Month
	apps map[Month]map[string]*Usage
	dups int
	late int
	// metered is, by app, the end of its latest machine record: spend
	// after it is not in the ledger yet.
	metered map[string]time.Time
	// days is each app's cost by day (unix day number), for billing
	// periods that do not start on the 1st.
	days map[string]map[int64]float64
}

// NewLedger makes an empty ledger pricing with p.
func NewLedger(p Prices) *Ledger {
	return &Ledger{prices: p, cursor: map[string]time.Time{}, apps: map[Month]map[string]*Usage{}, metered: map[string]time.Time{}, days: map[string]map[int64]float64{}}
}

// cursorKey names the sequence r belongs to: its machine's, or its host's
// egress for its app.
func cursorKey(r Record) string {
	if r.Kind == KindEgress {
		return "e." + r.Host + "." + r.App
	}
	return "m." + r.Machine
}

// Add counts r unless it was counted already (it starts before the end of
// the last record of its machine, or of its host and app) or its month is
// closed; it says whether it did.
func (l *Ledger) Add(r Record) bool {
	m := MonthOf(r.Start)
	if r.Kind == KindEgress {
		m = MonthOf(r.End.Add(-time.Nanosecond))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if m < l.keep {
		l.late++
		return false
	}
	key := cursorKey(r)
	if c, ok := l.cursor[key]; ok && r.Start.Before(c) {
		l.dups++
		return false
	}
	l.cursor[key] = r.End
	if l.apps[m] == nil {
		l.apps[m] = map[string]*Usage{}
	}
	u := l.apps[m][r.App]
	if u == nil {
		nu := newUsage(m)
		u = &nu
		l.apps[m][r.App] = u
	}
	c := l.prices.Cost(r)
	day := r.Start.Unix() / 86400
	if r.Kind == KindEgress {
		day = r.End.Add(-time.Nanosecond).Unix() / 86400
	}
	if l.days[r.App] == nil {
		l.days[r.App] = map[int64]float64{}
	}
	l.days[r.App][day] += c
	u.Cost += c
	u.ByRegion[r.Region] += c
	secs := r.End.Sub(r.Start).Seconds()
	switch {
	case r.Kind == KindEgress:
		u.ByKind["egress"] += c
		u.BytesOut += r.Bytes
	case r.State == "started":
		if r.End.After(l.metered[r.App]) {
			l.metered[r.App] = r.End
		}
		u.ByKind["compute"] += c
		u.StartedSeconds += secs
	default:
		u.ByKind["storage"] += c
		u.StoppedSeconds += secs
	}
	return true
}

// Between is apps' cost in the days from from up to to (both at 00:00
// UTC, or to now: the current day so far).
func (l *Ledger) Between(apps []string, from, to time.Time) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	first, last := from.Unix()/86400, to.Add(-time.Nanosecond).Unix()/86400
	total := 0.0
	for _, a := range apps {
		for d, c := range l.days[a] {
			if d >= first && d <= last {
				total += c
			}
		}
	}
	return total
}

// MeteredUntil is the end of app's latest started-machine record.
func (l *Ledger) MeteredUntil(app string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.metered[app]
}

// Duplicates is how many records were refused as already counted.
func (l *Ledger) Duplicates() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dups
}

// App is app's usage in month m, projected to the month's end from now.
func (l *Ledger) App(m Month, app string, now time.Time) Usage {
	l.mu.Lock()
	u := newUsage(m)
	if p := l.apps[m][app]; p != nil {
		u.add(*p)
	}
	first, end := m.Start().Unix()/86400, m.End().Unix()/86400
	for d, c := range l.days[app] {
		if d >= first && d < end {
			if u.ByDay == nil {
				u.ByDay = map[string]float64{}
			}
			u.ByDay[time.Unix(d*86400, 0).UTC().Format(time.DateOnly)] += c
		}
	}
	l.mu.Unlock()
	u.project(m, now)
	return u
}

// Apps is the usage of several apps (an organisation's) in month m, with
// each app's own.
func (l *Ledger) Apps(m Month, apps []string, now time.Time) Usage {
	total := newUsage(m)
	total.Apps = map[string]Usage{}
	for _, a := range apps {
		u := l.App(m, a, now)
		total.Apps[a] = u
		total.add(u)
	}
	total.project(m, now)
	return total
}

// AppNames lists the apps with usage in month m.
func (l *Ledger) AppNames(m Month) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Sorted(maps.Keys(l.apps[m]))
}

func (u *Usage) project(m Month, now time.Time) {
	u.Now = now
	start, end := m.Start(), m.End()
	switch {
	case !now.After(start):
		u.Projected = u.Cost
	case now.Before(end):
		u.Projected = u.Cost / now.Sub(start).Seconds() * end.Sub(start).Seconds()
	default:
		u.Projected = u.Cost
	}
}

// Late is how many records were refused because their month was closed.
func (l *Ledger) Late() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.late
}

// Cursors is how many sequences (machines, hosts' egress by app) the
// ledger remembers: its memory for counting once.
func (l *Ledger) Cursors() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.cursor)
}

// Forget closes the months before keep: their records are refused from
// then on, and the cursors that ended before keep and the days before it
// are dropped (the months' sums stay).
func (l *Ledger) Forget(keep Month) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if keep <= l.keep {
		return
	}
	l.keep = keep
	start := keep.Start()
	for k, end := range l.cursor {
		if end.Before(start) {
			delete(l.cursor, k)
		}
	}
	first := start.Unix() / 86400
	for _, days := range l.days {
		for d := range days {
			if d < first {
				delete(days, d)
			}
		}
	}
}
