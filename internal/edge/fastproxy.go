package edge

import (
	"errors"
	"net/http"
)

// proxy sends the request in fc.h to a machine and copies the answer to
// the client: the status and body bytes the client got, and whether the
// connection serves on.
func (fc *fastConn) proxy(st *reqState) (status int, written int64, keep bool) {
	bc, end, err := fc.send(st, dest{st.host, st.portN}, &filter{}, "")
	if err == nil && fc.res.replay != nil {
		bc, end, err = fc.replay(st, bc)
	}
	if err != nil && fc.gone.Load() {
		return statusClientGone, 0, false // nobody reads an answer
	}
	if err != nil {
		a := &fastAnswer{}
		if !fc.e.answerError(a, st, err) {
			fc.e.log.Warn("could not proxy to machine", "request_id", st.id, "app", st.app, "err", err)
			unreachable(a, st)
		}
		return fc.answer(st, a, !fc.h.connClose)
	}
	return fc.respond(st, bc, end)
}

// replay follows the Perch-Replay answer in fc.res from bc's machine, as
// retryTransport.replay does.
func (fc *fastConn) replay(st *reqState, bc *backendConn) (*backendConn, int, error) {
	spec := string(fc.res.replay)
	bc.Close() // the answer is not what the client gets
	from := st.backend
	st.releaseSlot()
	st.replay = spec
	to, err := parseReplay(spec)
	if err != nil {
		return nil, 0, replayBadSpec(from, st, spec, err)
	}
	d := dest{st.host, st.portN}
	if to.app != "" {
		d.host = to.app + "." + fc.e.cfg.Domain
	}
	f := &filter{region: to.region, machine: to.instance}
	if to.elsewhere {
		f.exclude = []string{from.Target.MachineID}
	}
	bc, end, err := fc.send(st, d, f, replaySource(from, to))
	if errors.Is(err, errNoCandidate) {
		return nil, 0, replayNoMachine(st, spec)
	}
	if err != nil {
		return nil, 0, err
	}
	if again := fc.res.replay; again != nil {
		bc.Close()
		return nil, 0, replayAgain(spec, string(again))
	}
	return bc, end, nil
}

// respond copies the machine's answer, its head in fc.res and bc.r up to
// end, to the client.
func (fc *fastConn) respond(st *reqState, bc *backendConn, end int) (status int, written int64, keep bool) {
	rh := &fc.res
	status = rh.status
	noBody := methodIs(fc.h.method, http.MethodHead) || status == http.StatusNoContent || status == http.StatusNotModified
	closeDelim := !noBody && !rh.chunked && rh.length < 0
	keep = !closeDelim && !fc.h.connClose
	out := append(fc.out[:0], "HTTP/1.1"...)
	out = append(out, rh.line[8:]...)
	out = append(out, "\r\n"...)
	for _, line := range rh.lines {
		name, _, _ := fieldLine(line)
		if dropResponseHeader(name, rh.chunked) {
			continue
		}
		out = append(out, line...)
		out = append(out, "\r\n"...)
	}
	out = append(out, hdrRequestID+": "...)
	out = append(out, st.id...)
	out = append(out, "\r\nServer: "+serverName...)
	if !keep {
		out = append(out, "\r\nConnection: close"...)
	}
	out = append(out, "\r\n\r\n"...)

	// The body's first bytes go out with the head.
	bc.r = bc.r[end+4:]
	var (
		left  = rh.length // of a Content-Length body
		chunk chunkScan
		done  = noBody || rh.length == 0
	)
	take := func(b []byte) []byte {
		switch {
		case done:
			return b[:0]
		case rh.chunked:
			n, fin := chunk.scan(b)
			done = fin
			return b[:n]
		case left >= 0:
			n := int64(len(b))
			if n >= left {
				n, done = left, true
			}
			left -= n
			return b[:n]
		}
		return b // to the end of the connection
	}
	first := take(bc.r)
	bc.r = bc.r[len(first):]
	out = append(out, first...)
	fc.out = out
	written = int64(len(first))
	fc.sendDeadline()
	if _, err := fc.c.Write(out); err != nil {
		bc.Close()
		return status, 0, false
	}
	for !done {
		m, err := bc.Conn.Read(bc.buf)
		if m > 0 {
			part := take(bc.buf[:m])
			bc.r = bc.buf[len(part):m]
			fc.sendDeadline()
			if _, werr := fc.c.Write(part); werr != nil {
				bc.Close()
				return status, written, false
			}
			written += int64(len(part))
		}
		if err != nil {
			bc.Close()
			if closeDelim {
				return status, written, false
			}
			// The machine broke off its answer: the client cannot tell
			// where it ends either.
			fc.e.log.Warn("machine's answer broke off", "request_id", st.id, "app", st.app, "err", err)
			return status, written, false
		}
	}
	if rh.close || len(bc.r) > 0 || closeDelim {
		bc.Close()
	} else {
		fc.e.fastPool.put(st.backend.load, bc, fc.e.limits.BackendIdleTimeout)
	}
	return status, written, keep
}

// chunkScan follows a chunked body (RFC 9112 section 7.1) to find where
// it ends; the bytes pass through unchanged.
type chunkScan struct {
	state int
	n     int64 // chunk bytes left
	seen  bool  // a size digit was seen
}

const (
	csSize    = iota // chunk-size digits
	csExt            // chunk extensions, up to LF
	csData           // chunk data
	csDataCR         // CR after data
	csDataLF         // LF after data
	csTrailer        // start of a trailer line or the final CRLF
	csTrLine         // inside a trailer line
	csLastLF         // LF of the final CRLF
)

// scan consumes b up to the body's end: it says how many bytes belong to
// the body and whether it ended.
func (c *chunkScan) scan(b []byte) (int, bool) {
	for i := 0; i < len(b); i++ {
		ch := b[i]
		switch c.state {
		case csSize:
			switch {
			case ch >= '0' && ch <= '9':
				c.n, c.seen = c.n<<4|int64(ch-'0'), true
			case ch >= 'a' && ch <= 'f':
				c.n, c.seen = c.n<<4|int64(ch-'a'+10), true
			case ch >= 'A' && ch <= 'F':
				c.n, c.seen = c.n<<4|int64(ch-'A'+10), true
			case ch == '\n':
				c.endSize()
			default:
				c.state = csExt
			}
		case csExt:
			if ch == '\n' {
				c.endSize()
			}
		case csData:
			n := min(int64(len(b)-i), c.n)
			c.n -= n
			i += int(n) - 1
			if c.n == 0 {
				c.state = csDataCR
			}
		case csDataCR:
			c.state = csDataLF
			if ch == '\n' {
				c.state = csSize
			}
		case csDataLF:
			c.state = csSize
		case csTrailer:
			switch ch {
			case '\r':
				c.state = csLastLF
			case '\n':
				return i + 1, true
			default:
				c.state = csTrLine
			}
		case csTrLine:
			if ch == '\n' {
				c.state = csTrailer
			}
		case csLastLF:
			if ch == '\n' {
				return i + 1, true
			}
			c.state = csTrLine
		}
	}
	return len(b), false
}

// endSize ends a chunk-size line.
func (c *chunkScan) endSize() {
	if c.n == 0 {
		c.state = csTrailer
	} else {
		c.state = csData
	}
	c.seen = false
}

// replaySource is the Perch-Replay-Src of a replay from machine from.
func replaySource(from *Backend, to replayTo) string {
	src := "instance=" + from.Target.MachineID + ";region=" + from.Target.Region
	if to.state != "" {
		src += ";state=" + to.state
	}
	return src
}
