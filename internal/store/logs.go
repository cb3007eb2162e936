package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Log retention. Each app's lines are a stream of their own
// (LogStream), so that one app's flood can never evict another app's
// lines, however many machines it floods from; within it every machine's
// lines are a subject of their own (LogSubject) of at most
// LogLinesPerMachine lines, so a machine flooding evicts its own older
// lines before its neighbours'. Lines are cut at LogLineMax bytes.
const (
	LogLinesPerMachine = 10_000
	LogLineMax         = 16 << 10
	// LogBytesPerApp is an app's log stream's size by default.
	LogBytesPerApp  = 256 << 20
	logStreamPrefix = StreamLogs + "_"
)

// LogStream is the name of app's log stream.
func LogStream(app string) string { return logStreamPrefix + app }

func logStreamConfig(app string, maxBytes int64) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              LogStream(app),
		Subjects:          []string{LogFilter(app)},
		Storage:           jetstream.FileStorage,
		MaxAge:            7 * 24 * time.Hour,
		MaxBytes:          maxBytes,
		MaxMsgsPerSubject: LogLinesPerMachine,
		MaxMsgSize:        LogLineMax + 4<<10, // the line and its JSON envelope
		Discard:           jetstream.DiscardOld,
	}
}

// EnsureAppLogs makes (or resizes) app's log stream, of maxBytes
// (LogBytesPerApp if 0); lines published before it exists are lost.
func (s *Store) EnsureAppLogs(ctx context.Context, app string, maxBytes int64) error {
	if maxBytes <= 0 {
		maxBytes = LogBytesPerApp
	}
	// Made by the server that takes the app's create, whichever.
	if err := s.ensureStream(ctx, logStreamConfig(app, maxBytes), true); err != nil {
		return fmt.Errorf("log stream of app %s: %w", app, err)
	}
	return nil
}

// DeleteAppLogs removes app's log stream, its lines with it: an app made
// later with the same name starts with an empty log.
func (s *Store) DeleteAppLogs(ctx context.Context, app string) error {
	err := s.js.DeleteStream(ctx, LogStream(app))
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("log stream of app %s: %w", app, err)
	}
	return nil
}

// dropSharedLogStream removes the one log stream of every app that
// earlier versions kept (PERCH_LOGS, subjects perch.logs.>): its subjects
// overlap the apps' own streams, which JetStream refuses. Its lines are
// lost.
func dropSharedLogStream(ctx context.Context, js jetstream.JetStream) error {
	err := js.DeleteStream(ctx, StreamLogs)
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("remove the shared log stream %s of an earlier version: %w", StreamLogs, err)
	}
	return nil
}

// LogTailStart returns the sequence of app's log stream from which the
// last n lines matching filter are delivered, or 0 when the stream holds n or fewer of
// them (deliver all). It asks the server how many lines follow a
// sequence (a consumer's pending count) and halves the range each time,
// so `perch logs -n 1` costs a few dozen round trips whatever the stream
// holds, instead of reading every line.
func (s *Store) LogTailStart(ctx context.Context, app, filter string, n uint64) (uint64, error) {
	stream, err := s.js.Stream(ctx, LogStream(app))
	if err != nil {
		return 0, fmt.Errorf("log stream: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("log stream: %w", err)
	}
	pending := func(seq uint64) (uint64, error) {
		c, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
			FilterSubject:     filter,
			DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:       seq,
			AckPolicy:         jetstream.AckNonePolicy,
			MemoryStorage:     true,
			InactiveThreshold: 30 * time.Second,
		})
		if err != nil {
			return 0, fmt.Errorf("log stream: count lines from %d: %w", seq, err)
		}
		ci := c.CachedInfo()
		_ = stream.DeleteConsumer(ctx, ci.Name)
		return ci.NumPending, nil
	}
	first, last := info.State.FirstSeq, info.State.LastSeq
	if first == 0 || last < first {
		return 0, nil
	}
	total, err := pending(first)
	if err != nil || total <= n {
		return 0, err
	}
	// pending is non-increasing in seq; find the last seq with pending >= n.
	lo, hi := first, last
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		p, err := pending(mid)
		if err != nil {
			return 0, err
		}
		if p >= n {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo, nil
}
