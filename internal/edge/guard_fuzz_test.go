package edge

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// piecesConn is a client connection whose reads return data in pieces of
// the given sizes (cycled), then EOF.
type piecesConn struct {
	net.Conn // nil: only Read is used
	data     []byte
	sizes    []byte
	i        int
}

func (c *piecesConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := 1 + int(c.sizes[c.i%len(c.sizes)])
	c.i++
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func (c *piecesConn) SetReadDeadline(time.Time) error { return nil }

// guardOutput is what net/http would read through a guardConn over conn,
// with reads of readSize bytes, and how it ended.
func guardOutput(conn net.Conn, readSize int) ([]byte, error) {
	g := newGuardConn(conn, 1<<10, nil)
	var out bytes.Buffer
	p := make([]byte, readSize)
	for range 1 << 16 {
		n, err := g.Read(p)
		out.Write(p[:n])
		if err != nil {
			return out.Bytes(), err
		}
	}
	return out.Bytes(), errors.New("no end after 65536 reads")
}

// FuzzGuardPieces is differential: the framing checks must hand net/http
// the same bytes, and end the same way, whether the client's bytes arrive
// in one read or in pieces of any sizes, and whatever size net/http reads
// with. (A head split over two reads once turned the checks off for the
// rest of the connection.)
func FuzzGuardPieces(f *testing.F) {
	for _, tc := range smuggleCases() {
		if len(tc.raw) < 4096 {
			f.Add([]byte(tc.raw), []byte{0, 6, 2}, uint16(4096))
		}
	}
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET"), []byte{3}, uint16(1))
	f.Fuzz(func(t *testing.T, data, sizes []byte, readSize uint16) {
		if len(data) > 8192 || len(sizes) == 0 {
			return
		}
		rs := 1 + int(readSize%8192)
		want, wantErr := guardOutput(&wholeConn{data: data}, 1<<16)
		got, gotErr := guardOutput(&piecesConn{data: data, sizes: sizes}, rs)
		if !bytes.Equal(got, want) {
			t.Fatalf("in pieces %v (reads of %d) net/http gets\n%q\nbut in one read\n%q", sizes, rs, got, want)
		}
		if gotErr != wantErr {
			t.Fatalf("in pieces the connection ends with %v, in one read with %v", gotErr, wantErr)
		}
	})
}

// wholeConn returns all its data in one read, then EOF.
type wholeConn struct {
	net.Conn
	data []byte
}

func (c *wholeConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.data)
	c.data = c.data[n:]
	return n, nil
}
