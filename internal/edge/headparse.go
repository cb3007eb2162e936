package edge

import "bytes"

// reqHead is a request head parsed in place: every slice points into the
// bytes it was parsed from. One parser serves the guard in front of
// net/http (guard.go) and the HTTP/1.1 fast path (fast.go), so both refuse
// exactly the same requests (RFC 9112 framing, request smuggling).
type reqHead struct {
	framing
	method, target []byte
	http10         bool
	host           []byte
	hosts          int
	// lines are the header field lines (without CRLF), in order.
	lines [][]byte
	// Connection tokens and Expect, for the fast path.
	connClose, connKeepAlive bool
	expect                   bool
	// connNames holds the Connection header's values: the fields it names
	// are hop-by-hop too.
	connNames [][]byte
}

// reset empties h for the next head, keeping its slices' memory.
func (h *reqHead) reset() {
	lines, names := h.lines[:0], h.connNames[:0]
	*h = reqHead{lines: lines, connNames: names}
}

// parseHead parses a request head (request line and header lines, each
// ending in CRLF, without the empty line) into h, checking it against RFC
// 9112: it says false for any head whose framing another parser could read
// differently.
func parseHead(head []byte, h *reqHead) bool {
	h.reset()
	if len(head) < 2 || bytes.IndexByte(head, 0) >= 0 {
		return false
	}
	rest := head[:len(head)-2]
	line, rest, more := cutLine(rest)
	method, target, http10, ok := requestLineParts(line)
	if !ok {
		return false
	}
	h.method, h.target, h.http10 = method, target, http10
	var cl, te int
	var upgradeHdr, connUpgrade bool
	for more {
		line, rest, more = cutLine(rest)
		name, value, ok := fieldLine(line)
		if !ok {
			return false
		}
		h.lines = append(h.lines, line)
		switch {
		case equalFold(name, "Content-Length"):
			cl++
			n, ok := decimal(value)
			if !ok {
				return false
			}
			h.length = n
		case equalFold(name, "Transfer-Encoding"):
			te++
			if !equalFold(value, "chunked") {
				return false
			}
			h.chunked = true
		case equalFold(name, "Host"):
			h.hosts++
			h.host = value
		case equalFold(name, "Upgrade"):
			upgradeHdr = true
		case equalFold(name, "Expect"):
			h.expect = true
		case equalFold(name, "Connection"):
			h.connNames = append(h.connNames, value)
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				tok = bytes.Trim(tok, " \t")
				switch {
				case equalFold(tok, "upgrade"):
					connUpgrade = true
				case equalFold(tok, "close"):
					h.connClose = true
				case equalFold(tok, "keep-alive"):
					h.connKeepAlive = true
				}
			}
		}
	}
	switch {
	case cl > 1, te > 1, h.hosts > 1, cl > 0 && te > 0, te > 0 && http10:
		return false
	}
	h.upgrade = upgradeHdr && connUpgrade || string(method) == "CONNECT"
	return true
}

// cutLine splits b at its first CRLF; more says there was one.
func cutLine(b []byte) (line, rest []byte, more bool) {
	if i := bytes.Index(b, crlf); i >= 0 {
		return b[:i], b[i+2:], true
	}
	return b, nil, false
}

var crlf = []byte("\r\n")

// requestLineParts checks method SP request-target SP HTTP-version.
func requestLineParts(line []byte) (method, target []byte, http10, ok bool) {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 1 {
		return nil, nil, false, false
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 < 1 {
		return nil, nil, false, false
	}
	sp2 += sp1 + 1
	method, target, version := line[:sp1], line[sp1+1:sp2], line[sp2+1:]
	for _, c := range method {
		if !isTchar(c) {
			return nil, nil, false, false
		}
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return nil, nil, false, false
		}
	}
	switch string(version) {
	case "HTTP/1.1":
		return method, target, false, true
	case "HTTP/1.0":
		return method, target, true, true
	}
	return nil, nil, false, false
}
