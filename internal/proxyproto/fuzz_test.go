package proxyproto

import (
	"bufio"
	"bytes"
	"net/netip"
	"testing"

	pires "github.com/pires/go-proxyproto"
)

// FuzzRead checks that Read never panics on any stream, never consumes a
// stream that is not a header, and that every header it accepts is written
// back to bytes that read as the same header.
func FuzzRead(f *testing.F) {
	for _, h := range headers {
		b, _ := h.Append(nil)
		f.Add(b)
	}
	f.Add([]byte("PROXY UNKNOWN ffff::1 ::1 1 2\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		h, err := Read(r)
		if err != nil {
			if err == ErrNoHeader && r.Buffered() != len(data) && len(data) <= 4096 {
				t.Fatalf("ErrNoHeader but %d of %d bytes left buffered", r.Buffered(), len(data))
			}
			return
		}
		if h.Version == 2 && !h.hasAddrs() {
			h.Local = true // written as LOCAL: nothing for the receiver to use
			h.Source, h.Destination = netip.AddrPort{}, netip.AddrPort{}
		}
		b, err := h.Append(nil)
		if err != nil {
			t.Fatalf("Append of a header Read accepted (%+v): %v", h, err)
		}
		back, err := Read(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			t.Fatalf("Read of the rewritten header %q: %v", b, err)
		}
		if *back != *h {
			t.Fatalf("round trip of %q via %q: %+v became %+v", data, b, *h, *back)
		}
	})
}

// FuzzWrite checks that every header the writer makes from any addresses
// reads back the same here and in the reference implementation.
func FuzzWrite(f *testing.F) {
	f.Add(uint8(1), false, []byte{203, 0, 113, 7}, uint16(5000), []byte{127, 0, 0, 1}, uint16(443), "")
	f.Add(uint8(2), false, bytes.Repeat([]byte{0x20}, 16), uint16(1), []byte{127, 0, 0, 1}, uint16(2), "app.example")
	f.Add(uint8(2), true, []byte{}, uint16(0), []byte{}, uint16(0), "")
	f.Fuzz(func(t *testing.T, version uint8, local bool, src []byte, sport uint16, dst []byte, dport uint16, authority string) {
		h := Header{Version: int(version%2) + 1, Local: local, Authority: authority}
		if h.Version == 1 {
			h.Local, h.Authority = false, ""
		}
		sa, ok1 := netip.AddrFromSlice(src)
		da, ok2 := netip.AddrFromSlice(dst)
		if ok1 && ok2 && !h.Local {
			h.Source, h.Destination = netip.AddrPortFrom(sa, sport), netip.AddrPortFrom(da, dport)
		}
		b, err := h.Append(nil)
		if err != nil {
			if len(authority) > MaxAuthority {
				return
			}
			t.Fatalf("Append(%+v): %v", h, err)
		}
		got, err := Read(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			t.Fatalf("Read(%q): %v", b, err)
		}
		if got.hasAddrs() {
			if got.Source.Port() != sport || got.Destination.Port() != dport ||
				got.Source.Addr().Unmap() != sa.Unmap() || got.Destination.Addr().Unmap() != da.Unmap() {
				t.Fatalf("wrote %v -> %v, read %v -> %v", h.Source, h.Destination, got.Source, got.Destination)
			}
		} else if h.hasAddrs() {
			t.Fatalf("wrote addresses %v -> %v, read none", h.Source, h.Destination)
		}
		if got.Authority != h.Authority {
			t.Fatalf("authority %q read as %q", h.Authority, got.Authority)
		}
		ph, err := pires.Read(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			t.Fatalf("pires cannot read %q: %v", b, err)
		}
		if h.hasAddrs() {
			s, d, ok := ph.TCPAddrs()
			if !ok || s.Port != int(sport) || d.Port != int(dport) || !s.IP.Equal(sa.AsSlice()) || !d.IP.Equal(da.AsSlice()) {
				t.Fatalf("pires read %v -> %v from %q, want %v -> %v", ph.SourceAddr, ph.DestinationAddr, b, h.Source, h.Destination)
			}
		}
	})
}
