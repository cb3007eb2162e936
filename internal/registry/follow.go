package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// follower applies the manifest stream, in order, to this server's
// handler: from its first record at start (what a journal's replay did),
// then each new one, whichever server stored it.
type follower struct {
	r      *Registry
	stream jetstream.Stream
	done   chan struct{}

	// applyMu orders applying a record with the check that it is new:
	// a record is applied once, by the consumer or by catchUp's direct
	// read, whichever comes first.
	applyMu sync.Mutex

	mu      sync.Mutex
	it      jetstream.MessagesContext
	stopped bool
	applied uint64        // the stream sequence applied last
	changed chan struct{} // closed and replaced at each apply
}

// startTimeout bounds New's wait for the manifests already stored: a
// clustered server rejoining may wait for its stream's leader.
const startTimeout = 2 * time.Minute

// attemptTimeout bounds one JetStream API request of follow's: such a
// request goes unanswered (no error, no reply) while the stream's or
// the meta group's leader is being elected, or for seconds after two
// servers made the stream at once, and is then sent again.
const attemptTimeout = 5 * time.Second

func (r *Registry) follow(ctx context.Context) (*follower, error) {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var (
		stream jetstream.Stream
		last   uint64
		err    error
	)
	for try := 1; ; try++ {
		began := time.Now()
		actx, acancel := context.WithTimeout(ctx, attemptTimeout)
		if stream, err = r.shared.JS.Stream(actx, r.shared.Stream); err == nil {
			var info *jetstream.StreamInfo
			if info, err = stream.Info(actx); err == nil {
				last = info.State.LastSeq
				acancel()
				break
			}
		}
		acancel()
		if try == 1 || time.Since(began) >= attemptTimeout {
			r.log.Warn("manifest stream: not readable yet; retrying", "stream", r.shared.Stream, "try", try,
				"took", time.Since(began).Round(time.Millisecond), "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("manifest stream %s: %w", r.shared.Stream, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return nil, fmt.Errorf("follow manifest stream %s: %w", r.shared.Stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("follow manifest stream %s: %w", r.shared.Stream, err)
	}
	f := &follower{r: r, stream: stream, done: make(chan struct{}), it: it, changed: make(chan struct{})}
	go f.run(cons)
	// upTo, not wait: an ordered consumer may be placed on a replica
	// still catching up (a replaced server's own, empty one) and deliver
	// nothing for a long while; the writes it has not brought within a
	// second are read from the stream's leader.
	if err := f.upTo(ctx, last); err != nil {
		f.stop()
		return nil, fmt.Errorf("read the %d manifest writes stored: %w", last, err)
	}
	if last > 0 {
		r.log.Info("restored manifests", "records", last)
	}
	return f, nil
}

func (f *follower) run(cons jetstream.Consumer) {
	defer close(f.done)
	for {
		f.mu.Lock()
		it := f.it
		f.mu.Unlock()
		// Bounded: an ordered consumer resetting (its stream deleted and
		// made again: perch server restore) can miss the Stop of stop().
		msg, err := it.Next(jetstream.NextMaxWait(time.Second))
		if err != nil {
			f.mu.Lock()
			stopped := f.stopped
			f.mu.Unlock()
			if stopped {
				return
			}
			if errors.Is(err, nats.ErrTimeout) {
				continue
			}
			f.r.log.Debug("manifest stream", "err", err)
			time.Sleep(250 * time.Millisecond)
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				if it, err = cons.Messages(); err == nil {
					f.mu.Lock()
					if f.stopped {
						f.mu.Unlock()
						it.Stop()
						return
					}
					f.it = it
					f.mu.Unlock()
				}
			}
			continue
		}
		md, err := msg.Metadata()
		if err != nil {
			continue
		}
		f.apply(md.Sequence.Stream, msg.Data())
	}
}

func (f *follower) apply(seq uint64, data []byte) {
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	f.mu.Lock()
	old := seq <= f.applied
	f.mu.Unlock()
	if old {
		return
	}
	var rec record
	if data == nil {
		// gone from the stream: nothing to apply
	} else if err := json.Unmarshal(data, &rec); err != nil {
		f.r.log.Warn("manifest stream: a record is not JSON; skipped", "seq", seq, "err", err)
	} else {
		f.r.mu.Lock()
		rw := f.r.apply(context.Background(), rec)
		f.r.mu.Unlock()
		// A server applies its own write before storing it: a delete
		// then finds nothing the second time.
		if !success(rw.code) && (rec.Op != opDelete || rw.code != http.StatusNotFound) {
			f.r.log.Warn("manifest stream: record rejected", "seq", seq,
				"op", rec.Op, "name", rec.Name, "reference", rec.Reference, "status", rw.code)
		}
	}
	f.mu.Lock()
	f.applied = seq
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// wait returns once the stream is applied up to seq.
func (f *follower) wait(ctx context.Context, seq uint64) error {
	for {
		f.mu.Lock()
		applied, ch := f.applied, f.changed
		f.mu.Unlock()
		if applied >= seq {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("applied up to %d of %d: %w", applied, seq, ctx.Err())
		case <-ch:
		}
	}
}

func (f *follower) stop() {
	f.mu.Lock()
	f.stopped = true
	it := f.it
	f.mu.Unlock()
	it.Stop()
	<-f.done
}

// catchUp returns once this server has applied every manifest write
// stored so far.
func (r *Registry) catchUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := r.follower.stream.Info(ctx)
	if err != nil {
		return err
	}
	return r.follower.upTo(ctx, info.State.LastSeq)
}

// upTo returns once the stream is applied up to seq. The consumer
// brings it within moments, unless it is being recreated (its stream's
// leader changed): then the records are read from the stream directly.
func (f *follower) upTo(ctx context.Context, seq uint64) error {
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	err := f.wait(wctx, seq)
	cancel()
	if err == nil {
		return nil
	}
	f.mu.Lock()
	from := f.applied + 1
	f.mu.Unlock()
	for n := from; n <= seq; n++ {
		msg, err := f.stream.GetMsg(ctx, n)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			f.apply(n, nil) // not JSON: skipped, counted applied
		case err != nil:
			return fmt.Errorf("read manifest write %d: %w", n, err)
		default:
			f.apply(n, msg.Data)
		}
	}
	return nil
}
