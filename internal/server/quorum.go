package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A clustered control plane stores a write only with a majority of its
// servers. Without one, a write fails within a few seconds with a 503
// saying so, rather than hanging: at once when this server's JetStream
// sees fewer than a majority of the servers up (requireQuorum), else when
// the store does not answer in time (quorumError: a store call's 5 s) or
// a cluster lock cannot be taken once the majority is known gone
// (clusterLock.LockCtx). Reads answer from this server's copy of each
// bucket meanwhile.

// lockGiveUp bounds how long a request waits for a cluster lock while
// the store fails to answer but a majority of servers seems up.
const lockGiveUp = 30 * time.Second

// noQuorum is the 503 for a write the cluster cannot store now.
func (s *Server) noQuorum(cause error) error {
	need := "a majority"
	if s.nats != nil {
		m := s.nats.Meta()
		need = fmt.Sprintf("%d of its %d servers", m.Size/2+1, m.Size)
	}
	msg := "the control plane has lost its quorum: fewer than " + need +
		" answer, so nothing can be stored or read (edges and agents keep serving from their own copies); start the servers that are down (`perch server status` on any server shows which) and try again"
	if cause != nil {
		msg += " (" + cause.Error() + ")"
	}
	return errf(http.StatusServiceUnavailable, "%s", msg)
}

// quorumLost reports whether this clustered server's JetStream sees
// fewer than a majority of its servers up (not merely no meta leader:
// one is elected after a server's death, and writes wait for it). Read at most every quorumCheckEvery (Meta is a
// monitoring call, not free at every write).
func (s *Server) quorumLost() bool {
	if !s.clustered() || s.nats == nil {
		return false
	}
	now := time.Now().UnixNano()
	if c := s.quorumCheck.Load(); c != nil && now-c.at < int64(quorumCheckEvery) {
		return c.lost
	}
	lost := !s.nats.Meta().Quorum()
	s.quorumCheck.Store(&quorumCheck{at: now, lost: lost})
	return lost
}

const quorumCheckEvery = 250 * time.Millisecond

// quorumCheck is quorumLost's last reading.
type quorumCheck struct {
	at   int64 // unix ns
	lost bool
}

// requireQuorum answers a write 503 at once while quorumLost.
func (s *Server) requireQuorum(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead && strings.HasPrefix(r.URL.Path, "/v1/") && s.quorumLost() {
			s.fail(w, r, s.noQuorum(nil))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// quorumError turns a store call that got no answer into a 503, for a
// clustered server (the quorum's if it is lost, else an election's); nil
// for any other error.
func (s *Server) quorumError(err error) error {
	if !s.clustered() || !unanswered(err) {
		return nil
	}
	if s.quorumLost() {
		return s.noQuorum(err)
	}
	// An election, over in seconds: the CLI asks a read again.
	return &httpError{code: http.StatusServiceUnavailable, retryAfter: "2",
		msg: fmt.Sprintf("the control plane's state store did not answer in time (%v): a server may have just stopped and a new leader is being elected; try again in a few seconds", err)}
}

// unanswered reports whether err is JetStream not answering: a timeout,
// no responders, or the cluster saying it is unavailable.
func unanswered(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		(errors.As(err, &apiErr) && apiErr.Code == http.StatusServiceUnavailable)
}

// electionWait bounds how long a read on a request's way in (whose token
// it carries) is asked again while a clustered store elects a new leader
// for the bucket: the request has done nothing yet, so waiting a few
// seconds costs the user less than a 503 on a write they must repeat.
const electionWait = 10 * time.Second

// readThroughElection runs read (each attempt bounded by 5 s) and asks
// again, for at most electionWait, while a clustered server's store does
// not answer and a majority of the servers is up: a stream's leader has
// just gone and another is being elected. Any other error, or the
// quorum lost, is returned at once.
func (s *Server) readThroughElection(ctx context.Context, read func(context.Context) error) error {
	deadline := time.Now().Add(electionWait)
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, time.Second) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := read(rctx)
		cancel()
		if err == nil || ctx.Err() != nil || !s.clustered() || !unanswered(err) || s.quorumLost() ||
			time.Now().Add(delay).After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
	}
}
