package mesh

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
)

// maxDatagram is the largest datagram a frame carries (UDP's own limit).
const maxDatagram = 65535

// frameConn carries datagrams over a stream connection, each as a 2-byte
// big-endian length and its bytes: the relay's UDP flows.
type frameConn struct {
	net.Conn
	r  *bufio.Reader
	wu sync.Mutex // one frame at a time
}

func newFrameConn(c net.Conn) *frameConn {
	return &frameConn{Conn: c, r: bufio.NewReaderSize(c, 4096)}
}

// Read returns the next datagram, cut to len(b) as a UDP socket would.
func (f *frameConn) Read(b []byte) (int, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(f.r, hdr[:]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n <= len(b) {
		return io.ReadFull(f.r, b[:n])
	}
	if _, err := io.ReadFull(f.r, b); err != nil {
		return 0, err
	}
	_, err := f.r.Discard(n - len(b))
	return len(b), err
}

// Write sends b as one datagram.
func (f *frameConn) Write(b []byte) (int, error) {
	if len(b) > maxDatagram {
		return 0, errors.New("mesh: datagram larger than 65535 bytes")
	}
	buf := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(buf, uint16(len(b)))
	copy(buf[2:], b)
	f.wu.Lock()
	defer f.wu.Unlock()
	if _, err := f.Conn.Write(buf); err != nil {
		return 0, err
	}
	return len(b), nil
}

// spliceFrames carries a UDP flow on the relay's side: frames read from c
// (through cr, which may hold bytes already read) go to the machine's
// socket m as datagrams, and m's datagrams go back as frames, until c
// ends.
func spliceFrames(c net.Conn, cr *bufio.Reader, m net.Conn) {
	fc := &frameConn{Conn: c, r: cr}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, err := m.Read(buf)
			if err != nil {
				return
			}
			if _, err := fc.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, maxDatagram)
	for {
		n, err := fc.Read(buf)
		if err != nil {
			break
		}
		_, _ = m.Write(buf[:n]) // a machine not listening: the datagram is lost, as UDP's would be
	}
	m.Close() // ends the reader above
	<-done
}
