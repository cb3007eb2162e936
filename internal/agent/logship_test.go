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
	dir := t.TempDir()
	nats, err := store.RunEmbedded(filepath.Join(dir, "nats"), "127.0.0.1:0", "tok", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nats.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := store.Open(ctx, nats.URL(), "tok", "logship-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if err := st.EnsureAppLogs(ctx, "flood", 0); err != nil {
		t.Fatal(err)
	}

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

	a := &Agent{st: st, log: slog.New(slog.DiscardHandler), cfg: Config{StateDir: dir}}
	spec := store.MachineSpec{ID: "m1", App: "flood", Region: "iad"}
	s := a.newShipper(spec, []perchrt.LogFile{{Stream: "stdout", Path: out}})
	go s.loop()
	defer s.stop()

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

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
