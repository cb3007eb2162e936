// Package billing meters machines and egress, prices them, sums usage per
// app and organisation by month, and keeps each app's monthly budget:
// alerts, suspension at the limit, resumption at the month boundary, and
// the autoscaler's Limiter. Time comes from an injectable Clock so tests
// run a month in seconds. The agent, the edge's host and the control
// plane import it; it imports only api and store.
package billing

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Clock tells the time used for metering, month boundaries and projections.
type Clock interface {
	Now() time.Time
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now is time.Now in UTC.
func (SystemClock) Now() time.Time { return time.Now().UTC() }

// FastClock runs Rate times faster than the wall clock: at the real time
// Epoch it reads Start. Processes given the same three values agree.
type FastClock struct {
	Epoch time.Time
	Start time.Time
	Rate  float64
}

// Now is Start plus the real time since Epoch times Rate.
func (c FastClock) Now() time.Time {
	return c.Start.Add(time.Duration(float64(time.Since(c.Epoch)) * c.Rate)).UTC()
}

// ClockEnv is the environment variable that gives a process a FastClock:
// "start=<RFC 3339>,epoch=<unix nanoseconds>,rate=<factor>". Tests and
// perch dev set it so the control plane and every agent share one clock.
const ClockEnv = "PERCH_CLOCK"

// ClockFromEnv is the FastClock in $PERCH_CLOCK, or SystemClock.
func ClockFromEnv() (Clock, error) {
	v := os.Getenv(ClockEnv)
	if v == "" {
		return SystemClock{}, nil
	}
	c, err := ParseFastClock(v)
	if err != nil {
		return nil, fmt.Errorf("$%s: %w", ClockEnv, err)
	}
	return c, nil
}

// ParseFastClock reads the ClockEnv form.
func ParseFastClock(v string) (FastClock, error) {
	var c FastClock
	for _, kv := range strings.Split(v, ",") {
		k, val, _ := strings.Cut(kv, "=")
		var err error
		switch k {
		case "start":
			c.Start, err = time.Parse(time.RFC3339, val)
		case "epoch":
			var n int64
			n, err = strconv.ParseInt(val, 10, 64)
			c.Epoch = time.Unix(0, n)
		case "rate":
			c.Rate, err = strconv.ParseFloat(val, 64)
		default:
			err = fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			return c, fmt.Errorf("clock %q: %w (want start=<RFC 3339>,epoch=<unix ns>,rate=<factor>)", v, err)
		}
	}
	if c.Start.IsZero() || c.Epoch.IsZero() || c.Rate <= 0 {
		return c, fmt.Errorf("clock %q: start, epoch and a positive rate are required", v)
	}
	return c, nil
}

// String is the ClockEnv form of c.
func (c FastClock) String() string {
	return fmt.Sprintf("start=%s,epoch=%d,rate=%g", c.Start.UTC().Format(time.RFC3339), c.Epoch.UnixNano(), c.Rate)
}

// RealDuration is how long virtual d takes on the wall clock.
func (c FastClock) RealDuration(d time.Duration) time.Duration {
	return time.Duration(float64(d) / c.Rate)
}

// RealUntil is how long on the wall clock until c reads t: for a
// FastClock, the clock's time to t divided by its rate. What a client
// told to come back at t (Retry-After) must wait.
func RealUntil(c Clock, t time.Time) time.Duration {
	d := t.Sub(c.Now())
	if f, ok := c.(interface {
		RealDuration(time.Duration) time.Duration
	}); ok {
		return f.RealDuration(d)
	}
	return d
}

// Month is a billing month, "2026-12".
type Month string

// MonthOf is the (UTC, anchor day 1) billing month holding t.
func MonthOf(t time.Time) Month { return Month(t.UTC().Format("2006-01")) }

// ParseMonth checks a "YYYY-MM" month.
func ParseMonth(s string) (Month, error) {
	if _, err := time.Parse("2006-01", s); err != nil {
		return "", fmt.Errorf("month %q: want YYYY-MM, like 2026-12", s)
	}
	return Month(s), nil
}

// Start is the month's first instant (UTC).
func (m Month) Start() time.Time {
	t, _ := time.Parse("2006-01", string(m))
	return t.UTC()
}

// End is the next month's first instant.
func (m Month) End() time.Time { return m.Start().AddDate(0, 1, 0) }

// Next is the following month.
func (m Month) Next() Month { return MonthOf(m.End()) }

// Prev is the month before.
func (m Month) Prev() Month { return MonthOf(m.Start().AddDate(0, -1, 0)) }

// Period is a budget's billing period: from 00:00 UTC on the anchor day
// of a month to the same day of the next. Key names it: "2026-12" when
// the anchor is the 1st, else its first day, "2026-12-15".
type Period struct {
	Start, End time.Time
	Key        string
}

// PeriodOf is the period holding t for anchor day anchor (1-28; 0 is 1).
func PeriodOf(t time.Time, anchor int) Period {
	anchor = max(1, anchor)
	t = t.UTC()
	start := time.Date(t.Year(), t.Month(), anchor, 0, 0, 0, 0, time.UTC)
	if t.Before(start) {
		start = start.AddDate(0, -1, 0)
	}
	p := Period{Start: start, End: start.AddDate(0, 1, 0), Key: start.Format("2006-01")}
	if anchor != 1 {
		p.Key = start.Format("2006-01-02")
	}
	return p
}
