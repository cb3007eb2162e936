package devcluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/ui/uitest"
)

// TestDashboardWorld is issue 20's browser test against a real world: a
// dev world of three regions with their agents and runc machines, the CLI
// run as a user runs it, and headless Chromium on the dashboard. It logs
// in, sees the three regions' machines on the map, watches the app page
// while `perch deploy` replaces every machine (measuring, per change, the
// time from the API showing it to the open page showing it), stops a
// machine with its button and sees it stopped in `perch status`, sees the
// new machines' log lines arrive live, has an action without the CSRF
// token refused, bad input answered without a server error, and another
// organisation's token see nothing of the app. Screenshots of the map and
// the app page at 1280 and 390 px go to uitest.ShotsDir (docs/ui/ holds
// the latest).
func TestDashboardWorld(t *testing.T) {
	uitest.Chromium(t)
	t0 := time.Now()
	w := startWorld(t, devcluster.Options{})
	ctx := context.Background()
	info := w.Info()
	base := strings.TrimSuffix(info.UIURL, "/ui/")
	dir := t.TempDir()
	ref := pushImage(t, w, "hello:v1")
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad,ams,sin", "--name", "board")
	mustPerch(t, w, dir, "deploy", "--smoke-window", "1s")
	t.Logf("world up and first deploy done after %v", time.Since(t0).Round(time.Millisecond))

	b := uitest.Start(t, 3*time.Minute)
	b.Login(base, info.Token)
	for _, r := range []string{"iad", "ams", "sin"} {
		b.WaitFor("a started machine in "+r+" on the map", fmt.Sprintf(`.worldmap .region.up[data-region=%q] rect.m.started`, r), 10*time.Second)
	}
	b.Shot("dashboard-1280.png")

	b.Run("app page", chromedp.Navigate(base+"/ui/apps/board"), chromedp.WaitVisible(chromedp.CSS(`#machines table`)))
	old, err := w.Client().ListMachines(ctx, "board", "")
	if err != nil || len(old) != 3 {
		t.Fatalf("machines of board before the deploy: %d, %v; want 3", len(old), err)
	}
	// The log box's stream is open once its first lines (the tail: the v1
	// machines' start) are in.
	b.WaitFor("the log tail", `#logbox .logline`, 20*time.Second)

	// perch deploy of a new tag: every machine replaced, region by region.
	// While it runs, the API and the open page are polled side by side;
	// each machine state the API shows (id, state, release) is timed until
	// the page shows the same row.
	ref2 := pushImage(t, w, "hello:v2")
	deployed := make(chan error, 1)
	var deployOut string
	go func() {
		out, err := perch(t, w, dir, "deploy", "--image", ref2, "--smoke-window", "1s")
		deployOut = out
		deployed <- err
	}()
	lat := watchPageFollowAPI(t, b, w, "board", deployed)
	if deployOut == "" {
		t.Fatal("perch deploy printed nothing")
	}
	now, err := w.Client().ListMachines(ctx, "board", "")
	if err != nil {
		t.Fatal(err)
	}
	var v2 []api.Machine
	for _, m := range now {
		if m.State == api.StateStarted && !slices.ContainsFunc(old, func(o api.Machine) bool { return o.ID == m.ID }) {
			v2 = append(v2, m)
		}
	}
	if len(v2) != 3 {
		t.Fatalf("after perch deploy: %d new started machines, want 3 (one per region): %+v", len(v2), now)
	}
	for _, m := range v2 {
		b.WaitFor("the new machine's row", fmt.Sprintf(`#machines tr[data-machine=%q][data-state="started"][data-release=%q]`, m.ID, m.Config.Metadata["perch_release"]), 10*time.Second)
	}
	for _, m := range old {
		if n := b.Count(fmt.Sprintf(`#machines tr[data-machine=%q][data-state="started"]`, m.ID)); n != 0 {
			t.Errorf("the page still shows replaced machine %s started", m.ID)
		}
	}
	if len(lat.d) == 0 {
		t.Fatal("no machine change was timed during the deploy")
	}
	slices.Sort(lat.d)
	worst := lat.d[len(lat.d)-1]
	t.Logf("deploy: %d machine changes seen on the open page, no reload: median %v, worst %v after the API showed them (aim: 2 s)",
		len(lat.d), lat.d[len(lat.d)/2].Round(time.Millisecond), worst.Round(time.Millisecond))
	if worst > 2*time.Second {
		t.Logf("slower than the 2 s aim (machine under load?)")
	}
	if worst > 10*time.Second {
		t.Errorf("a machine change took %v to show on the open page", worst)
	}
	b.WaitFor("the release list", fmt.Sprintf(`#details td[data-version="%s"]`, strings.TrimPrefix(v2[0].Config.Metadata["perch_release"], "v")), 10*time.Second)

	// Live logs: the new machines did not exist when the page opened, so
	// their start lines came through the open stream.
	for _, m := range v2 {
		waitLogLine(t, b, m.ID, "hello listening on :8080 in "+m.Region)
	}

	// The stop button: the page shows the machine stopped, perch status
	// says so, and the machine's own last words reach the log box.
	var ams api.Machine
	for _, m := range v2 {
		if m.Region == "ams" {
			ams = m
		}
	}
	pressButton(t, b, fmt.Sprintf(`tr[data-machine=%q] button[data-action="stop"]`, ams.ID), "/ui/apps/board/machines/"+ams.ID+"/stop")
	if n := b.Count(`#flash .error`); n != 0 {
		t.Fatalf("the stop button was refused: %s", b.Text("#flash"))
	}
	b.WaitFor("the stopped machine", fmt.Sprintf(`tr[data-machine=%q][data-state="stopped"]`, ams.ID), 30*time.Second)
	eventually(t, 30*time.Second, "perch status shows the machine stopped", func() (bool, string) {
		out, err := perch(t, w, dir, "status", "--json")
		var st statusJSON
		if err != nil || json.Unmarshal([]byte(jsonPart(out)), &st) != nil {
			return false, out
		}
		for _, m := range st.Machines {
			if m.ID == ams.ID {
				return m.State == api.StateStopped, m.State
			}
		}
		return false, "machine not listed: " + out
	})
	waitLogLine(t, b, ams.ID, "hello: got signal")

	// An action without the CSRF token is refused, and changes nothing.
	iad := v2[slices.IndexFunc(v2, func(m api.Machine) bool { return m.Region == "iad" })]
	if st := uitest.Eval[int](b, "POST without CSRF", fmt.Sprintf(`fetch('/ui/apps/board/machines/%s/stop', {method: 'POST'}).then(r => r.status)`, iad.ID)); st != http.StatusForbidden {
		t.Errorf("a POST without the CSRF token: %d, want 403", st)
	}
	// Bad input through the logged-in page: a very long app name, a
	// machine that does not exist (with the CSRF token).
	csrf := uitest.Eval[string](b, "csrf", `JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token']`)
	for _, c := range []struct {
		what, js string
		want     int
	}{
		{"a 5,000-character app name", `fetch('/ui/apps/' + 'a'.repeat(5000)).then(r => r.status)`, 404},
		{"a 5,000-character app name's stop", fmt.Sprintf(`fetch('/ui/apps/' + 'a'.repeat(5000) + '/machines/%s/stop', {method: 'POST', headers: {'X-CSRF-Token': %q}}).then(r => r.status)`, iad.ID, csrf), 404},
		{"a machine that does not exist", fmt.Sprintf(`fetch('/ui/apps/board/machines/0123456789abcd/stop', {method: 'POST', headers: {'X-CSRF-Token': %q}}).then(r => r.status)`, csrf), 404},
		{"a machine id that is no id", fmt.Sprintf(`fetch('/ui/apps/board/machines/..%%2F..%%2Fetc/stop', {method: 'POST', headers: {'X-CSRF-Token': %q}}).then(r => r.status)`, csrf), 0},
	} {
		st := uitest.Eval[int](b, c.what, c.js)
		if st >= 500 || (c.want != 0 && st != c.want) {
			t.Errorf("%s: %d, want %d and never a server error", c.what, st, c.want)
		}
	}
	m, err := w.Client().GetMachine(ctx, "board", iad.ID)
	if err != nil || m.State != api.StateStarted {
		t.Errorf("machine %s after refused and bad actions: %v %v, want started", iad.ID, m, err)
	}
	b.Shot("app-1280.png")

	// A forged cookie: the login form, not an error.
	req, _ := http.NewRequest("GET", base+"/ui/apps/board", nil)
	req.AddCookie(&http.Cookie{Name: "perch_ui_session", Value: strings.Repeat("A", 300)})
	noFollow := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if resp, err := noFollow.Do(req); err != nil {
		t.Error(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/ui/login") {
			t.Errorf("a forged session cookie: %d %q, want a redirect to the login form", resp.StatusCode, resp.Header.Get("Location"))
		}
	}

	b.PhoneWidth()
	b.Run("app at 390", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`#machines table`)))
	if px := uitest.Eval[int](b, "page width", `document.documentElement.scrollWidth`); px > 390 {
		t.Errorf("the app page is %d px wide on a 390 px screen: something does not wrap", px)
	}
	b.Shot("app-390.png")
	b.Run("dashboard at 390", chromedp.Navigate(base+"/ui/"), chromedp.WaitVisible(chromedp.CSS(`svg.worldmap`)))
	b.WaitFor("machines on the map", `.worldmap rect.m`, 10*time.Second)
	if px := uitest.Eval[int](b, "page width", `document.documentElement.scrollWidth`); px > 390 {
		t.Errorf("the dashboard is %d px wide on a 390 px screen: something does not wrap", px)
	}
	b.Shot("dashboard-390.png")

	// Log out (the button), then log in with another organisation's token:
	// none of board shows.
	jar, err := chromedp.Call(b.Ctx, network.GetCookies, network.GetCookiesParams{})
	if err != nil {
		t.Fatal(err)
	}
	cookies := jar.Cookies
	b.Run("log out", chromedp.Click(chromedp.CSS(`form[action="/ui/logout"] button`)), chromedp.WaitVisible(chromedp.CSS(`#token`)))
	for _, c := range cookies {
		if c.Name != "perch_ui_session" {
			continue
		}
		req, _ := http.NewRequest("GET", base+"/ui/apps/board", nil)
		req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusSeeOther {
			t.Errorf("the session cookie after logout: %d, want a redirect to the login form", resp.StatusCode)
		}
	}
	admin := api.NewClient(info.APIURL, w.AdminToken())
	if _, err := admin.CreateOrg(ctx, api.CreateOrgRequest{Slug: "rival"}); err != nil {
		t.Fatal(err)
	}
	rtok, err := admin.CreateToken(ctx, "rival", api.CreateTokenRequest{Kind: "org", Name: "rival"})
	if err != nil {
		t.Fatal(err)
	}
	b.Login(base, rtok.Secret)
	if n := b.Count(`.worldmap rect.m`); n != 0 {
		t.Errorf("another organisation's map shows %d machines, want none", n)
	}
	if body := b.Text("main"); strings.Contains(body, "board") {
		t.Errorf("another organisation's dashboard names the app: %q", body)
	}
	b.Run("board as rival", chromedp.Navigate(base+"/ui/apps/board"), chromedp.WaitReady(chromedp.CSS(`body`)))
	if b.Count(`#machines`) != 0 || b.Count(`tr[data-machine]`) != 0 {
		t.Errorf("another organisation's token opens board's app page")
	}
	// Its own session's CSRF token, from its dashboard: the stop is
	// refused for the app, not for the form.
	b.Run("rival's dashboard", chromedp.Navigate(base+"/ui/"), chromedp.WaitVisible(chromedp.CSS(`svg.worldmap`)))
	rcsrf := uitest.Eval[string](b, "csrf", `JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token']`)
	if st := uitest.Eval[int](b, "rival's stop", fmt.Sprintf(`fetch('/ui/apps/board/machines/%s/stop', {method: 'POST', headers: {'X-CSRF-Token': %q}}).then(r => r.status)`, iad.ID, rcsrf)); st != http.StatusNotFound {
		t.Errorf("another organisation's stop of board's machine: %d, want 404", st)
	}
	if m, err := w.Client().GetMachine(ctx, "board", iad.ID); err != nil || m.State != api.StateStarted {
		t.Errorf("board's machine after another organisation's stop: %v %v, want started", m, err)
	}
	t.Logf("screenshots in %s; the whole test took %v", b.Dir, time.Since(t0).Round(time.Millisecond))
}

// pageLatency is how long each machine state the API showed took to show
// on the open page.
type pageLatency struct{ d []time.Duration }

// watchPageFollowAPI polls the API and the page every 50 ms until done
// yields (the deploy's end) and the page has caught up: for each row
// (id, state, release) the API lists, the time until the page shows it.
// A state the API showed that the page skipped (a newer one replaced it
// first) is not timed; a machine the API no longer lists is timed until
// its row leaves the page.
func watchPageFollowAPI(t *testing.T, b *uitest.Browser, w *devcluster.World, app string, done <-chan error) *pageLatency {
	t.Helper()
	lat := &pageLatency{}
	apiSeen := map[string]time.Time{} // row key → first seen in the API
	goneSeen := map[string]time.Time{}
	timed := map[string]bool{}
	const rowsJS = `Array.from(document.querySelectorAll('#machines tr[data-machine]')).map(r => r.dataset.machine + '|' + r.dataset.state + '|' + r.dataset.release)`
	var finished time.Time
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("perch deploy: %v", err)
			}
			finished = time.Now()
			done = nil
		default:
		}
		ms, err := w.Client().ListMachines(context.Background(), app, "")
		if err != nil {
			t.Fatal(err)
		}
		rows := uitest.Eval[[]string](b, "machine rows", rowsJS)
		now := time.Now()
		listed := map[string]bool{}
		for _, m := range ms {
			listed[m.ID] = true
			k := m.ID + "|" + m.State + "|" + m.Config.Metadata["perch_release"]
			if _, ok := apiSeen[k]; !ok {
				apiSeen[k] = now
			}
		}
		onPage := map[string]bool{}
		for _, r := range rows {
			id, _, _ := strings.Cut(r, "|")
			onPage[id] = true
			if at, ok := apiSeen[r]; ok && !timed[r] {
				timed[r] = true
				lat.d = append(lat.d, now.Sub(at))
			}
		}
		for _, r := range rows {
			id, _, _ := strings.Cut(r, "|")
			if !listed[id] {
				if _, ok := goneSeen[id]; !ok {
					goneSeen[id] = now
				}
			}
		}
		for id, at := range goneSeen {
			if !onPage[id] && !timed["gone|"+id] {
				timed["gone|"+id] = true
				lat.d = append(lat.d, now.Sub(at))
			}
		}
		if !finished.IsZero() {
			caught := true
			for _, r := range rows {
				id, _, _ := strings.Cut(r, "|")
				if !listed[id] {
					caught = false
				}
			}
			for _, m := range ms {
				k := m.ID + "|" + m.State + "|" + m.Config.Metadata["perch_release"]
				if !slices.Contains(rows, k) {
					caught = false
				}
			}
			if caught || time.Since(finished) > 15*time.Second {
				return lat
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitLogLine waits for a line of machine id containing msg in the page's
// log box.
func waitLogLine(t *testing.T, b *uitest.Browser, id, msg string) {
	t.Helper()
	js := fmt.Sprintf(`Array.from(document.querySelectorAll('#logbox .logline')).some(l => l.querySelector('.mid').textContent == %q && l.querySelector('.msg').textContent.includes(%q))`, id, msg)
	deadline := time.Now().Add(30 * time.Second)
	for !uitest.Eval[bool](b, "log lines", js) {
		if time.Now().After(deadline) {
			b.Fail("live log line", fmt.Errorf("no line %q of machine %s in the log box within 30 s", msg, id))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pressButton clicks the button sel and waits for its form's POST to path
// to be answered. A live update may replace the panel between finding
// the button and the click landing, and the click then hits nothing; it
// is pressed again (at most 3 times, each logged), as a user would.
func pressButton(t *testing.T, b *uitest.Browser, sel, path string) {
	t.Helper()
	uitest.Eval[bool](b, "watch the page's requests", `window.perchPosts = window.perchPosts || [];
		if (!window.perchWatching) { window.perchWatching = true;
			document.body.addEventListener('htmx:afterRequest', e => window.perchPosts.push(e.detail.requestConfig.path)); } true`)
	answered := fmt.Sprintf(`window.perchPosts.includes(%q)`, path)
	for try := 1; ; try++ {
		b.Run("press "+sel, chromedp.Click(chromedp.CSS(sel)))
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if uitest.Eval[bool](b, "the button's request", answered) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		if try == 3 {
			b.Fail("press "+sel, fmt.Errorf("no POST %s answered within 10 s of each of 3 clicks", path))
		}
		t.Logf("click %d on %s sent nothing within 10 s (the panel was replaced under it?); pressing again", try, sel)
	}
}
