package edge

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
)

// Perch-Replay, like Fly's fly-replay: a machine answers with the header
// Perch-Replay: region=fra (or instance=<machine id>, app=<app>, or
// elsewhere=true, several joined by ";") and the edge sends the request
// there instead, once, with a Perch-Replay-Src header saying where it came
// from. The client only sees the second answer. Up to maxReplayBody of the
// request body is kept for that.

// maxReplayBody is the largest request body the edge keeps for a replay.
const maxReplayBody = 1 << 20

// replayTo is a parsed Perch-Replay header.
type replayTo struct {
	region, instance, app, state string
	elsewhere                    bool
}

func parseReplay(v string) (replayTo, error) {
	var to replayTo
	for field := range strings.SplitSeq(v, ";") {
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		k, val, ok := strings.Cut(field, "=")
		k, val = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(val)
		if !ok || val == "" {
			return to, fmt.Errorf("%q is not key=value", field)
		}
		switch k {
		case "region":
			to.region = strings.ToLower(val)
		case "instance":
			to.instance = val
		case "app":
			to.app = strings.ToLower(val)
		case "state":
			to.state = val
		case "elsewhere":
			to.elsewhere = val == "true"
		default:
			// Other fields are for other proxies; ignore them.
		}
	}
	if to.region == "" && to.instance == "" && to.app == "" && !to.elsewhere {
		return to, errors.New("it names no region=, instance=, app= or elsewhere=true")
	}
	return to, nil
}

// replayError is a replay the edge could not make, answered with status.
type replayError struct {
	status int
	msg    string
}

func (e *replayError) Error() string { return e.msg }

// replay follows a Perch-Replay answer res of the machine st.backend.
func (t *retryTransport) replay(req *http.Request, st *reqState, res *http.Response, spec string, body *replayBody) (*http.Response, error) {
	// The answer is not what the client gets. A short one is read so the
	// connection can serve again; reading a stream could block.
	if res.ContentLength >= 0 && res.ContentLength <= 64<<10 {
		_, _ = io.Copy(io.Discard, res.Body)
	}
	res.Body.Close()
	from := st.backend
	st.releaseSlot()
	st.replay = spec
	to, err := parseReplay(spec)
	if err != nil {
		return nil, replayBadSpec(from, st, spec, err)
	}
	if body != nil && !body.replayable() {
		return nil, &replayError{http.StatusRequestEntityTooLarge, fmt.Sprintf(
			"perch: app %q asked to replay this request elsewhere (%s: %s), but its body is over %d bytes, more than the edge keeps for a replay. Send a smaller body, or have the app not replay large requests.",
			st.app, hdrReplay, spec, maxReplayBody)}
	}
	d := dest{st.host, st.portN}
	if to.app != "" {
		d.host = to.app + "." + t.e.cfg.Domain
	}
	f := &filter{region: to.region, machine: to.instance}
	if to.elsewhere {
		f.exclude = []string{from.Target.MachineID}
	}
	r := req.Clone(req.Context())
	r.Header.Set(hdrReplaySrc, replaySource(from, to))
	res, err = t.send(r, st, d, f, body)
	if errors.Is(err, errNoCandidate) {
		return nil, replayNoMachine(st, spec)
	}
	if err != nil {
		return nil, err
	}
	if again := res.Header.Get(hdrReplay); again != "" {
		res.Body.Close()
		return nil, replayAgain(spec, again)
	}
	return res, nil
}

// replayBadSpec is the answer to a Perch-Replay header the edge cannot read.
func replayBadSpec(from *Backend, st *reqState, spec string, err error) error {
	return &replayError{http.StatusBadGateway, fmt.Sprintf(
		"perch: machine %s of app %q answered with a %s header the edge does not understand (%q: %v). Use region=<code>, instance=<machine id>, app=<name> or elsewhere=true, separated by \";\".",
		from.Target.MachineID, st.app, hdrReplay, spec, err)}
}

// replayNoMachine is the answer to a replay no started machine can take.
func replayNoMachine(st *reqState, spec string) error {
	return &replayError{http.StatusBadGateway, fmt.Sprintf(
		"perch: app %q asked to replay this request (%s: %s), but no started machine is there. Run \"perch status\" to see where its machines run.",
		st.app, hdrReplay, spec)}
}

// replayAgain is the answer to a replayed request whose machine asked for
// another replay.
func replayAgain(spec, again string) error {
	return &replayError{http.StatusBadGateway, fmt.Sprintf(
		"perch: the request was replayed (%s: %s) and the machine it reached asked for another replay (%s); the edge replays a request once.",
		hdrReplay, spec, again)}
}

// replayBody is the client's request body, kept (up to maxReplayBody) as
// attempts read it, so that a replay can send it again. Attempts read in
// turn: a new one stops the previous one from reading more.
type replayBody struct {
	// readMu is held across reads, so attempts never read rc at once. mu
	// guards the fields and is never held while rc blocks: a client that
	// stalls its body must not stall the edge's bookkeeping.
	readMu sync.Mutex
	mu     sync.Mutex
	rc     io.ReadCloser
	buf    []byte // every byte read from rc so far, while keep
	keep   bool
	read   int64 // bytes read from rc
	err    error // rc's final error, once seen
	gen    int   // the current attempt
}

func newReplayBody(rc io.ReadCloser, contentLength int64) *replayBody {
	return &replayBody{rc: rc, keep: contentLength <= maxReplayBody}
}

// attempt is a fresh reader of the whole body for the next attempt.
func (b *replayBody) attempt() *attemptBody {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gen++
	return &attemptBody{b: b, gen: b.gen}
}

// replayable says whether a new attempt can still read the whole body. It
// waits for a read in progress, whose bytes count.
func (b *replayBody) replayable() bool {
	b.readMu.Lock()
	defer b.readMu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.keep || b.read == 0
}

// bytesRead is how much of the body came from the client.
func (b *replayBody) bytesRead() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.read
}

var errAttemptOver = errors.New("edge: the request body moved on to another attempt")

// attemptBody is one attempt's reader of a replayBody. Close is a no-op:
// the proxy closes the client's body when the request ends.
type attemptBody struct {
	b   *replayBody
	gen int
	pos int64
}

func (a *attemptBody) Read(p []byte) (int, error) {
	b := a.b
	b.readMu.Lock()
	defer b.readMu.Unlock()
	b.mu.Lock()
	switch {
	case a.gen != b.gen:
		b.mu.Unlock()
		return 0, errAttemptOver
	case a.pos < b.read: // what an earlier attempt read
		defer b.mu.Unlock()
		if !b.keep {
			return 0, errAttemptOver
		}
		n := copy(p, b.buf[a.pos:])
		a.pos += int64(n)
		return n, nil
	case b.err != nil:
		b.mu.Unlock()
		return 0, b.err
	}
	b.mu.Unlock()
	n, err := b.rc.Read(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.keep {
		if b.read+int64(n) > maxReplayBody {
			b.keep, b.buf = false, nil
		} else {
			b.buf = append(b.buf, p[:n]...)
		}
	}
	b.read += int64(n)
	if err != nil {
		b.err = err
	}
	if a.gen != b.gen {
		return 0, errAttemptOver // the bytes are kept for the new attempt
	}
	a.pos += int64(n)
	return n, err
}

func (a *attemptBody) Close() error { return nil }

// sent says whether the attempt passed any of the body on.
func (a *attemptBody) sent() bool {
	if a == nil {
		return false
	}
	a.b.mu.Lock()
	defer a.b.mu.Unlock()
	return a.pos > 0
}
