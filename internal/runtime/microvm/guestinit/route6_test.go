package guestinit

import (
	"testing"

	"github.com/perchhq/perch/internal/hostnet"
)

// A microVM routes other hosts' and organisations' 6PN as a runc machine
// does (hostnet.Attach).
func TestRoute6AsRuncMachines(t *testing.T) {
	if range6 != hostnet.Range6 || uint32(hostnet.Route6MTU) != route6MTU {
		t.Fatalf("guest routes %s with MTU %d; runc machines %s with MTU %d", range6, route6MTU, hostnet.Range6, hostnet.Route6MTU)
	}
}
