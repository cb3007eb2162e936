package proxyproto

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"strconv"
)

// WriteTo writes the header to w, as one Write so that it leaves in the
// first segment of the connection.
func (h *Header) WriteTo(w io.Writer) (int64, error) {
	b, err := h.Append(make([]byte, 0, 64))
	if err != nil {
		return 0, err
	}
	n, err := w.Write(b)
	return int64(n), err
}

// Append appends the encoded header to b. A header without addresses is
// written as v1 "UNKNOWN" or a v2 LOCAL command; addresses of mixed families are both written as IPv6.
func (h *Header) Append(b []byte) ([]byte, error) {
	src, dst := h.Source, h.Destination
	if h.hasAddrs() {
		src = netip.AddrPortFrom(src.Addr().WithZone(""), src.Port())
		dst = netip.AddrPortFrom(dst.Addr().WithZone(""), dst.Port())
		if src.Addr().Is4() != dst.Addr().Is4() {
			src = netip.AddrPortFrom(netip.AddrFrom16(src.Addr().As16()), src.Port())
			dst = netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), dst.Port())
		}
	}
	switch h.Version {
	case 1:
		return h.appendV1(b, src, dst), nil
	case 2:
		return h.appendV2(b, src, dst)
	}
	return b, fmt.Errorf("proxyproto: version %d is not 1 or 2", h.Version)
}

func (h *Header) appendV1(b []byte, src, dst netip.AddrPort) []byte {
	if !h.hasAddrs() {
		return append(b, "PROXY UNKNOWN\r\n"...)
	}
	fam := "TCP6"
	if src.Addr().Is4() {
		fam = "TCP4"
	}
	b = append(b, "PROXY "...)
	b = append(b, fam...)
	b = append(b, ' ')
	b = src.Addr().AppendTo(b)
	b = append(b, ' ')
	b = dst.Addr().AppendTo(b)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(src.Port()), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(dst.Port()), 10)
	return append(b, "\r\n"...)
}

func (h *Header) appendV2(b []byte, src, dst netip.AddrPort) ([]byte, error) {
	// Without addresses the command is LOCAL: readers (pires/go-proxyproto
	// among them) reject PROXY with an unspecified family.
	cmd, fam := byte(0x20), byte(0x00) // version 2, LOCAL; family unspecified
	var addrs []byte
	if h.hasAddrs() {
		cmd = 0x21 // PROXY
		if src.Addr().Is4() {
			fam = 0x11 // INET, STREAM
			s, d := src.Addr().As4(), dst.Addr().As4()
			addrs = append(append(addrs, s[:]...), d[:]...)
		} else {
			fam = 0x21 // INET6, STREAM
			s, d := src.Addr().As16(), dst.Addr().As16()
			addrs = append(append(addrs, s[:]...), d[:]...)
		}
		addrs = binary.BigEndian.AppendUint16(addrs, src.Port())
		addrs = binary.BigEndian.AppendUint16(addrs, dst.Port())
	}
	if len(h.Authority) > MaxAuthority {
		return b, fmt.Errorf("proxyproto: authority of %d bytes is not a host name (at most %d)", len(h.Authority), MaxAuthority)
	}
	n := len(addrs)
	if h.Authority != "" {
		n += 3 + len(h.Authority)
	}
	b = append(b, v2Sig[:]...)
	b = append(b, cmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = append(b, addrs...)
	if h.Authority != "" {
		b = append(b, tlvAuthority)
		b = binary.BigEndian.AppendUint16(b, uint16(len(h.Authority)))
		b = append(b, h.Authority...)
	}
	return b, nil
}
