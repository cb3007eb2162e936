package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The idle-connection benchmark (-idle N): N clients each open a
// keep-alive connection to the proxy, send one GET, read its 200, and then
// stay connected and silent, as browsers between page views do. What it
// reports is how much the proxy's memory grew for holding them: the sum of
// the proportional set size (Pss, /proc/PID/smaps_rollup) of the proxy's
// processes, so nginx's workers do not count their shared pages twice.

// perClientConns keeps each client address under the Perch edge's
// MaxConnsPerClient (256): the connections come from many addresses of
// 127.0.0.0/8, as from many users.
const perClientConns = 200

type idleResult struct {
	before, after int64 // kB
	n             int
}

func (r idleResult) perConn() float64 { return float64(r.after-r.before) / float64(r.n) }

// idleMemory holds n idle connections to addr (over TLS if tlsOn) and
// measures the memory of the processes pids returns before and after.
func idleMemory(addr string, tlsOn bool, n int, pids func() []int) idleResult {
	before := pssKB(pids())
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	next := make(chan int)
	var errOnce sync.Once
	var firstErr error
	for range 32 {
		wg.Go(func() {
			for i := range next {
				c, err := openIdle(addr, tlsOn, i)
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("connection %d: %w", i, err) })
					continue
				}
				conns[i] = c
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if firstErr != nil {
		log.Fatalf("idle connections to %s: %v", addr, firstErr)
	}
	// Let the proxy settle (a GC cycle, freed buffers) and check that
	// every connection is still open: a proxy that closed some would look
	// cheaper than it is.
	time.Sleep(3 * time.Second)
	after := pssKB(pids())
	open := 0
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil && isTimeout(err) {
			open++
		}
	}
	if open != n {
		log.Fatalf("%s closed %d of %d idle connections within seconds", addr, n-open, n)
	}
	return idleResult{before: before, after: after, n: n}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// openIdle opens connection i from its client address, sends one GET and
// reads the whole answer.
func openIdle(addr string, tlsOn bool, i int) (net.Conn, error) {
	src := &net.TCPAddr{IP: net.IPv4(127, 20, byte(i/perClientConns/250), byte(1+i/perClientConns%250))}
	d := net.Dialer{LocalAddr: src, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if tlsOn {
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: host, NextProtos: []string{"http/1.1"}})
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, err
		}
		c = tc
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || res.Close {
		c.Close()
		return nil, fmt.Errorf("answered %s (close=%v), want a 200 kept alive", res.Status, res.Close)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// pssKB is the summed Pss of pids, in kB.
func pssKB(pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"))
		if err != nil {
			log.Fatalf("memory of pid %d: %v", pid, err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Pss:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				sum += kb
			}
		}
	}
	return sum
}

// withChildren is pid and its direct children (nginx's workers).
func withChildren(pid int) func() []int {
	return func() []int {
		pids := []int{pid}
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			child, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if err != nil {
				continue
			}
			// pid (comm) state ppid ...: comm may hold spaces, so cut at
			// the last ')'.
			s := string(b)
			f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
			if len(f) > 1 && f[1] == strconv.Itoa(pid) {
				pids = append(pids, child)
			}
		}
		return pids
	}
}

// runIdle measures every proxy holding n idle connections, over TLS if
// tlsOn. One protocol per run: Go's heap keeps what a first round freed and
// would hand it to the second, which would then look cheaper than it is.
func runIdle(n int, tlsOn bool, proxies []idleProxy) {
	proto := "HTTP/1.1"
	if tlsOn {
		proto = "HTTP/1.1 over TLS"
	}
	fmt.Printf("## Memory for %d idle keep-alive client connections, %s (growth of the summed Pss of the proxy's processes)\n\n", n, proto)
	fmt.Printf("| proxy | connections | before | after | per connection |\n|---|---|---|---|---|\n")
	res := map[string]idleResult{}
	for _, p := range proxies {
		addr := p.addr
		if tlsOn {
			addr = p.tlsAddr
		}
		r := idleMemory(addr, tlsOn, n, p.pids)
		res[p.name] = r
		fmt.Printf("| %s | %d | %.1f MiB | %.1f MiB | %.1f kB |\n", p.name, n, float64(r.before)/1024, float64(r.after)/1024, r.perConn())
	}
	fmt.Printf("\nperch edge / nginx memory per idle connection: %.1f; perch edge / caddy: %.2f\n", res["perch edge"].perConn()/res["nginx"].perConn(), res["perch edge"].perConn()/res["caddy"].perConn())
}

type idleProxy struct {
	name, addr, tlsAddr string
	pids                func() []int
}
