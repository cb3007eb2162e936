package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perchhq/perch/internal/api"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/store"
)

// TestLogFloodIsPaced: a machine that prints 100,000 lines at once ships
// no more than its burst, then a line saying how many it dropped; its
// output file keeps everything, and the host catches up with the file
// without waiting for the machine to write again.
func TestLogFloodIsPaced(t *testing.T) {
	dir, st, ctx := logStore(t, "flood")

	const lines = 100_000
	out := filepath.Join(dir, "stdout")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := 1; i <= lines; i++ {
		fmt.Fprintf(w, "flood line %d\n", i)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	s := startShipper(t, dir, st, "flood", out)

	// Wait until the shipper has read the whole file and reported every
	// drop: the host catches up without the machine writing again.
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for {
		s.mu.Lock()
		done := s.offsets[out] == fi.Size() && len(s.dropped) == 0
		s.mu.Unlock()
		if done {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the shipper never caught up with the file")
		}
		time.Sleep(10 * time.Millisecond) // polling the shipper's state, a condition
	}
	took := time.Since(start)
	cons, err := st.JetStream().OrderedConsumer(ctx, store.LogStream("flood"), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{store.LogSubject("flood", "iad", "m1")},
	})
	if err != nil {
		t.Fatal(err)
	}
	shipped, dropped, markers := 0, 0, 0
	for shipped+dropped < lines {
		msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("after %d lines shipped and %d reported dropped: %v", shipped, dropped, err)
		}
		var l api.LogLine
		if err := json.Unmarshal(msg.Data(), &l); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(l.Message, "[perch] ") {
			var n int
			if _, err := fmt.Sscanf(l.Message, "[perch] %d lines dropped", &n); err != nil {
				t.Fatalf("marker %q: %v", l.Message, err)
			}
			dropped += n
			markers++
			continue
		}
		shipped++
	}
	t.Logf("read the file in %v: %d lines shipped, %d dropped in %d markers", took.Round(time.Millisecond), shipped, dropped, markers)
	if shipped+dropped != lines {
		t.Errorf("shipped %d + dropped %d = %d; want every one of the %d lines accounted for", shipped, dropped, shipped+dropped, lines)
	}
	if limit := logBurst + int(float64(logRate)*(took+time.Second).Seconds()); shipped+markers > limit {
		t.Errorf("shipped %d lines and %d markers in %v; want at most the burst and the rate, %d", shipped, markers, took, limit)
	}
	b, _ := io.ReadAll(io.LimitReader(must(os.Open(out)), 1<<30))
	if n := strings.Count(string(b), "\n"); n != lines {
		t.Errorf("the machine's output file has %d lines, want all %d", n, lines)
	}
}

// logStore is a store on an embedded NATS with app's log stream, and the
// directory for a shipper's files.
func logStore(t *testing.T, app string) (string, *store.Store, context.Context) {
	t.Helper()
	dir := t.TempDir()
	nats, err := store.RunEmbedded(filepath.Join(dir, "nats"), "127.0.0.1:0", "tok", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nats.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	st, err := store.Open(ctx, nats.URL(), "tok", "logship-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if err := st.EnsureAppLogs(ctx, app, 0); err != nil {
		t.Fatal(err)
	}
	return dir, st, ctx
}

// startShipper tails out as machine m1's stdout until the test ends.
func startShipper(t *testing.T, dir string, st *store.Store, app, out string) *shipper {
	a := &Agent{st: st, log: slog.New(slog.DiscardHandler), cfg: Config{StateDir: dir}}
	s := a.newShipper(store.MachineSpec{ID: "m1", App: app, Region: "iad"}, []perchrt.LogFile{{Stream: "stdout", Path: out}})
	go s.loop()
	t.Cleanup(s.stop)
	return s
}

// TestLineAfterAFloodIsShipped: a machine prints 256 MiB at once, is quiet
// for a second, then prints one line. The host catches up with the flood
// within that second (counting, not copying, what it drops), so the
// limiter has tokens again and the line is shipped, not dropped. Before,
// the host read 4 MiB per 25 ms and spent the quiet second's tokens on
// the backlog: the line after a 300 MiB flood was dropped on a loaded CI
// machine.
func TestLineAfterAFloodIsShipped(t *testing.T) {
	dir, st, ctx := logStore(t, "flood")
	out := filepath.Join(dir, "stdout")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cons, err := st.JetStream().OrderedConsumer(ctx, store.LogStream("flood"), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{store.LogSubject("flood", "iad", "m1")},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := startShipper(t, dir, st, "flood", out)

	const lines = 2 << 20 // of 128 bytes: 256 MiB
	w := bufio.NewWriterSize(f, 1<<20)
	line := []byte("flood line 0000000000 " + strings.Repeat("x", 105) + "\n")
	for i := range lines {
		copy(line[11:21], fmt.Appendf(nil, "%010d", i))
		w.Write(line)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	wrote := time.Now()
	size := int64(lines * len(line))
	// The machine is quiet for a second: time passing is the case tested.
	time.Sleep(time.Second)
	s.mu.Lock()
	read := s.offsets[out]
	s.mu.Unlock()
	t.Logf("a second after the flood was written, the host had read %d of %d MiB", read>>20, size>>20)
	if _, err := f.WriteString("quiet again\n"); err != nil {
		t.Fatal(err)
	}
	// Every line of the flood is shipped or counted in a marker (the last
	// marker may follow the quiet line), and the quiet line is shipped: a
	// count past the flood's means it was dropped.
	shipped, dropped, quiet := 0, 0, time.Duration(0)
	for quiet == 0 || shipped+dropped < lines {
		msg, err := cons.Next(jetstream.FetchMaxWait(20 * time.Second))
		if err != nil {
			t.Fatalf("after %d lines shipped and %d reported dropped (the quiet line seen: %v): %v", shipped, dropped, quiet > 0, err)
		}
		var l api.LogLine
		if err := json.Unmarshal(msg.Data(), &l); err != nil {
			t.Fatal(err)
		}
		var n int
		if _, err := fmt.Sscanf(l.Message, "[perch] %d lines dropped", &n); err == nil {
			dropped += n
		} else if l.Message == "quiet again" {
			quiet = time.Since(wrote)
		} else {
			shipped++
		}
		if shipped+dropped > lines {
			t.Fatalf("%d lines shipped and %d reported dropped of the flood's %d: the line printed after a quiet second was dropped", shipped, dropped, lines)
		}
	}
	t.Logf("the line after the flood shipped %v after the flood was written; of the flood %d lines shipped, %d reported dropped", quiet.Round(time.Millisecond), shipped, dropped)
	if got := s.lastLines(); len(got) == 0 || got[len(got)-1] != "quiet again" || len(got) != lastLogLines || !strings.HasPrefix(got[0], fmt.Sprintf("flood line %010d ", lines-lastLogLines+1)) {
		t.Errorf("last lines after the flood: %.60q; want the flood's last %d and \"quiet again\"", got, lastLogLines-1)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
