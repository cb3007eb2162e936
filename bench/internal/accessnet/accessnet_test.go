package accessnet

import (
	"bufio"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// TestDelayConn: with 15 ms one way, connecting takes a round trip, an echo
// takes another, and writing does not wait for the network.
func TestDelayConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	const oneWay = 15 * time.Millisecond
	t0 := time.Now()
	c, err := DialDelayed(oneWay)(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if d := time.Since(t0); d < 2*oneWay || d > 2*oneWay+20*time.Millisecond {
		t.Errorf("dial took %s, want one round trip, %s", d, 2*oneWay)
	}
	r := bufio.NewReader(c)
	for range 3 {
		t0 = time.Now()
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(t0); d > 5*time.Millisecond {
			t.Errorf("write blocked for %s", d)
		}
		line, err := r.ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("echo = %q, %v", line, err)
		}
		if d := time.Since(t0); d < 2*oneWay || d > 2*oneWay+20*time.Millisecond {
			t.Errorf("echo took %s, want one round trip, %s", d, 2*oneWay)
		}
	}
}
