package ui

import (
	"context"
	"fmt"
	"html/template"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// hub fans the store's changes out to open pages: each message is the
// app that changed, or "*" for anything (hosts, budgets, a watch that
// started over).
type hub struct {
	mu   sync.Mutex
	subs map[chan string]struct{}
}

func newHub() *hub { return &hub{subs: map[chan string]struct{}{}} }

func (h *hub) subscribe() (chan string, func()) {
	ch := make(chan string, 64)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs, ch)
		h.mu.Unlock()
	}
}

func (h *hub) publish(app string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- app:
		default: // a full buffer already holds a wake-up
		}
	}
}

// debounce lets a burst of changes (a deploy writes many keys) become one
// refresh, well within the 2 s a change must take to show.
const debounce = 150 * time.Millisecond

// demandEvery is how often the demand (the map's arcs) is checked; the
// edges report every 2 s.
const demandEvery = time.Second

// events streams "changed" whenever something the page shows changed: the
// app of ?app= (or any of the session's apps), or the edges' demand.
func (u *UI) events(w http.ResponseWriter, r *http.Request, sess *session, c *api.Client) {
	ctx := r.Context()
	app := r.URL.Query().Get("app")
	if app != "" {
		if _, err := c.GetApp(ctx, app); err != nil {
			u.apiError(w, r, err)
			return
		}
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		u.errorPage(w, r, http.StatusInternalServerError, "streaming is not supported here")
		return
	}
	ch, unsub := u.hub.subscribe()
	defer unsub()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 1000\n\n")
	fl.Flush()

	expire := time.NewTimer(sess.Expires.Sub(u.now()))
	defer expire.Stop()
	tick := time.NewTicker(demandEvery)
	defer tick.Stop()
	var fire <-chan time.Time
	lastDemand := u.demandSig(ctx, c, app)
	n := 0
	send := func() bool {
		n++
		_, err := fmt.Fprintf(w, "event: changed\ndata: %d\n\n", n)
		fl.Flush()
		return err == nil
	}
	// A page (re)connecting may have missed changes while it had no
	// stream: it refreshes once at the start.
	if !send() {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-u.closing:
			return
		case <-expire.C:
			fmt.Fprint(w, "event: expired\ndata: log in again\n\n")
			fl.Flush()
			return
		case a := <-ch:
			if (app == "" || a == app || a == "*") && fire == nil {
				fire = time.After(debounce)
			}
		case <-fire:
			fire = nil
			if !send() {
				return
			}
		case <-tick.C:
			if sig := u.demandSig(ctx, c, app); sig != lastDemand {
				lastDemand = sig
				if !send() {
					return
				}
			}
		}
	}
}

// demandSig summarises the demand the map draws, rounded so that noise
// does not redraw it every second.
func (u *UI) demandSig(ctx context.Context, c *api.Client, app string) string {
	if u.cfg.Demand == nil {
		return ""
	}
	apps := []string{app}
	if app == "" {
		as, err := c.ListApps(ctx)
		if err != nil {
			return ""
		}
		apps = apps[:0]
		for _, a := range as {
			apps = append(apps, a.Name)
		}
	}
	var parts []string
	for _, a := range apps {
		for origin, d := range u.cfg.Demand(a) {
			for served, share := range d.ServedBy {
				parts = append(parts, fmt.Sprintf("%s>%s:%.0f", origin, served, d.RPS*share))
			}
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

var (
	machineIDRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	logTpl      = template.Must(template.New("line").Parse(`<div class="logline"><time>{{.Timestamp.UTC.Format "15:04:05"}}</time> <span class="reg">{{.Region}}</span> <span class="mid">{{.MachineID}}</span> <span class="msg">{{.Message}}</span></div>`))
)

// logStream is the app's log tail as server-sent events of HTML lines
// ("log"), filtered by ?region= and ?machine=.
func (u *UI) logStream(w http.ResponseWriter, r *http.Request, sess *session, c *api.Client) {
	ctx := r.Context()
	app := r.PathValue("app")
	q := r.URL.Query()
	region, machine := q.Get("region"), q.Get("machine")
	if region != "" {
		if _, ok := u.cfg.World.Lookup(region); !ok {
			u.errorPage(w, r, http.StatusBadRequest, fmt.Sprintf("There is no region %q; pick one from the list.", region))
			return
		}
	}
	if machine != "" && !machineIDRE.MatchString(machine) {
		u.errorPage(w, r, http.StatusBadRequest, fmt.Sprintf("%q is not a machine id; pick one from the list.", machine))
		return
	}
	if _, err := c.GetApp(ctx, app); err != nil {
		u.apiError(w, r, err)
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		u.errorPage(w, r, http.StatusInternalServerError, "streaming is not supported here")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n")
	fl.Flush()
	ctx, cancel := context.WithDeadline(ctx, sess.Expires)
	defer cancel()
	go func() {
		select {
		case <-u.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := c.Logs(ctx, app, api.LogOptions{Follow: true, Region: region, Machine: machine, Lines: 50}, func(l api.LogLine) error {
		var b strings.Builder
		l.Message = strings.ReplaceAll(strings.TrimRight(l.Message, "\n"), "\n", " ")
		if err := logTpl.Execute(&b, l); err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "event: log\ndata: %s\n\n", b.String()); err != nil {
			return err
		}
		fl.Flush()
		return nil
	})
	if err != nil && ctx.Err() == nil {
		u.log.Debug("log stream ended", "app", app, "err", err)
	}
}
