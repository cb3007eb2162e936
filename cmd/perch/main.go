// Command perch is Perch's one binary: the CLI users deploy with, the
// control plane (perch server), the host agent (perch agent), the one-machine
// world (perch dev), the shims agents start machines through (runc, microVM),
// and, copied into each microVM's initramfs as /perch-init, the guest's init.
//
// Go's sysmon re-reads the cgroup CPU limit every second to adjust
// GOMAXPROCS; an idle shim per machine would wake for it each time.
//
//go:debug updatemaxprocs=0
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/perchhq/perch/internal/cli"
	"github.com/perchhq/perch/internal/runtime/microvm/guestinit"
)

var version = "dev"

func main() {
	// A microVM's kernel starts this binary as its init, by that name.
	if filepath.Base(os.Args[0]) == "perch-init" {
		os.Exit(guestinit.Main())
	}
	root := cli.NewRoot(version)
	root.AddCommand(serverCmd(), agentCmd(), devCmd(), shimCmd(), microvmShimCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
