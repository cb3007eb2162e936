package hostnet

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// mptcpSysctl is the switch for Multipath TCP, per network namespace.
const mptcpSysctl = "/proc/sys/net/mptcp/enabled"

// disableMPTCP turns Multipath TCP off in namespace ns. Go servers open
// MPTCP listening sockets by default where the kernel has it, and CRIU
// cannot checkpoint MPTCP sockets, so a machine could not be suspended;
// with MPTCP off they fall back to plain TCP. A kernel without MPTCP has
// nothing to turn off.
func disableMPTCP(ns string) error {
	if _, err := os.Stat(mptcpSysctl); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.mptcp.enabled=0").CombinedOutput()
	if err != nil {
		return fmt.Errorf("disable MPTCP in %s (CRIU cannot suspend MPTCP sockets): %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}
