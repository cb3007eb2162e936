// Package guestinit is perch-init, the first process of a Perch microVM,
// and the wire protocol (proto.go) the host's shim speaks to it. The perch
// binary runs Main when the kernel starts it as /perch-init; the slim
// build in ./perchinit does the same in a few MB instead of the whole perch
// binary. The init mounts /proc, /sys, /dev and /run for itself, loads the virtio
// modules packed into its initramfs, reads what to run from the host over
// a virtio-serial port, mounts the machine's disk, configures the network
// from the kernel command line (ip=, perch.ip6=, perch.dns=), runs the app as its child in a
// chroot of that disk (with the image's own /run, and ports below 1024
// open to any user, as under runc), forwards the host's signals to it, reaps every
// zombie, reports the app's output and exit code to the host, and powers
// the VM off when the app is gone. It imports nothing of Perch but x/sys,
// so it stays small.
package guestinit

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Paths inside the guest.
const (
	modulesDir = "/perch/modules" // kernel modules, loaded in name order
	newRoot    = "/newroot"       // the machine's disk, the app's root
)

// Main is the init. It returns only when the process is not PID 1 (run
// by hand by mistake); in the guest it ends by powering off.
func Main() int {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "perch-init is the init of a Perch microVM (PID 1 in the guest); it is not a command to run")
		return 2
	}
	g := &guest{boot: time.Now()}
	g.run()
	g.powerOff()
	return 0 // not reached
}

// guest is the init's state.
type guest struct {
	boot time.Time
	cmd  cmdline
	host *Writer // nil until the control port is open
	app  *app
}

func (g *guest) run() {
	if err := earlyMounts(); err != nil {
		g.logf("%v", err)
		return
	}
	g.cmd = parseCmdline()
	if g.cmd.probe {
		fmt.Println(ProbeOK)
		return
	}
	loadModules(modulesDir, g.logf)
	port, err := openPort(PortName, 20*time.Second)
	if err != nil {
		g.logf("%v", err)
		return
	}
	g.host = NewWriter(port)
	typ, payload, err := readFirstFrame(port, 20*time.Second)
	if err != nil || typ != FrameConfig {
		g.fail(ExitSetupFailed, "read the machine's config from the host: frame %q, %v", typ, err)
		return
	}
	var cfg Config
	if err := json.Unmarshal(payload, &cfg); err != nil {
		g.fail(ExitSetupFailed, "machine config: %v", err)
		return
	}
	g.app = newApp(g.host)
	bye := make(chan struct{})
	go g.readHost(port, bye)
	if err := g.prepare(cfg); err != nil {
		g.fail(ExitSetupFailed, "%v", err)
	} else {
		g.logf("kernel booted in %s, the guest ready in %s; starting %s", kernelBootTime(), uptime(), strings.Join(cfg.Args, " "))
		ooms := oomKills()
		code := g.app.run(cfg, newRoot)
		// Killed (137) while the guest's OOM killer acted: out of memory.
		g.reportExit(code, code == 128+9 && oomKills() > ooms)
	}
	// Wait for the host to have recorded everything before the power goes.
	select {
	case <-bye:
	case <-time.After(3 * time.Second):
		g.logf("the host did not acknowledge the exit; powering off anyway")
	}
}

// prepare makes the machine's disk the app's root, with its hostname and
// network.
func (g *guest) prepare(cfg Config) error {
	if err := mountRoot(g.cmd.root, g.cmd.rootType, 20*time.Second); err != nil {
		return err
	}
	if err := setupRoot(newRoot, cfg, g.cmd); err != nil {
		return err
	}
	if err := allowLowPorts(); err != nil {
		g.logf("%v; only root binds them", err) // a kernel before 4.11
	}
	return configureNetwork(g.cmd.ip, g.cmd.ip6, 20*time.Second)
}

// unprivilegedPortStart is the sysctl that lets any user bind ports from
// its value up (Linux 4.11 and later).
const unprivilegedPortStart = "/proc/sys/net/ipv4/ip_unprivileged_port_start"

// allowLowPorts lets a non-root app bind ports below 1024, as runc's
// CAP_NET_BIND_SERVICE (and Docker's sysctl) lets it in a sandbox: images
// run servers on port 80 as www-data. The VM is the machine's own, so the
// setting is too.
func allowLowPorts() error {
	if err := os.WriteFile(unprivilegedPortStart, []byte("0"), 0); err != nil {
		return fmt.Errorf("let the app bind ports below 1024: %w", err)
	}
	return nil
}

// readHost handles the host's frames after the config: signals for the
// app, and the final goodbye.
func (g *guest) readHost(port *os.File, bye chan<- struct{}) {
	for {
		typ, payload, err := ReadFrame(port)
		if err != nil {
			return
		}
		switch typ {
		case FrameSignal:
			var sig int
			if _, err := fmt.Sscan(string(payload), &sig); err == nil {
				g.app.signal(sig)
			}
		case FrameBye:
			close(bye)
			return
		}
	}
}

// fail reports a run that never reached the app.
func (g *guest) fail(code int, format string, args ...any) {
	msg := fmt.Sprintf("perch-init: "+format, args...)
	fmt.Fprintln(os.Stderr, msg)
	if g.host != nil {
		g.host.Send(FrameStderr, []byte(msg+"\n"))
		g.report(code)
	}
}

func (g *guest) report(code int) { g.reportExit(code, false) }

func (g *guest) reportExit(code int, oomKilled bool) {
	if err := g.host.Send(FrameExit, []byte(ExitPayload(code, oomKilled))); err != nil {
		g.logf("report exit code %d: %v", code, err)
	}
}

// ExitPayload is FrameExit's payload; ParseExit reads it.
func ExitPayload(code int, oomKilled bool) string {
	if oomKilled {
		return fmt.Sprintf("%d oom", code)
	}
	return fmt.Sprint(code)
}

// ParseExit reads FrameExit's payload.
func ParseExit(p []byte) (code int, oomKilled bool, err error) {
	c, rest, _ := strings.Cut(string(p), " ")
	code, err = strconv.Atoi(c)
	return code, rest == "oom", err
}

// oomKills is how many processes the guest kernel's OOM killer has ended.
func oomKills() int {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// logf writes to the console, which the host keeps as the machine's
// console log.
func (g *guest) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "perch-init: "+format+"\n", args...)
}
