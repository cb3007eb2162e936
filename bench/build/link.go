package main

import (
	"log"
	"net"
	"strings"
	"sync"
	"time"
)

// link stands for the network between perch deploy and a builder that is
// not on the deploying host (a per-organisation builder machine): a TCP
// listener on loopback whose connections reach the daemon's unix socket
// with every byte delayed by half the round trip and the bandwidth capped,
// in each direction. Only the client↔builder path crosses it (the build
// context, progress); the builder's own pulls and pushes do not.
type link struct {
	ln     net.Listener
	oneWay time.Duration
	rate   float64 // bytes per second
}

// newLink serves a link to the buildkitd at unixAddr (unix:///path) and
// returns it; its Addr is the tcp:// address for BuildKit's client.
func newLink(unixAddr string, rtt time.Duration, mbit float64) *link {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	l := &link{ln: ln, oneWay: rtt / 2, rate: mbit * 1e6 / 8}
	path := strings.TrimPrefix(unixAddr, "unix://")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("unix", path)
			if err != nil {
				log.Printf("link: %v", err)
				c.Close()
				continue
			}
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { l.pipe(d, c); wg.Done() }()
			go func() { l.pipe(c, d); wg.Done() }()
			go func() { wg.Wait(); c.Close(); d.Close() }()
		}
	}()
	return l
}

func (l *link) Addr() string { return "tcp://" + l.ln.Addr().String() }

func (l *link) Close() { l.ln.Close() }

// pipe copies src to dst: each chunk leaves when the link has sent the
// ones before it at l.rate, and arrives l.oneWay later.
func (l *link) pipe(dst, src net.Conn) {
	type chunk struct {
		due time.Time
		b   []byte
	}
	ch := make(chan chunk, 1024)
	go func() {
		defer close(ch)
		var free time.Time // when the link has sent everything queued
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				now := time.Now()
				if free.Before(now) {
					free = now
				}
				free = free.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
				ch <- chunk{due: free.Add(l.oneWay), b: buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	for range ch { // let the reader finish
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
