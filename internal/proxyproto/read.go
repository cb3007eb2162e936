package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// Read reads a PROXY header of either version from the start of r. When
// the stream starts with something else it returns ErrNoHeader and leaves
// r as it was. r's buffer must hold at least 107 bytes (bufio's default
// does).
func Read(r *bufio.Reader) (*Header, error) {
	// Decide on as few bytes as have arrived, so a stream that is not
	// PROXY protocol is recognised without waiting for more.
	for n := 1; ; n++ {
		b, err := r.Peek(n)
		if len(b) < n {
			if len(b) == 0 {
				return nil, err
			}
			return nil, fmt.Errorf("proxyproto: header cut short: %w", noEOF(err))
		}
		v1 := n <= len("PROXY ") && string(b) == "PROXY "[:n]
		v2 := n <= len(v2Sig) && bytes.Equal(b, v2Sig[:n])
		switch {
		case !v1 && !v2:
			return nil, ErrNoHeader
		case v1 && n == len("PROXY "):
			return readV1(r)
		case v2 && n == len(v2Sig):
			return readV2(r)
		}
	}
}

// noEOF turns a clean end of stream inside a header into an unexpected one.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func readV1(r *bufio.Reader) (*Header, error) {
	// Find the end of the line within the longest header, without reading
	// past it.
	var line []byte
	for n := 6; ; n++ {
		b, err := r.Peek(n)
		if len(b) == n && b[n-1] == '\n' {
			line = b
			break
		}
		if err != nil {
			return nil, fmt.Errorf("proxyproto: v1 header cut short: %w", noEOF(err))
		}
		if n >= v1Max {
			return nil, errors.New("proxyproto: v1 header longer than 107 bytes")
		}
	}
	h, err := parseV1(line)
	if err != nil {
		return nil, err
	}
	_, _ = r.Discard(len(line))
	return h, nil
}

func parseV1(line []byte) (*Header, error) {
	s, ok := strings.CutSuffix(string(line), "\r\n")
	if !ok {
		return nil, errors.New("proxyproto: v1 header does not end with CRLF")
	}
	f := strings.Split(s, " ")
	h := &Header{Version: 1}
	if len(f) >= 2 && f[0] == "PROXY" && f[1] == "UNKNOWN" {
		return h, nil // the rest of the line is to be ignored
	}
	if len(f) != 6 || f[0] != "PROXY" || (f[1] != "TCP4" && f[1] != "TCP6") {
		return nil, fmt.Errorf("proxyproto: v1 header %q is not PROXY TCP4|TCP6 src dst sport dport", s)
	}
	src, err1 := v1Addr(f[2], f[4], f[1] == "TCP4")
	dst, err2 := v1Addr(f[3], f[5], f[1] == "TCP4")
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("proxyproto: v1 header %q: %w", s, err)
	}
	h.Source, h.Destination = src, dst
	return h, nil
}

func v1Addr(ip, port string, four bool) (netip.AddrPort, error) {
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" || a.Is4() != four {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", ip)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || port[0] == '+' {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", port)
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}

func readV2(r *bufio.Reader) (*Header, error) {
	var head [v2HeadLen]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, fmt.Errorf("proxyproto: v2 header cut short: %w", noEOF(err))
	}
	body := make([]byte, binary.BigEndian.Uint16(head[14:]))
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("proxyproto: v2 header cut short: %w", noEOF(err))
	}
	return parseV2(head[12], head[13], body)
}

func parseV2(verCmd, fam byte, body []byte) (*Header, error) {
	if verCmd>>4 != 2 {
		return nil, fmt.Errorf("proxyproto: v2 header has version %d", verCmd>>4)
	}
	h := &Header{Version: 2}
	switch verCmd & 0xf {
	case 0:
		h.Local = true
	case 1:
	default:
		return nil, fmt.Errorf("proxyproto: v2 header has unknown command %d", verCmd&0xf)
	}
	var alen int
	switch fam >> 4 {
	case 0: // unspecified: no addresses
	case 1:
		alen = 12
	case 2:
		alen = 36
	case 3:
		alen = 216 // AF_UNIX: read past, not used
	default:
		return nil, fmt.Errorf("proxyproto: v2 header has unknown address family %d", fam>>4)
	}
	if len(body) < alen {
		return nil, fmt.Errorf("proxyproto: v2 header of %d bytes cannot hold its addresses", len(body))
	}
	if !h.Local && (alen == 12 || alen == 36) {
		n := (alen - 4) / 2
		sa, _ := netip.AddrFromSlice(body[:n])
		da, _ := netip.AddrFromSlice(body[n : 2*n])
		h.Source = netip.AddrPortFrom(sa, binary.BigEndian.Uint16(body[2*n:]))
		h.Destination = netip.AddrPortFrom(da, binary.BigEndian.Uint16(body[2*n+2:]))
	}
	tlvs := body[alen:]
	for len(tlvs) > 0 {
		if len(tlvs) < 3 {
			return nil, errors.New("proxyproto: v2 header ends inside a TLV")
		}
		typ, n := tlvs[0], int(binary.BigEndian.Uint16(tlvs[1:]))
		if len(tlvs) < 3+n {
			return nil, errors.New("proxyproto: v2 TLV runs past the header")
		}
		if typ == tlvAuthority && h.Authority == "" && n <= MaxAuthority {
			h.Authority = string(tlvs[3 : 3+n]) // a longer one is no host name: ignored
		}
		tlvs = tlvs[3+n:]
	}
	return h, nil
}
