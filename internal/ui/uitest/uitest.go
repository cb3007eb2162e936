// Package uitest drives the dashboard (package ui) in headless Chromium
// for tests: Debian's Chromium through chromedp, waits that poll the page
// with a deadline, and screenshots written to an output directory. Both
// internal/ui's browser test (a control plane in process) and
// internal/devcluster's (a whole dev world) use it.
package uitest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Chromium is the path of Debian's Chromium (scripts/deps.sh installs it
// for CI); without one the test is skipped, saying why.
func Chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium on this machine (apt-get install chromium, as scripts/deps.sh does): the browser test needs it")
	return ""
}

// ShotsDir is where screenshots go: $PERCH_UI_SHOTS, else
// perch-ui-shots under the system's temp dir, which outlives the test
// (copy the latest into docs/ui/).
func ShotsDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("PERCH_UI_SHOTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "perch-ui-shots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Browser is one headless Chromium tab, 1280 px wide, closed at the
// test's cleanup. Its methods fail the test with the page's HTML.
type Browser struct {
	t   testing.TB
	Ctx context.Context
	Dir string // screenshots
}

// Start opens Chromium; every step must be done within limit.
func Start(t testing.TB, limit time.Duration) *Browser {
	t.Helper()
	exe := Chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-dev-shm-usage", true))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, bcancel := chromedp.NewContext(actx)
	bctx, tcancel := context.WithTimeout(bctx, limit)
	t.Cleanup(func() { tcancel(); bcancel(); acancel() })
	return &Browser{t: t, Ctx: bctx, Dir: ShotsDir(t)}
}

// Fail ends the test with what failed and the page's HTML.
func (b *Browser) Fail(what string, err error) {
	b.t.Helper()
	html, _ := chromedp.Run(b.Ctx, chromedp.OuterHTML(chromedp.CSS("body")))
	b.t.Fatalf("%s: %v\npage:\n%.3000s", what, err, html)
}

// Run does steps, failing the test if one fails.
func (b *Browser) Run(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.Ctx, steps...); err != nil {
		b.Fail(what, err)
	}
}

// Eval evaluates a JavaScript expression (a promise is awaited).
func Eval[T any](b *Browser, what, js string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.Ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		b.Fail(what, err)
	}
	return v
}

// Count is the number of elements matching the CSS selector sel.
func (b *Browser) Count(sel string) int {
	b.t.Helper()
	return Eval[int](b, "count "+sel, fmt.Sprintf(`document.querySelectorAll(%q).length`, sel))
}

// Text is the text of the first element matching sel ("" if none).
func (b *Browser) Text(sel string) string {
	b.t.Helper()
	return Eval[string](b, "text of "+sel, fmt.Sprintf(`(document.querySelector(%q) || {}).textContent || ""`, sel))
}

// WaitFor polls the page every 50 ms until an element matches sel, and
// returns how long that took; past limit the test fails.
func (b *Browser) WaitFor(what, sel string, limit time.Duration) time.Duration {
	b.t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		if b.Count(sel) > 0 {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fail(what, fmt.Errorf("no %s within %v", sel, limit))
	return 0
}

// Shot writes a screenshot of the whole page to Dir/name once the map's
// outline (an image of its own, if the page has the map) is painted.
func (b *Browser) Shot(name string) {
	b.t.Helper()
	const painted = `new Promise(ok => { const f = () => (!document.querySelector('svg.worldmap') ||
		performance.getEntriesByName(location.origin + '/ui/static/land.svg').length > 0) ?
		requestAnimationFrame(() => requestAnimationFrame(() => ok(true))) : setTimeout(f, 50); f(); })`
	Eval[bool](b, "outline painted", painted)
	png, err := chromedp.Run(b.Ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.Fail("screenshot "+name, err)
	}
	if err := os.WriteFile(filepath.Join(b.Dir, name), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// PhoneWidth makes the tab a 390 px wide phone screen.
func (b *Browser) PhoneWidth() {
	b.t.Helper()
	b.Run("phone width", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulatePortrait))
}

// Login fills /ui/login with tok and waits for the world map.
func (b *Browser) Login(base, tok string) {
	b.t.Helper()
	b.Run("log in",
		chromedp.Navigate(base+"/ui/"),
		chromedp.WaitVisible(chromedp.CSS(`#token`)),
		chromedp.SendKeys(chromedp.CSS(`#token`), tok),
		chromedp.Submit(chromedp.CSS(`#token`)),
		chromedp.WaitVisible(chromedp.CSS(`svg.worldmap`)),
	)
}
