// Command perch is Perch's one binary: the CLI users deploy with, the
// control plane (perch server), the host agent (perch agent), the one-machine
// world (perch dev) and the runc shim agents start machines through.
package main

import (
	"fmt"
	"os"

	"github.com/perchhq/perch/internal/cli"
)

var version = "dev"

func main() {
	root := cli.NewRoot(version)
	root.AddCommand(serverCmd(), agentCmd(), devCmd(), shimCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
