package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// logs streams an app's log lines as NDJSON: the last `lines` lines, then,
// with follow=true, new lines as they come.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	a, err := s.app(ctx, r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	follow := q.Get("follow") == "true" || q.Get("follow") == "1"
	lines := 100
	if v := q.Get("lines"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 10000 {
			s.fail(w, r, errf(http.StatusBadRequest, "lines must be 0-10000, got %q", v))
			return
		}
		lines = n
	}
	// Both filters become tokens of a NATS subject: a value with a dot or
	// a wildcard would change which lines match, so only ids pass.
	region, machine := q.Get("region"), q.Get("machine")
	if region == "" {
		region = "*"
	} else if err := validID("region", region); err != nil {
		s.fail(w, r, err)
		return
	}
	if machine == "" {
		machine = "*"
	} else if err := validID("machine", machine); err != nil {
		s.fail(w, r, err)
		return
	}
	subject := "perch.logs." + a.Name + "." + region + "." + machine
	// Start at the last `lines` lines: a machine that printed a million
	// lines costs a handful of round trips, not a million messages.
	start, err := s.st.LogTailStart(ctx, a.Name, subject, uint64(lines))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		// An app written to the store by other means than createApp.
		if err = s.st.EnsureAppLogs(ctx, a.Name, s.cfg.LogBytesPerApp); err == nil {
			start, err = s.st.LogTailStart(ctx, a.Name, subject, uint64(lines))
		}
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}, DeliverPolicy: jetstream.DeliverAllPolicy}
	if start > 0 {
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
	}
	cons, err := s.st.JetStream().OrderedConsumer(ctx, store.LogStream(a.Name), occ)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	info, err := cons.Info(ctx)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)

	// Replay history into a ring of the last `lines` lines.
	pending := info.NumPending
	var ring []api.LogLine
	for pending > 0 {
		batch, err := cons.Fetch(int(min(pending, 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			break
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			if md, err := msg.Metadata(); err == nil {
				pending = md.NumPending
			}
			var l api.LogLine
			if json.Unmarshal(msg.Data(), &l) == nil && lines > 0 {
				ring = append(ring, l)
				if len(ring) > lines {
					ring = ring[1:]
				}
			}
		}
		if got == 0 || batch.Error() != nil {
			break
		}
	}
	for _, l := range ring {
		_ = enc.Encode(l)
	}
	if flusher != nil {
		flusher.Flush()
	}
	if !follow {
		return
	}
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(15 * time.Second))
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			continue // no line in a while; keep following
		}
		var l api.LogLine
		if json.Unmarshal(msg.Data(), &l) != nil {
			continue
		}
		if enc.Encode(l) != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}

// ensureLogStreams makes every app's log stream at start (apps made
// before logs were kept per app, or a resized LogBytesPerApp).
func (s *Server) ensureLogStreams(ctx context.Context) error {
	apps, err := store.List[api.App](ctx, s.st.Apps, ">")
	if err != nil {
		return fmt.Errorf("server: apps for their log streams: %w", err)
	}
	for _, a := range apps {
		if err := s.st.EnsureAppLogs(ctx, a.Name, s.cfg.LogBytesPerApp); err != nil {
			return fmt.Errorf("server: %w", err)
		}
	}
	return nil
}
