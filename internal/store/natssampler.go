package store

import (
	"strings"
	_ "unsafe" // go:linkname

	_ "github.com/nats-io/nats-server/v2/server/pse" // the sampler below
)

// natsProcStatFile is the file nats-server's pse package samples for its
// CPU figure (varz). Its init starts a sampler that reads the file and
// re-arms itself every second, in every process that links nats-server,
// which is every perch process, each machine's shim included: 50 idle
// shims woken once a second cost a host about 1 % of a core (bench/idle).
// The sampler stops re-arming once the read fails.
//
//go:linkname natsProcStatFile github.com/nats-io/nats-server/v2/server/pse.procStatFile
var natsProcStatFile string

// QuietNATSSampler stops nats-server's CPU sampler (at its next tick, within
// a second) in a process that runs no NATS server: the agent and the
// shims. Only the control plane's embedded server reports its CPU.
func QuietNATSSampler() {
	// The sampler may be reading the variable at this moment (it runs on
	// its own timer; nothing orders the two): a string of the same length
	// reads whole whichever half of the write it sees, where "" could be
	// read as a nil pointer with the old length. No such file exists.
	natsProcStatFile = "/" + strings.Repeat("x", max(len(natsProcStatFile)-1, 1))
}
