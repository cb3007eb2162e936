// Package testport picks loopback ports for tests that bind a port, close
// it and bind it again, or hand a port number to another process.
//
// Ports come from below the kernel's ephemeral range (32768 and up), so no
// outgoing connection or unbound UDP socket of a test running beside this
// one can take the number between the pick and the bind.
package testport

import (
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
)

// Free is a port between 20000 and 32000 that is free on 127.0.0.1 for
// both TCP and UDP at the moment of the call.
func Free(t testing.TB) int {
	t.Helper()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return port
	}
	t.Fatal("testport: no port free for TCP and UDP between 20000 and 32000")
	return 0
}
