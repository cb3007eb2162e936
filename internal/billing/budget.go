package billing

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// DefaultAlerts are the percentages of a budget that raise an alert.
var DefaultAlerts = []int{50, 80, 100}

// Budget is a monthly spending limit on an app or on an organisation.
type Budget struct {
	Scope   string  `json:"scope"` // "app" or "org"
	Name    string  `json:"name"`
	Monthly float64 `json:"monthly"`
	Alerts  []int   `json:"alerts"`
	// AnchorDay is the day of the month (1-28, UTC) its billing period
	// starts; 0 is the 1st.
	AnchorDay int    `json:"anchor_day,omitempty"`
	Webhook   string `json:"webhook,omitempty"`
	// Secret signs webhook bodies (HMAC-SHA256 in SignatureHeader).
	Secret string `json:"webhook_secret,omitempty"`
	// Alerted holds the percentages already alerted, by month.
	Alerted map[string][]int `json:"alerted,omitempty"`
	// Suspended is the current suspension, if any.
	Suspended *Suspended `json:"suspended,omitempty"`
	// ResumedMonth is a month in which the owner resumed the app by hand
	// (perch budget resume): it is not suspended again that month.
	ResumedMonth string    `json:"resumed_month,omitempty"`
	UpdatedAt    time.Time `json:"updated_at"`
	// Events are the budget's last alerts, suspensions and resumptions.
	Events []api.Event `json:"events,omitempty"`
}

// AddEvent appends e, keeping the last 20.
func (b *Budget) AddEvent(e api.Event) {
	b.Events = append(b.Events, e)
	if n := len(b.Events); n > 20 {
		b.Events = b.Events[n-20:]
	}
}

// BudgetRequest is the body of PUT /v1/apps/{app}/budget and
// /v1/orgs/{org}/budget.
type BudgetRequest struct {
	Monthly float64 `json:"monthly"`
	Alerts  []int   `json:"alerts,omitempty"`
	Webhook string  `json:"webhook,omitempty"`
	// AnchorDay starts the billing period on this day of the month (1-28).
	AnchorDay int `json:"anchor_day,omitempty"`
}

// Suspended is a suspension and what to bring back at its end.
type Suspended struct {
	api.Suspension
	Month string `json:"month"`
	// Machines were started when the app was suspended; resume starts them.
	Machines []SuspendedMachine `json:"machines"`
}

// SuspendedMachine is one machine a suspension stopped.
type SuspendedMachine struct {
	App    string `json:"app"`
	ID     string `json:"id"`
	Region string `json:"region"`
}

// Key is the budget's key in the budgets bucket.
func (b *Budget) Key() string { return BudgetKey(b.Scope, b.Name) }

// BudgetKey is "app.<name>" or "org.<name>".
func BudgetKey(scope, name string) string { return scope + "." + name }

// Validate checks a budget a user set, with errors saying what to fix.
func (b *Budget) Validate() error {
	switch {
	case math.IsNaN(b.Monthly) || math.IsInf(b.Monthly, 0) || b.Monthly <= 0:
		return fmt.Errorf("budget: --monthly must be a positive number of US dollars, like 50, got %v", b.Monthly)
	case b.Scope != "app" && b.Scope != "org":
		return fmt.Errorf("budget: scope must be app or org, got %q", b.Scope)
	}
	if b.AnchorDay < 0 || b.AnchorDay > 28 {
		return fmt.Errorf("budget: --anchor-day is the day of the month the billing period starts, 1 to 28, got %d", b.AnchorDay)
	}
	if len(b.Alerts) == 0 {
		b.Alerts = slices.Clone(DefaultAlerts)
	}
	slices.Sort(b.Alerts)
	b.Alerts = slices.Compact(b.Alerts)
	for _, a := range b.Alerts {
		if a < 1 || a > 100 {
			return fmt.Errorf("budget: --alerts are percentages from 1 to 100, got %d", a)
		}
	}
	if b.Webhook != "" {
		return ValidateWebhook(b.Webhook)
	}
	return nil
}

// ValidateWebhook checks a webhook URL is http or https with a host.
func ValidateWebhook(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("budget: --webhook must be an http:// or https:// URL with a host, got %q", s)
	}
	return nil
}

// Period is the budget's billing period holding t.
func (b *Budget) Period(t time.Time) Period { return PeriodOf(t, b.AnchorDay) }

// Due are the alert percentages spend has reached in the period (its Key)
// and not yet alerted, lowest first.
func (b *Budget) Due(period string, spend float64) []int {
	var due []int
	for _, a := range b.Alerts {
		if spend >= b.Monthly*float64(a)/100 && !slices.Contains(b.Alerted[period], a) {
			due = append(due, a)
		}
	}
	return due
}

// Projection says whether adding a machine costing add per second to an
// app spending burn per second now (cost so far: spent) keeps the
// period's projected spend (to end) within the budget, and if not why.
func Projection(budget, spent, burn, add float64, now, end time.Time) (ok bool, projected float64, reason string) {
	left := end.Sub(now).Seconds()
	projected = spent + (burn+add)*left
	if projected > budget {
		return false, projected, fmt.Sprintf("budget: one more machine would bring the projected spend to $%.2f by %s, over the monthly budget of $%s",
			projected, end.Format("2006-01-02"), dollars(budget))
	}
	return true, projected, ""
}

func dollars(f float64) string { return fmt.Sprintf("%g", f) }

// Alert is the webhook's JSON body (and the event's content).
type Alert struct {
	Type      string    `json:"type"` // "budget.alert" or "budget.suspended"
	Scope     string    `json:"scope"`
	Name      string    `json:"name"`
	Month     string    `json:"month"`
	Percent   int       `json:"percent"`
	Spent     float64   `json:"spent"`
	Budget    float64   `json:"budget"`
	At        time.Time `json:"at"`
	ResumesAt time.Time `json:"resumes_at,omitzero"`
}

// SignatureHeader carries "sha256=<hex HMAC-SHA256 of the body>".
const SignatureHeader = "Perch-Signature"

// Sign is the SignatureHeader value of body under secret.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a SignatureHeader value.
func Verify(secret string, body []byte, sig string) bool {
	return hmac.Equal([]byte(Sign(secret, body)), []byte(sig))
}

// Webhook timing: each attempt bounded, retried with doubling backoff.
var (
	WebhookTimeout  = 5 * time.Second
	WebhookAttempts = 5
	WebhookBackoff  = 500 * time.Millisecond
)

// SendWebhook posts a to url signed with secret, retrying with backoff
// until a 2xx, ctx ends or the attempts run out. Callers run it in its own
// goroutine: nothing waits for a webhook.
func SendWebhook(ctx context.Context, client *http.Client, url, secret string, a Alert, log *slog.Logger) error {
	body, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	wait := WebhookBackoff
	var last error
	for i := 0; i < WebhookAttempts; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
			wait *= 2
		}
		last = post(ctx, client, url, secret, body)
		if last == nil {
			return nil
		}
		log.Warn("budget webhook failed; retrying", "url", url, "attempt", i+1, "err", last)
	}
	return fmt.Errorf("webhook %s: %d attempts: %w", url, WebhookAttempts, last)
}

func post(ctx context.Context, client *http.Client, url, secret string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, WebhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(SignatureHeader, Sign(secret, body))
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}
