package proxyproto

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"

	pires "github.com/pires/go-proxyproto"
)

var headers = []Header{
	{Version: 1, Source: netip.MustParseAddrPort("203.0.113.7:51234"), Destination: netip.MustParseAddrPort("127.0.0.1:443")},
	{Version: 1, Source: netip.MustParseAddrPort("[2001:db8::7]:51234"), Destination: netip.MustParseAddrPort("[::1]:5432")},
	{Version: 1},
	{Version: 2, Source: netip.MustParseAddrPort("203.0.113.7:1"), Destination: netip.MustParseAddrPort("10.0.0.1:65535")},
	{Version: 2, Source: netip.MustParseAddrPort("[2001:db8::7]:51234"), Destination: netip.MustParseAddrPort("[::1]:5432"), Authority: "db.example.com"},
	{Version: 2, Local: true},
	{Version: 2, Local: true, Authority: "only.example"},
}

// Whatever this package writes, the reference implementation that apps use
// (pires/go-proxyproto) reads as the same addresses, and so does Read.
func TestWriteReadsBackEverywhere(t *testing.T) {
	for _, h := range headers {
		b, err := h.Append(nil)
		if err != nil {
			t.Fatalf("%+v: %v", h, err)
		}
		payload := "hello after the header"
		got, err := Read(bufio.NewReader(strings.NewReader(string(b) + payload)))
		if err != nil {
			t.Fatalf("Read(%q): %v", b, err)
		}
		if *got != h {
			t.Errorf("Read of %q = %+v, wrote %+v", b, *got, h)
		}

		r := bufio.NewReader(strings.NewReader(string(b) + payload))
		ph, err := pires.Read(r)
		if err != nil {
			t.Fatalf("pires.Read(%q): %v", b, err)
		}
		if int(ph.Version) != h.Version {
			t.Errorf("pires read version %d, want %d", ph.Version, h.Version)
		}
		if h.hasAddrs() {
			src, dst, ok := ph.TCPAddrs()
			if !ok || src.AddrPort() != h.Source || dst.AddrPort() != h.Destination {
				t.Errorf("pires read %v -> %v, want %v -> %v", ph.SourceAddr, ph.DestinationAddr, h.Source, h.Destination)
			}
		}
		if h.Authority != "" {
			tlvs, err := ph.TLVs()
			if err != nil || len(tlvs) != 1 || tlvs[0].Type != pires.PP2_TYPE_AUTHORITY || string(tlvs[0].Value) != h.Authority {
				t.Errorf("pires read TLVs %v (%v), want the authority %q", tlvs, err, h.Authority)
			}
		}
		if rest, _ := io.ReadAll(r); string(rest) != payload {
			t.Errorf("after the header pires left %q, want the payload", rest)
		}
	}
}

// Headers written by the reference implementation read the same here.
func TestReadsReferenceHeaders(t *testing.T) {
	src := &net.TCPAddr{IP: net.ParseIP("198.51.100.2"), Port: 40000}
	dst := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 25}
	for _, v := range []byte{1, 2} {
		ph := pires.HeaderProxyFromAddrs(v, src, dst)
		if v == 2 {
			if err := ph.SetTLVs([]pires.TLV{{Type: pires.PP2_TYPE_NOOP, Value: []byte{0}}, {Type: pires.PP2_TYPE_AUTHORITY, Value: []byte("mail.example")}}); err != nil {
				t.Fatal(err)
			}
		}
		var buf bytes.Buffer
		if _, err := ph.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		buf.WriteString("EHLO")
		r := bufio.NewReader(&buf)
		h, err := Read(r)
		if err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		want := Header{Version: int(v), Source: src.AddrPort(), Destination: dst.AddrPort()}
		want.Source = netip.AddrPortFrom(want.Source.Addr().Unmap(), want.Source.Port())
		want.Destination = netip.AddrPortFrom(want.Destination.Addr().Unmap(), want.Destination.Port())
		if v == 2 {
			want.Authority = "mail.example"
		}
		if *h != want {
			t.Errorf("v%d: read %+v, want %+v", v, *h, want)
		}
		if rest, _ := io.ReadAll(r); string(rest) != "EHLO" {
			t.Errorf("v%d: after the header %q, want EHLO", v, rest)
		}
	}
}

func TestNoHeaderLeavesStreamAlone(t *testing.T) {
	for _, in := range []string{"GET / HTTP/1.1\r\n\r\n", "\x16\x03\x01\x00\x05hello", "P", "\r\n\r\nX"} {
		r := bufio.NewReader(strings.NewReader(in))
		if _, err := Read(r); !errors.Is(err, ErrNoHeader) && !(in == "P" && errors.Is(err, io.ErrUnexpectedEOF)) {
			t.Errorf("Read(%q) = %v, want ErrNoHeader", in, err)
		}
		if rest, _ := io.ReadAll(r); string(rest) != in && in != "P" {
			t.Errorf("Read(%q) consumed bytes: %q left", in, rest)
		}
	}
}

func TestRejectsBadHeaders(t *testing.T) {
	for _, in := range []string{
		"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
		"PROXY TCP4 ::1 ::1 1 2\r\n",
		"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
		"PROXY " + strings.Repeat("A", 200) + "\r\n",
		string(v2Sig[:]) + "\x31\x11\x00\x00",                          // version 3
		string(v2Sig[:]) + "\x21\x11\x00\x04\x01\x02\x03\x04",          // addresses cut
		string(v2Sig[:]) + "\x21\x00\x00\x04\x02\x00\x05\x61",          // TLV cut
		string(v2Sig[:]) + "\x21\x11\x00\x10" + strings.Repeat("x", 3), // body cut
	} {
		if h, err := Read(bufio.NewReader(strings.NewReader(in))); err == nil || errors.Is(err, ErrNoHeader) {
			t.Errorf("Read(%q) = %+v, %v; want an error saying what is wrong", in, h, err)
		}
	}
}
