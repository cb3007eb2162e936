package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// TestLogsTailAfterAFlood: an app whose machines printed 200,000 lines
// answers `perch logs -n 1` with its newest line in well under a second,
// and the flood evicted none of another app's lines (each machine keeps
// its own store.LogLinesPerMachine).
func TestLogsTailAfterAFlood(t *testing.T) {
	ts := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, app := range []string{"flood", "quiet"} {
		if _, err := ts.c.CreateApp(ctx, api.CreateAppRequest{AppName: app}); err != nil {
			t.Fatal(err)
		}
	}
	nc := ts.st.Conn()
	publish := func(app, machine string, i int) {
		b, _ := json.Marshal(api.LogLine{Timestamp: time.Now().UTC(), App: app, Region: "iad", MachineID: machine, Stream: "stdout", Message: fmt.Sprintf("%s line %d", machine, i)})
		if err := nc.Publish(store.LogSubject(app, "iad", machine), b); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 3; i++ {
		publish("quiet", "q1", i)
	}
	const machines, perMachine = 20, 10_000
	for i := 1; i <= perMachine; i++ {
		for m := 0; m < machines; m++ {
			publish("flood", fmt.Sprintf("f%02d", m), i)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	js, _ := ts.st.JetStream().Stream(ctx, store.LogStream("flood"))
	for {
		info, err := js.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs >= machines*perMachine {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the stream holds %d lines, want %d", info.State.Msgs, machines*perMachine)
		}
		time.Sleep(50 * time.Millisecond) // polling the stream's count, a condition
	}
	tail := func(app string, n int) ([]string, time.Duration) {
		start := time.Now()
		var got []string
		err := ts.c.Logs(ctx, app, api.LogOptions{Lines: n}, func(l api.LogLine) error {
			got = append(got, l.Message)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return got, time.Since(start)
	}
	got, took := tail("flood", 1)
	want := fmt.Sprintf("f%02d line %d", machines-1, perMachine)
	if len(got) != 1 || got[0] != want {
		t.Fatalf("perch logs -n 1 of the flooded app = %q, want [%q]", got, want)
	}
	t.Logf("perch logs -n 1 after %d lines: %v", machines*perMachine, took)
	if took > time.Second {
		t.Errorf("perch logs -n 1 took %v after a flood; want under a second", took)
	}
	got, took = tail("flood", 5)
	if len(got) != 5 || got[4] != want {
		t.Errorf("perch logs -n 5 = %q; want 5 lines ending with %q", got, want)
	}
	t.Logf("perch logs -n 5: %v", took)
	got, _ = tail("quiet", 100)
	if len(got) != 3 || got[0] != "q1 line 1" || got[2] != "q1 line 3" {
		t.Errorf("the other app's lines after the flood = %q; want its 3 lines", got)
	}

	// A machine printing more than it may keep loses only its own oldest.
	for i := perMachine + 1; i <= perMachine+500; i++ {
		publish("flood", "f00", i)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	f00 := store.LogSubject("flood", "iad", "f00")
	for {
		last, err := js.GetLastMsgForSubject(ctx, f00)
		if err != nil {
			t.Fatal(err)
		}
		var l api.LogLine
		if json.Unmarshal(last.Data, &l) == nil && l.Message == fmt.Sprintf("f00 line %d", perMachine+500) {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the extra lines never reached the stream")
		}
		time.Sleep(20 * time.Millisecond) // polling for the last line, a condition
	}
	info, err := js.Info(ctx, jetstream.WithSubjectFilter(f00))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[f00]; n != store.LogLinesPerMachine {
		t.Errorf("machine f00 keeps %d lines, want %d", n, store.LogLinesPerMachine)
	}
	got, _ = tail("quiet", 100)
	if len(got) != 3 {
		t.Errorf("the other app's lines after the machine overflowed = %q; want its 3 lines", got)
	}
}

// TestLogFloodKeepsOtherAppsLines: 40 machines of one app print 4 times
// what an app's log keeps, in lines of 4 KiB; the app's stream stays
// within its size, its newest line is there, and not one line of another
// app is evicted. Deleting the flooded app deletes its log: an app made
// again with its name starts empty.
func TestLogFloodKeepsOtherAppsLines(t *testing.T) {
	const perApp = 4 << 20
	ts := startServer(t, t.TempDir(), func(c *Config) { c.LogBytesPerApp = perApp })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, app := range []string{"flood", "quiet"} {
		if _, err := ts.c.CreateApp(ctx, api.CreateAppRequest{AppName: app}); err != nil {
			t.Fatal(err)
		}
	}
	nc := ts.st.Conn()
	pad := strings.Repeat("x", 4<<10)
	publish := func(app, machine, msg string) {
		b, _ := json.Marshal(api.LogLine{Timestamp: time.Now().UTC(), App: app, Region: "iad", MachineID: machine, Stream: "stdout", Message: msg})
		if err := nc.Publish(store.LogSubject(app, "iad", machine), b); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 3; i++ {
		publish("quiet", "q1", fmt.Sprintf("q1 line %d", i))
	}
	const machines, perMachine = 40, 110
	flooded := 0
	for i := 1; i <= perMachine; i++ {
		for m := 0; m < machines; m++ {
			msg := fmt.Sprintf("f%02d line %d %s", m, i, pad)
			publish("flood", fmt.Sprintf("f%02d", m), msg)
			flooded += len(msg)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if flooded < 4*perApp {
		t.Fatalf("the flood is %d bytes, want at least 4 times an app's %d", flooded, perApp)
	}
	stream, err := ts.st.JetStream().Stream(ctx, store.LogStream("flood"))
	if err != nil {
		t.Fatal(err)
	}
	lastSubj := store.LogSubject("flood", "iad", fmt.Sprintf("f%02d", machines-1))
	want := fmt.Sprintf("f%02d line %d ", machines-1, perMachine)
	for {
		last, err := stream.GetLastMsgForSubject(ctx, lastSubj)
		var l api.LogLine
		if err == nil && json.Unmarshal(last.Data, &l) == nil && strings.HasPrefix(l.Message, want) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the flood's last line never reached its stream: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling for the last line, a condition
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Bytes > perApp {
		t.Errorf("the flooded app's log holds %d bytes, over its %d", info.State.Bytes, perApp)
	}
	t.Logf("flood of %d MiB: the app keeps %d lines, %.1f MiB", flooded>>20, info.State.Msgs, float64(info.State.Bytes)/(1<<20))

	var got []string
	collect := func(l api.LogLine) error { got = append(got, l.Message); return nil }
	start := time.Now()
	if err := ts.c.Logs(ctx, "flood", api.LogOptions{Lines: 1}, collect); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); len(got) != 1 || !strings.HasPrefix(got[0], want) || took > time.Second {
		t.Errorf("perch logs -n 1 of the flooded app: %d lines (%.40q), in %v; want its last line in under a second", len(got), got, took)
	}
	got = nil
	if err := ts.c.Logs(ctx, "quiet", api.LogOptions{Lines: 100}, collect); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"q1 line 1", "q1 line 2", "q1 line 3"}) {
		t.Errorf("the other app's lines after the flood = %q; want its 3 lines", got)
	}

	if err := ts.c.DestroyApp(ctx, "flood"); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.c.CreateApp(ctx, api.CreateAppRequest{AppName: "flood"}); err != nil {
		t.Fatal(err)
	}
	got = nil
	if err := ts.c.Logs(ctx, "flood", api.LogOptions{Lines: 100}, collect); err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Errorf("a new app named flood sees %d lines of the deleted one's log", len(got))
	}
}

// TestLogsFilterIsAnIDNotASubject: the region and machine filters of
// `perch logs` select lines by exact id; a value that would widen or change
// the NATS subject (a dot, a wildcard) is refused with a 400 that names
// the field, and a valid filter returns only that machine's lines.
func TestLogsFilterIsAnIDNotASubject(t *testing.T) {
	ts := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := ts.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	nc := ts.st.Conn()
	for _, m := range []string{"m1", "m2"} {
		b, _ := json.Marshal(api.LogLine{Timestamp: time.Now().UTC(), App: "web", Region: "iad", MachineID: m, Stream: "stdout", Message: m + " says hi"})
		if err := nc.Publish(store.LogSubject("web", "iad", m), b); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	lines := func(opts api.LogOptions) ([]string, error) {
		var got []string
		err := ts.c.Logs(ctx, "web", opts, func(l api.LogLine) error { got = append(got, l.Message); return nil })
		return got, err
	}
	for {
		got, err := lines(api.LogOptions{Lines: 10, Machine: "m1"})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > 0 {
			if !slices.Equal(got, []string{"m1 says hi"}) {
				t.Fatalf("logs of machine m1 = %q, want only its own line", got)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatal("m1's line never reached the log stream")
		}
		time.Sleep(20 * time.Millisecond) // polling for the line, a condition
	}
	for _, bad := range []api.LogOptions{
		{Lines: 10, Region: ">"},
		{Lines: 10, Region: "iad.m1"},
		{Lines: 10, Machine: "*"},
		{Lines: 10, Machine: "m1.x"},
	} {
		_, err := lines(bad)
		var he *api.HTTPError
		if !errors.As(err, &he) || he.StatusCode != 400 {
			t.Errorf("logs with region %q machine %q: err = %v, want a 400", bad.Region, bad.Machine, err)
			continue
		}
		field := "machine"
		if bad.Region != "" {
			field = "region"
		}
		if !strings.Contains(he.Error(), field+" id") {
			t.Errorf("logs with region %q machine %q: %v, want the error to name the %s", bad.Region, bad.Machine, err, field)
		}
	}
}
