package edge

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"golang.org/x/crypto/cryptobyte"
)

// Before a connection on a shared port goes anywhere, the edge reads the
// client's TLS ClientHello without consuming it: its server name (SNI)
// says which app the connection is for, and the bytes are then replayed to
// crypto/tls (termination) or to the machine (passthrough) as they came.

// maxClientHello bounds how much of a ClientHello the edge buffers, as
// crypto/tls bounds handshake messages. Real ones are under 2 KiB even with
// post-quantum key shares.
const maxClientHello = 64 << 10

// maxUselessRecords is how many warning alerts may come before the hello,
// as in crypto/tls.
const maxUselessRecords = 16

const (
	recordTypeAlert          = 0x15
	recordTypeHandshake      = 0x16
	handshakeTypeClientHello = 0x01
	extServerName            = 0
	extALPN                  = 16
)

// clientHello is what the edge reads from a ClientHello.
type clientHello struct {
	serverName string   // lower case, no trailing dot; "" if none
	alpn       []string // the protocols the client offers
}

var errNotClientHello = errors.New("not a TLS ClientHello")

// parseClientHello reads a ClientHello from the TLS records at the start of
// data, which may carry it in several fragments. When data is too short it
// returns need, the length data must have for the next try (an
// over-estimate is never returned; need is 0 once the hello is parsed).
func parseClientHello(data []byte) (h clientHello, need int, err error) {
	var msg []byte // the handshake message, reassembled
	skipped := 0
	for off := 0; ; {
		if len(data) < off+5 {
			return h, off + 5, nil
		}
		// Records are checked as crypto/tls checks a client's first ones,
		// so that the edge and the TLS stack it hands over to agree.
		typ, vers, n := data[off], data[off+1], int(data[off+3])<<8|int(data[off+4])
		if (typ != recordTypeHandshake && typ != recordTypeAlert) || vers >= 0x10 {
			return h, 0, errNotClientHello
		}
		if n > 1<<14 {
			return h, 0, fmt.Errorf("TLS record of %d bytes: %w", n, errNotClientHello)
		}
		if len(data) < off+5+n {
			return h, off + 5 + n, nil
		}
		rec := data[off+5 : off+5+n]
		off += 5 + n
		if typ == recordTypeAlert {
			// A warning (not close_notify) is dropped, a few times at most.
			if skipped++; n != 2 || rec[0] != 1 || rec[1] == 0 || skipped > maxUselessRecords {
				return h, 0, fmt.Errorf("TLS alert before the ClientHello: %w", errNotClientHello)
			}
			continue
		}
		if n == 0 {
			return h, 0, fmt.Errorf("empty TLS handshake record: %w", errNotClientHello)
		}
		msg = append(msg, rec...)
		if len(msg) < 4 {
			continue
		}
		if msg[0] != handshakeTypeClientHello {
			return h, 0, errNotClientHello
		}
		total := 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]))
		if total-4 > maxClientHello {
			return h, 0, fmt.Errorf("ClientHello of %d bytes is too long", total)
		}
		if len(msg) >= total {
			h, err = parseHelloBody(msg[4:total])
			return h, 0, err
		}
	}
}

func parseHelloBody(body []byte) (clientHello, error) {
	var h clientHello
	s := cryptobyte.String(body)
	var sessionID, suites, compression, exts cryptobyte.String
	if !s.Skip(2+32) || // legacy_version, random
		!s.ReadUint8LengthPrefixed(&sessionID) ||
		!s.ReadUint16LengthPrefixed(&suites) ||
		!s.ReadUint8LengthPrefixed(&compression) {
		return h, errors.New("malformed ClientHello")
	}
	if s.Empty() {
		return h, nil // no extensions: no name, no ALPN
	}
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return h, errors.New("malformed ClientHello extensions")
	}
	seen := map[uint16]bool{}
	for !exts.Empty() {
		var typ uint16
		var ext cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&ext) {
			return h, errors.New("malformed ClientHello extension")
		}
		if seen[typ] {
			return h, fmt.Errorf("ClientHello repeats extension %d", typ)
		}
		seen[typ] = true
		var err error
		switch typ {
		case extServerName:
			h.serverName, err = parseServerName(ext)
		case extALPN:
			h.alpn, err = parseALPN(ext)
		}
		if err != nil {
			return h, err
		}
	}
	return h, nil
}

// parseServerName reads the host_name entry of a server_name extension
// (RFC 6066 section 3), the way crypto/tls does.
func parseServerName(ext cryptobyte.String) (string, error) {
	var list cryptobyte.String
	if !ext.ReadUint16LengthPrefixed(&list) || list.Empty() || !ext.Empty() {
		return "", errors.New("malformed server_name extension")
	}
	var name string
	for !list.Empty() {
		var typ uint8
		var host cryptobyte.String
		if !list.ReadUint8(&typ) || !list.ReadUint16LengthPrefixed(&host) {
			return "", errors.New("malformed server_name extension")
		}
		if typ != 0 {
			continue
		}
		if name != "" {
			return "", errors.New("server_name extension names two hosts")
		}
		name = string(host)
		if name == "" {
			return "", errors.New("server_name extension has an empty name")
		}
	}
	return normalizeSNI(name), nil
}

// normalizeSNI makes a server name a key of Snapshot.names.
func normalizeSNI(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

func parseALPN(ext cryptobyte.String) ([]string, error) {
	var list cryptobyte.String
	if !ext.ReadUint16LengthPrefixed(&list) || list.Empty() || !ext.Empty() {
		return nil, errors.New("malformed ALPN extension")
	}
	var protos []string
	for !list.Empty() {
		var p cryptobyte.String
		if !list.ReadUint8LengthPrefixed(&p) || p.Empty() {
			return nil, errors.New("malformed ALPN extension")
		}
		protos = append(protos, string(p))
	}
	return protos, nil
}

// peekConn is a connection whose first bytes were read ahead to decide
// where it goes; reads return them again first.
type peekConn struct {
	net.Conn
	buf []byte
}

// fill reads until at least n bytes are buffered.
func (c *peekConn) fill(n int) error {
	if cap(c.buf) < n {
		c.buf = append(make([]byte, 0, max(n, 1024)), c.buf...)
	}
	for len(c.buf) < n {
		m, err := c.Conn.Read(c.buf[len(c.buf):cap(c.buf)])
		c.buf = c.buf[:len(c.buf)+m]
		if err != nil && len(c.buf) < n {
			return err
		}
	}
	return nil
}

// peekClientHello reads ahead until the ClientHello is complete.
func (c *peekConn) peekClientHello() (clientHello, error) {
	for {
		h, need, err := parseClientHello(c.buf)
		if err != nil || need == 0 {
			return h, err
		}
		if err := c.fill(need); err != nil {
			return h, fmt.Errorf("read ClientHello: %w", err)
		}
	}
}

func (c *peekConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// WriteTo replays the buffered bytes, then copies the connection with
// whatever io.Copy does best (splice between two TCP connections).
func (c *peekConn) WriteTo(w io.Writer) (int64, error) {
	var n int64
	if len(c.buf) > 0 {
		m, err := w.Write(c.buf)
		n += int64(m)
		c.buf = c.buf[m:]
		if err != nil {
			return n, err
		}
	}
	m, err := io.Copy(w, c.Conn)
	return n + m, err
}
