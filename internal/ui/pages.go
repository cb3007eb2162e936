package ui

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/billing"
	"github.com/perchhq/perch/internal/store"
)

// maxAppName bounds an app name the dashboard asks the API about; the
// API's own rule is shorter still.
const maxAppName = 63

// render executes page name with data; a full page (not an htmx fragment
// request for a panel) is wrapped in the layout.
func (u *UI) render(w http.ResponseWriter, r *http.Request, status int, name string, sess *session, data any) {
	var body bytes.Buffer
	if err := u.tpl.ExecuteTemplate(&body, name, data); err != nil {
		u.log.Error("dashboard template", "name", name, "err", err)
		http.Error(w, "the dashboard could not draw this page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if strings.HasPrefix(name, "panel-") {
		w.WriteHeader(status)
		w.Write(body.Bytes())
		return
	}
	var page bytes.Buffer
	err := u.tpl.ExecuteTemplate(&page, "layout", map[string]any{"Body": template.HTML(body.String()), "Sess": sess, "Title": titleOf(name, data)})
	if err != nil {
		u.log.Error("dashboard layout", "err", err)
		http.Error(w, "the dashboard could not draw this page", http.StatusInternalServerError)
		return
	}
	w.WriteHeader(status)
	w.Write(page.Bytes())
}

func titleOf(name string, data any) string {
	if m, ok := data.(map[string]any); ok {
		if t, ok := m["Title"].(string); ok {
			return t
		}
	}
	return name
}

// errorPage is every refusal and failure the dashboard shows: the status,
// and a sentence saying what was wrong and what to do.
func (u *UI) errorPage(w http.ResponseWriter, r *http.Request, status int, msg string) {
	sess, _ := u.sessionOf(r)
	name := "error"
	if r.Header.Get("HX-Request") != "" {
		// htmx shows it in the page's message area, not in the panel.
		name = "panel-error"
		w.Header().Set("HX-Retarget", "#flash")
		w.Header().Set("HX-Reswap", "innerHTML")
	}
	u.render(w, r, status, name, sess, map[string]any{"Title": http.StatusText(status), "Status": status, "Message": msg})
}

// apiError shows an API error: a 404 or a 403 both read as "not found"
// (another organisation's app is not shown to exist), a 401 sends the
// user to log in again.
func (u *UI) apiError(w http.ResponseWriter, r *http.Request, err error) {
	var he *api.HTTPError
	if errors.As(err, &he) {
		switch he.StatusCode {
		case http.StatusUnauthorized:
			setCookie(w, r, sessionCookie, "", -1)
			w.Header().Set("HX-Redirect", "/ui/login")
			u.errorPage(w, r, http.StatusUnauthorized, "Your token is no longer accepted ("+he.Message+"): log in again.")
		case http.StatusForbidden:
			if r.Method == http.MethodPost {
				// An action the token may not take (read-only, another
				// region): say why.
				u.errorPage(w, r, http.StatusForbidden, "Refused: "+he.Message)
				return
			}
			// Not the API's wording, which would tell that another
			// organisation's app exists.
			u.errorPage(w, r, http.StatusNotFound, "Not found: nothing here that your token may see.")
		case http.StatusNotFound:
			u.errorPage(w, r, http.StatusNotFound, "Not found: "+he.Message)
		default:
			if he.StatusCode >= 500 {
				u.errorPage(w, r, http.StatusBadGateway, "The control plane failed: "+he.Message)
				return
			}
			u.errorPage(w, r, he.StatusCode, he.Message)
		}
		return
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	u.log.Warn("dashboard API call failed", "err", err)
	u.errorPage(w, r, http.StatusBadGateway, "The control plane did not answer: "+err.Error())
}

// appName reads {app}, refusing names no app can have before any lookup.
func (u *UI) appName(w http.ResponseWriter, r *http.Request) (string, bool) {
	app := r.PathValue("app")
	if len(app) > maxAppName {
		u.errorPage(w, r, http.StatusNotFound, fmt.Sprintf("Not found: no app is called %q… (app names are at most %d characters).", app[:40], maxAppName))
		return "", false
	}
	return app, true
}

// appSummary is one app in the list.
type appSummary struct {
	App      api.App
	States   map[string]int
	Regions  []string
	Cost     float64
	Budget   float64
	Err      string
	Machines int
}

func (u *UI) dashboard(w http.ResponseWriter, r *http.Request, sess *session, c *api.Client) {
	data, err := u.appsData(r.Context(), sess, c)
	if err != nil {
		u.apiError(w, r, err)
		return
	}
	data["Title"] = "Perch"
	data["Map"] = u.mapFor(r.Context(), c, "")
	u.render(w, r, http.StatusOK, "dashboard", sess, data)
}

func (u *UI) mapPanel(w http.ResponseWriter, r *http.Request, sess *session, c *api.Client) {
	app := r.URL.Query().Get("app")
	if len(app) > maxAppName {
		u.errorPage(w, r, http.StatusNotFound, "no such app")
		return
	}
	if app != "" {
		if _, err := c.GetApp(r.Context(), app); err != nil {
			u.apiError(w, r, err)
			return
		}
	}
	u.render(w, r, http.StatusOK, "panel-map", sess, map[string]any{"Map": u.mapFor(r.Context(), c, app)})
}

func (u *UI) appsPanel(w http.ResponseWriter, r *http.Request, sess *session, c *api.Client) {
	data, err := u.appsData(r.Context(), sess, c)
	if err != nil {
		u.apiError(w, r, err)
		return
	}
	u.render(w, r, http.StatusOK, "panel-apps", sess, data)
}

func (u *UI) appsData(ctx context.Context, sess *session, c *api.Client) (map[string]any, error) {
	apps, err := c.ListApps(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(apps, func(a, b api.App) int { return strings.Compare(a.Name, b.Name) })
	var list []appSummary
	var total, projected float64
	byDay, month, now := map[string]float64{}, "", time.Time{}
	for _, a := range apps {
		s := appSummary{App: a, States: map[string]int{}}
		ms, err := c.ListMachines(ctx, a.Name, "")
		if err != nil {
			s.Err = err.Error()
		}
		regions := map[string]bool{}
		for _, m := range ms {
			s.States[m.State]++
			regions[m.Region] = true
		}
		s.Machines = len(ms)
		for r := range regions {
			s.Regions = append(s.Regions, r)
		}
		slices.Sort(s.Regions)
		var us billing.Usage
		if c.Usage(ctx, "app", a.Name, "", &us) == nil {
			s.Cost = us.Cost
			total += us.Cost
			projected += us.Projected
			month, now = us.Month, us.Now
			for d, v := range us.ByDay {
				byDay[d] += v
			}
		}
		var b billing.Budget
		if c.GetBudget(ctx, "app", a.Name, &b) == nil {
			s.Budget = b.Monthly
		}
		list = append(list, s)
	}
	data := map[string]any{"Apps": list, "Total": total, "Projected": projected}
	if sess.Org != "" {
		var b billing.Budget
		if c.GetBudget(ctx, "org", sess.Org, &b) == nil {
			data["OrgBudget"] = &b
		}
		data["Chart"] = spendChart(total, projected, budgetOf(data["OrgBudget"]), nil)
		if month != "" {
			data["Trend"] = spendTrend(month, byDay, now, projected, budgetOf(data["OrgBudget"]))
		}
	}
	return data, nil
}

func budgetOf(v any) float64 {
	if b, ok := v.(*billing.Budget); ok && b != nil {
		return b.Monthly
	}
	return 0
}

// machineRow is one line of the machines table.
type machineRow struct {
	api.Machine
	Runtime string
	Release string
	Health  string
	Age     string
}

func (u *UI) machinesData(ctx context.Context, c *api.Client, app string) ([]machineRow, error) {
	ms, err := c.ListMachines(ctx, app, "")
	if err != nil {
		return nil, err
	}
	slices.SortFunc(ms, func(a, b api.Machine) int {
		return cmp.Or(strings.Compare(a.Region, b.Region), a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
	rows := make([]machineRow, 0, len(ms))
	for _, m := range ms {
		row := machineRow{Machine: m, Runtime: "runc", Release: m.Config.Metadata["perch_release"], Age: age(u.now().Sub(m.CreatedAt))}
		if m.Config.Guest.Runtime != "" {
			row.Runtime = m.Config.Guest.Runtime
		}
		row.Health = health(m)
		rows = append(rows, row)
	}
	return rows, nil
}

func health(m api.Machine) string {
	var bad []string
	for _, ch := range m.Checks {
		if ch.Status != "passing" {
			bad = append(bad, ch.Name+" "+ch.Status)
		}
	}
	switch {
	case len(bad) > 0:
		return strings.Join(bad, ", ")
	case m.State != api.StateStarted:
		return "–"
	case m.Ready && len(m.Checks) > 0:
		return fmt.Sprintf("%d checks passing", len(m.Checks))
	case m.Ready:
		return "ready"
	default:
		return cmp.Or(m.NotReady, "not ready")
	}
}

func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

func (u *UI) appPage(w http.ResponseWriter, r *http.Request, sess *session, c *api.Client) {
	app, ok := u.appName(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	a, err := c.GetApp(ctx, app)
	if err != nil {
		u.apiError(w, r, err)
		return
	}
	rows, err := u.machinesData(ctx, c, app)
	if err != nil {
		u.apiError(w, r, err)
		return
	}
	details := u.detailsData(ctx, c, app)
	var regions []string
	for _, m := range rows {
		if !slices.Contains(regions, m.Region) {
			regions = append(regions, m.Region)
		}
	}
	u.render(w, r, http.StatusOK, "app", sess, map[string]any{
		"Title": a.Name + " · Perch", "App": a, "Machines": rows, "Details": details, "Sess": sess,
		"Map": u.mapFor(ctx, c, app), "Regions": regions,
	})
}

func (u *UI) machinesPanel(w http.ResponseWriter, r *http.Request, sess *session, c *api.Client) {
	app, ok := u.appName(w, r)
	if !ok {
		return
	}
	rows, err := u.machinesData(r.Context(), c, app)
	if err != nil {
		u.apiError(w, r, err)
		return
	}
	// After an action, the message area's last refusal goes.
	cleared := r.Method == http.MethodPost
	u.render(w, r, http.StatusOK, "panel-machines", sess, map[string]any{"App": api.App{Name: app}, "Machines": rows, "Sess": sess, "ClearFlash": cleared})
}

// details are the app page's lower panels.
type details struct {
	App       string
	Releases  []api.Release
	Autoscale *api.Autoscale
	Certs     []api.Certificate
	Usage     *billing.Usage
	Budget    *billing.Budget
	Chart     template.HTML
	Trend     template.HTML // spend over the month
	Errors    []string
}

func (u *UI) detailsData(ctx context.Context, c *api.Client, app string) details {
	d := details{App: app}
	note := func(what string, err error) {
		if err != nil && !api.IsNotFound(err) {
			d.Errors = append(d.Errors, what+": "+err.Error())
		}
	}
	rs, err := c.ListReleases(ctx, app)
	note("releases", err)
	slices.SortFunc(rs, func(a, b api.Release) int { return b.Version - a.Version })
	if len(rs) > 10 {
		rs = rs[:10]
	}
	d.Releases = rs
	as, err := c.GetAutoscale(ctx, app)
	note("autoscaler", err)
	if as != nil {
		slices.SortFunc(as.Decisions, func(a, b api.AutoscaleDecision) int { return b.At.Compare(a.At) })
		if len(as.Decisions) > 10 {
			as.Decisions = as.Decisions[:10]
		}
	}
	d.Autoscale = as
	d.Certs, err = c.ListCertificates(ctx, app)
	note("certificates", err)
	var us billing.Usage
	if err := c.Usage(ctx, "app", app, "", &us); err == nil {
		d.Usage = &us
	} else {
		note("usage", err)
	}
	var b billing.Budget
	if err := c.GetBudget(ctx, "app", app, &b); err == nil {
		d.Budget = &b
	} else {
		note("budget", err)
	}
	if d.Usage != nil {
		var budget float64
		if d.Budget != nil {
			budget = d.Budget.Monthly
		}
		d.Chart = spendChart(d.Usage.Cost, d.Usage.Projected, budget, d.Usage.ByRegion)
		d.Trend = spendTrend(d.Usage.Month, d.Usage.ByDay, d.Usage.Now, d.Usage.Projected, budget)
	}
	return d
}

// logPanel is the log box for the filter form's region and machine.
func (u *UI) logPanel(w http.ResponseWriter, r *http.Request, sess *session, c *api.Client) {
	app, ok := u.appName(w, r)
	if !ok {
		return
	}
	q := url.Values{}
	for _, k := range []string{"region", "machine"} {
		if v := r.URL.Query().Get(k); v != "" {
			q.Set(k, v)
		}
	}
	src := "/ui/apps/" + url.PathEscape(app) + "/logs"
	if len(q) > 0 {
		src += "?" + q.Encode()
	}
	u.render(w, r, http.StatusOK, "panel-logbox", sess, src)
}

func (u *UI) detailsPanel(w http.ResponseWriter, r *http.Request, sess *session, c *api.Client) {
	app, ok := u.appName(w, r)
	if !ok {
		return
	}
	if _, err := c.GetApp(r.Context(), app); err != nil {
		u.apiError(w, r, err)
		return
	}
	u.render(w, r, http.StatusOK, "panel-details", sess, u.detailsData(r.Context(), c, app))
}

// machineAction is a machine's button: the same API call the CLI makes.
// An htmx request gets the machines panel back; a plain form post goes
// back to the app page.
func (u *UI) machineAction(w http.ResponseWriter, r *http.Request, sess *session, c *api.Client) {
	app, ok := u.appName(w, r)
	if !ok {
		return
	}
	id, action := r.PathValue("id"), r.PathValue("action")
	if !machineIDRE.MatchString(id) {
		u.errorPage(w, r, http.StatusNotFound, fmt.Sprintf("Not found: %q is not a machine id.", truncate(id, 40)))
		return
	}
	ctx := r.Context()
	// An app the token may not see is not found, as on every page: the
	// API's refusal of the action would say that it exists.
	if _, err := c.GetApp(ctx, app); err != nil {
		var he *api.HTTPError
		if errors.As(err, &he) && he.StatusCode == http.StatusForbidden {
			u.errorPage(w, r, http.StatusNotFound, "Not found: nothing here that your token may see.")
			return
		}
		u.apiError(w, r, err)
		return
	}
	var err error
	switch action {
	case "start":
		err = c.StartMachine(ctx, app, id)
	case "stop":
		err = c.StopMachine(ctx, app, id, nil)
	case "restart":
		err = c.RestartMachine(ctx, app, id, "", 0)
	case "destroy":
		err = c.DestroyMachine(ctx, app, id, r.PostFormValue("force") == "true")
	default:
		u.errorPage(w, r, http.StatusNotFound, fmt.Sprintf("Not found: a machine has no action %q (start, stop, restart, destroy).", truncate(action, 40)))
		return
	}
	if err != nil {
		u.apiError(w, r, err)
		return
	}
	u.log.Info("dashboard action", "who", sess.Who, "app", app, "machine", id, "action", action)
	if r.Header.Get("HX-Request") == "" {
		http.Redirect(w, r, "/ui/apps/"+app, http.StatusSeeOther)
		return
	}
	u.machinesPanel(w, r, sess, c)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// hosts reads every host record (the map's up/down per region and the
// mesh's round trips); the records say no more about an organisation
// than which regions have hosts.
func (u *UI) hosts(ctx context.Context) []api.Host {
	hs, err := store.List[api.Host](ctx, u.cfg.Store.Hosts, ">")
	if err != nil {
		u.log.Warn("dashboard: list hosts", "err", err)
	}
	return hs
}
