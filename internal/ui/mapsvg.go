package ui

import (
	"context"
	"fmt"
	"html/template"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// The map is equirectangular: x = longitude + 180, y = 90 - latitude, in
// degrees, cropped to 84°N-58°S (no region is further out).
const mapViewBox = "0 6 360 142"

// regionView is one region on the map and in the table under it.
type regionView struct {
	Code, City string
	X, Y       float64
	HostsUp    int
	HostsDown  int
	States     map[string]int
	Machines   int
	RTT        []string // "fra 12 ms", nearest first
}

// arcView is demand entering at From's edges and served in To.
type arcView struct {
	From, To string
	RPS      float64
}

// worldMap is what the map panel draws.
type worldMap struct {
	App     string
	Regions []regionView // regions with hosts or machines
	Arcs    []arcView
	SVG     template.HTML
	NoArcs  string // why there are no arcs, when there are none
}

func (u *UI) mapFor(ctx context.Context, c *api.Client, app string) worldMap {
	wm := worldMap{App: app}
	byCode := map[string]*regionView{}
	get := func(code string) *regionView {
		if rv, ok := byCode[code]; ok {
			return rv
		}
		reg, ok := u.cfg.World.Lookup(code)
		if !ok {
			return nil
		}
		rv := &regionView{Code: code, City: reg.City, X: reg.Lon + 180, Y: 90 - reg.Lat, States: map[string]int{}}
		byCode[code] = rv
		return rv
	}
	hosts := u.hosts(ctx)
	hostRegion := map[string]string{}
	for _, h := range hosts {
		hostRegion[h.ID] = h.Region
	}
	rtt := map[[2]string]float64{}
	for _, h := range hosts {
		if h.Role == api.HostRoleControl {
			continue
		}
		if rv := get(h.Region); rv != nil {
			if h.Status == "up" {
				rv.HostsUp++
			} else {
				rv.HostsDown++
			}
		}
		for peer, ms := range h.RTT {
			pr := hostRegion[peer]
			if pr == "" || pr == h.Region {
				continue
			}
			k := [2]string{h.Region, pr}
			if old, ok := rtt[k]; !ok || ms < old {
				rtt[k] = ms
			}
		}
	}
	var apps []string
	if app != "" {
		apps = []string{app}
	} else if as, err := c.ListApps(ctx); err == nil {
		for _, a := range as {
			apps = append(apps, a.Name)
		}
	}
	for _, a := range apps {
		ms, err := c.ListMachines(ctx, a, "")
		if err != nil {
			continue
		}
		for _, m := range ms {
			if rv := get(m.Region); rv != nil {
				rv.States[m.State]++
				rv.Machines++
			}
		}
	}
	arcs := map[[2]string]float64{}
	if u.cfg.Demand == nil {
		wm.NoArcs = "this control plane has no demand data"
	} else {
		for _, a := range apps {
			for origin, d := range u.cfg.Demand(a) {
				for served, share := range d.ServedBy {
					if get(origin) != nil && get(served) != nil {
						arcs[[2]string{origin, served}] += d.RPS * share
					}
				}
			}
		}
		if len(arcs) == 0 {
			wm.NoArcs = "no requests in the last few seconds"
		}
	}
	for k, rps := range arcs {
		wm.Arcs = append(wm.Arcs, arcView{From: k[0], To: k[1], RPS: rps})
	}
	slices.SortFunc(wm.Arcs, func(a, b arcView) int { return strings.Compare(a.From+a.To, b.From+b.To) })
	for code, rv := range byCode {
		type pair struct {
			r  string
			ms float64
		}
		var ps []pair
		for k, ms := range rtt {
			if k[0] == code {
				ps = append(ps, pair{k[1], ms})
			}
		}
		slices.SortFunc(ps, func(a, b pair) int { return int(a.ms*1000 - b.ms*1000) })
		for _, p := range ps {
			rv.RTT = append(rv.RTT, fmt.Sprintf("%s %.0f ms", p.r, p.ms))
		}
		wm.Regions = append(wm.Regions, *rv)
	}
	slices.SortFunc(wm.Regions, func(a, b regionView) int { return strings.Compare(a.Code, b.Code) })
	wm.SVG = u.drawMap(wm)
	return wm
}

// stateClass groups machine states into the map's four colours.
func stateClass(s string) string {
	switch s {
	case api.StateStarted:
		return "started"
	case api.StateStopped, api.StateSuspended, api.StateDestroyed:
		return "stopped"
	case api.StateFailed:
		return "failed"
	default:
		return "changing"
	}
}

var stateOrder = []string{"started", "changing", "stopped", "failed"}

func (u *UI) drawMap(wm worldMap) template.HTML {
	var b strings.Builder
	esc := template.HTMLEscapeString
	fmt.Fprintf(&b, `<svg class="worldmap" viewBox="%s" role="img" aria-labelledby="maptitle" xmlns="http://www.w3.org/2000/svg">`, mapViewBox)
	title := "World map of regions, hosts and machines"
	if wm.App != "" {
		title = "World map of " + wm.App
	}
	fmt.Fprintf(&b, `<title id="maptitle">%s</title>`, esc(title))
	b.WriteString(`<rect class="sea" x="0" y="6" width="360" height="142"/>`)
	b.WriteString(`<g class="graticule">`)
	for lon := 30; lon < 360; lon += 30 {
		fmt.Fprintf(&b, `<line x1="%d" y1="6" x2="%d" y2="148"/>`, lon, lon)
	}
	for lat := 60; lat >= -30; lat -= 30 {
		fmt.Fprintf(&b, `<line x1="0" y1="%d" x2="360" y2="%d"/>`, 90-lat, 90-lat)
	}
	b.WriteString(`</g>`)
	b.WriteString(`<image class="land" href="/ui/static/land.svg" x="0" y="0" width="360" height="180"/>`)
	pos := map[string]regionView{}
	for _, rv := range wm.Regions {
		pos[rv.Code] = rv
	}
	for _, a := range wm.Arcs {
		f, t := pos[a.From], pos[a.To]
		w := 0.4 + math.Min(3, math.Log10(1+a.RPS))
		label := fmt.Sprintf("%s → %s: %.1f req/s", a.From, a.To, a.RPS)
		if a.From == a.To {
			fmt.Fprintf(&b, `<circle class="arc" data-from="%s" data-to="%s" cx="%.1f" cy="%.1f" r="3.2" stroke-width="%.2f"><title>%s</title></circle>`,
				esc(a.From), esc(a.To), f.X, f.Y, w, esc(label))
			continue
		}
		// A quadratic curve bowed to one side, so two directions between a
		// pair of regions are two arcs.
		mx, my := (f.X+t.X)/2, (f.Y+t.Y)/2
		dx, dy := t.X-f.X, t.Y-f.Y
		cx, cy := mx-dy*0.25, my+dx*0.25
		fmt.Fprintf(&b, `<path class="arc" data-from="%s" data-to="%s" d="M%.1f %.1f Q%.1f %.1f %.1f %.1f" stroke-width="%.2f"><title>%s</title></path>`,
			esc(a.From), esc(a.To), f.X, f.Y, cx, cy, t.X, t.Y, w, esc(label))
	}
	for _, rv := range wm.Regions {
		cls := "empty"
		switch {
		case rv.HostsDown > 0 && rv.HostsUp == 0:
			cls = "down"
		case rv.HostsDown > 0:
			cls = "degraded"
		case rv.HostsUp > 0:
			cls = "up"
		}
		tip := fmt.Sprintf("%s (%s): %d host(s) up, %d down; %d machine(s)", rv.City, rv.Code, rv.HostsUp, rv.HostsDown, rv.Machines)
		for _, s := range sortedStates(rv.States) {
			tip += fmt.Sprintf(", %d %s", rv.States[s], s)
		}
		if len(rv.RTT) > 0 {
			tip += "; round trips: " + strings.Join(rv.RTT, ", ")
		}
		fmt.Fprintf(&b, `<g class="region %s" data-region="%s" data-machines="%d" data-started="%d" tabindex="0" aria-label="%s"><title>%s</title>`,
			cls, esc(rv.Code), rv.Machines, rv.States[api.StateStarted], esc(tip), esc(tip))
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="1.8"/><text x="%.1f" y="%.1f">%s</text>`, rv.X, rv.Y, rv.X+2.4, rv.Y+1, esc(rv.Code))
		// One square per machine, coloured by state, under the dot.
		i := 0
		for _, cls := range stateOrder {
			n := 0
			for s, c := range rv.States {
				if stateClass(s) == cls {
					n += c
				}
			}
			for ; n > 0 && i < 12; n-- {
				fmt.Fprintf(&b, `<rect class="m %s" x="%.1f" y="%.1f" width="1.4" height="1.4"/>`, cls, rv.X-1.8+float64(i%6)*1.8, rv.Y+2.6+float64(i/6)*1.8)
				i++
			}
		}
		b.WriteString(`</g>`)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func sortedStates(m map[string]int) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// spendChart draws month to date, projected and the budget line as bars,
// and the month's cost by region under them.
func spendChart(cost, projected, budget float64, byRegion map[string]float64) template.HTML {
	esc := template.HTMLEscapeString
	top := math.Max(math.Max(cost, projected), budget)
	if top <= 0 {
		top = 1
	}
	scale := func(v float64) float64 { return v / top * 240 } // room for the label
	type bar struct {
		label string
		v     float64
		cls   string
	}
	bars := []bar{{"month to date", cost, "mtd"}, {"projected", projected, "proj"}}
	regions := sortedKeys(byRegion)
	for _, r := range regions {
		bars = append(bars, bar{r, byRegion[r], "region"})
	}
	h := 14*len(bars) + 8
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="spend" viewBox="0 0 400 %d" role="img" aria-label="%s" xmlns="http://www.w3.org/2000/svg">`, h,
		esc(fmt.Sprintf("Spend: $%.2f month to date, $%.2f projected, budget $%.2f", cost, projected, budget)))
	for i, br := range bars {
		y := 4 + i*14
		fmt.Fprintf(&b, `<text x="0" y="%d">%s</text><rect class="%s" x="100" y="%d" width="%.1f" height="10"/><text x="%.1f" y="%d">$%.2f</text>`,
			y+9, esc(br.label), br.cls, y, scale(br.v), 104+scale(br.v), y+9, br.v)
	}
	if budget > 0 {
		x := 100 + scale(budget)
		fmt.Fprintf(&b, `<line class="budget" x1="%.1f" y1="0" x2="%.1f" y2="%d"><title>budget $%.2f</title></line>`, x, x, h, budget)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func sortedKeys(m map[string]float64) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// spendTrend draws a month's spend over time: the cumulative cost at the
// end of each day so far (a point per day, its cost on hover), a dashed
// line from now to the projection at the month's end, and the budget as
// a horizontal line. byDay is billing.Usage.ByDay ("2006-01-02" → cost).
func spendTrend(month string, byDay map[string]float64, now time.Time, projected, budget float64) template.HTML {
	start, err := time.Parse("2006-01", month)
	if err != nil {
		return ""
	}
	end := start.AddDate(0, 1, 0)
	days := int(end.Sub(start).Hours() / 24)
	if now.IsZero() || now.After(end) {
		now = end
	}
	if now.Before(start) {
		now = start
	}
	type point struct {
		x, cum, cost float64
		day          time.Time
	}
	var pts []point
	cum := 0.0
	for d := start; d.Before(now); d = d.AddDate(0, 0, 1) {
		c := byDay[d.Format(time.DateOnly)]
		cum += c
		x := float64(d.Sub(start).Hours()/24) + 1
		if x > now.Sub(start).Hours()/24 {
			x = now.Sub(start).Hours() / 24 // today, so far
		}
		pts = append(pts, point{x, cum, c, d})
	}
	top := math.Max(math.Max(cum, projected), budget) * 1.1
	if top <= 0 {
		top = 1
	}
	const x0, x1, y0, y1 = 44.0, 392.0, 8.0, 128.0
	px := func(day float64) float64 { return x0 + day/float64(days)*(x1-x0) }
	py := func(v float64) float64 { return y1 - v/top*(y1-y0) }
	esc := template.HTMLEscapeString
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="trend" viewBox="0 0 400 148" role="img" aria-label="%s" xmlns="http://www.w3.org/2000/svg">`,
		esc(fmt.Sprintf("Spend over %s: $%.2f so far, $%.2f projected by the month's end%s", start.Format("January 2006"), cum, projected,
			map[bool]string{true: fmt.Sprintf(", budget $%.2f", budget), false: ""}[budget > 0])))
	fmt.Fprintf(&b, `<line class="axis" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/><line class="axis" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`, x0, y1, x1, y1, x0, y0, x0, y1)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text><text x="%.1f" y="%.1f" text-anchor="end">$0</text>`, x0-3, y0+4, axisMoney(top), x0-3, y1)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text><text x="%.1f" y="%.1f" text-anchor="end">%s</text>`,
		x0, y1+12, start.Format("Jan 2"), x1, y1+12, end.AddDate(0, 0, -1).Format("Jan 2"))
	if budget > 0 {
		fmt.Fprintf(&b, `<line class="budget" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"><title>budget $%.2f</title></line><text class="budget" x="%.1f" y="%.1f" text-anchor="end">budget $%.2f</text>`,
			x0, py(budget), x1, py(budget), budget, x1, py(budget)-3, budget)
	}
	nowX := now.Sub(start).Hours() / 24
	if len(pts) > 0 && now.Before(end) {
		fmt.Fprintf(&b, `<line class="proj" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"><title>projected $%.2f by %s</title></line>`,
			px(nowX), py(cum), x1, py(projected), projected, end.AddDate(0, 0, -1).Format("Jan 2"))
	}
	line := []string{fmt.Sprintf("%.1f,%.1f", px(0), py(0))}
	for _, p := range pts {
		line = append(line, fmt.Sprintf("%.1f,%.1f", px(p.x), py(p.cum)))
	}
	fmt.Fprintf(&b, `<polyline class="mtd" points="%s"/>`, strings.Join(line, " "))
	for _, p := range pts {
		fmt.Fprintf(&b, `<circle class="day" data-day="%s" cx="%.1f" cy="%.1f" r="2"><title>%s: $%.2f that day, $%.2f so far</title></circle>`,
			p.day.Format(time.DateOnly), px(p.x), py(p.cum), p.day.Format("Jan 2"), p.cost, p.cum)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// axisMoney is an axis's dollars with the digits a small scale needs.
func axisMoney(v float64) string {
	switch {
	case v >= 10:
		return fmt.Sprintf("$%.0f", v)
	case v >= 0.1:
		return fmt.Sprintf("$%.2f", v)
	default:
		return fmt.Sprintf("$%.4f", v)
	}
}
