// Command perchinit is the slim build of perch-init: the guest init alone,
// a few MB instead of the whole perch binary, so each microVM spends less
// memory and boot time on it. An agent uses it when it finds it beside the
// perch binary as perch-init (make build puts it there), or where
// --microvm-init points; the tests use it too. Build it static:
//
//	CGO_ENABLED=0 go build -trimpath -o bin/perch-init ./internal/runtime/microvm/guestinit/perchinit
package main

import (
	"os"

	"github.com/perchhq/perch/internal/runtime/microvm/guestinit"
)

func main() { os.Exit(guestinit.Main()) }
