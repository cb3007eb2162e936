package store

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Log retention. Every machine's lines are a subject of their own
// (LogSubject), and the stream keeps at most LogLinesPerMachine of each,
// so a machine flooding its output evicts only its own older lines, never
// another machine's or another app's. Lines are cut at LogLineMax bytes.
const (
	LogLinesPerMachine = 10_000
	LogLineMax         = 16 << 10
)

func logStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              StreamLogs,
		Subjects:          []string{"perch.logs.>"},
		Storage:           jetstream.FileStorage,
		MaxAge:            7 * 24 * time.Hour,
		MaxBytes:          1 << 30,
		MaxMsgsPerSubject: LogLinesPerMachine,
		MaxMsgSize:        LogLineMax + 4<<10, // the line and its JSON envelope
		Discard:           jetstream.DiscardOld,
	}
}

// LogTailStart returns the stream sequence from which the last n lines
// matching filter are delivered, or 0 when the stream holds n or fewer of
// them (deliver all). It asks the server how many lines follow a
// sequence (a consumer's pending count) and halves the range each time,
// so `perch logs -n 1` costs a few dozen round trips whatever the stream
// holds, instead of reading every line.
func (s *Store) LogTailStart(ctx context.Context, filter string, n uint64) (uint64, error) {
	stream, err := s.js.Stream(ctx, StreamLogs)
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
