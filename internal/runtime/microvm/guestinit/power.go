package guestinit

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// powerOff ends the VM: what the app left running is killed, the disk is
// unmounted, and the kernel powers off, which ends qemu.
func (g *guest) powerOff() {
	syscall.Kill(-1, syscall.SIGKILL)
	for {
		if pid, _ := unix.Wait4(-1, nil, unix.WNOHANG, nil); pid <= 0 {
			break
		}
	}
	unix.Sync()
	unmountRoot()
	unix.Sync()
	for {
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		// Only an init without CAP_SYS_BOOT gets here; PID 1 must not exit.
		time.Sleep(time.Second)
	}
}

// kernelBootTime is when the kernel started this init, by its own log:
// the timestamp of "Run /perch-init as init process".
func kernelBootTime() string {
	buf := make([]byte, 1<<20)
	n, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf)
	if err != nil {
		return "?"
	}
	for line := range bytes.Lines(buf[:n]) {
		if !bytes.Contains(line, []byte(" as init process")) {
			continue
		}
		// "<6>[    0.812345] Run /perch-init as init process"
		open, end := bytes.IndexByte(line, '['), bytes.IndexByte(line, ']')
		if open < 0 || end < open {
			break
		}
		secs, err := strconv.ParseFloat(string(bytes.TrimSpace(line[open+1:end])), 64)
		if err != nil {
			break
		}
		return fmt.Sprintf("%.3fs", secs)
	}
	return "?"
}

// uptime is how long the guest kernel has run, from /proc/uptime.
func uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	secs, _, _ := strings.Cut(string(b), " ")
	return secs + "s"
}
