package devcluster_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/devcluster"
)

// labNet is a small private network for one test: a bridge in the root
// network namespace (the "switch", whose own address stands for the
// internet's clients) and named network namespaces joined to it by veths,
// each with its own IPv4 address, standing for separate hosts. Everything
// is named after the test process's pid, so a crashed run cannot block the
// next, and all of it is removed at cleanup.
type labNet struct {
	Bridge string
	Prefix netip.Prefix
	// RootIP is the bridge's address, the root namespace's on the lab net.
	RootIP netip.Addr
	Hosts  map[string]*labHost
	// dir holds the processes' logs.
	dir string
}

// labHost is one namespace on the lab net.
type labHost struct {
	Name string
	NS   string
	// Veth is the bridge-side end of the host's link, in the root
	// namespace: setting it down cuts the host off.
	Veth string
	IP   netip.Addr
	// MAC is the host's own interface (eth0 in its namespace), which
	// tells its frames apart in a capture of the bridge.
	MAC net.HardwareAddr
}

var labSeq atomic.Int32

// newLabNet makes the bridge and one namespace per name (at most 9).
func newLabNet(t *testing.T, names ...string) *labNet {
	t.Helper()
	tag := fmt.Sprintf("%d%c", os.Getpid(), 'a'+labSeq.Add(1)-1)
	prefix := freeLabPrefix(t)
	base := prefix.Addr().As4()
	l := &labNet{
		Bridge: "pmb" + tag,
		Prefix: prefix,
		RootIP: netip.AddrFrom4([4]byte{base[0], base[1], base[2], 1}),
		Hosts:  map[string]*labHost{},
		dir:    t.TempDir(),
	}
	// Deleting the namespaces removes their ends of the veths and so the
	// veths; deleting the bridge goes last.
	t.Cleanup(func() {
		for _, h := range l.Hosts {
			labIP(t, false, "netns", "del", h.NS)
			labIP(t, false, "link", "del", h.Veth)
		}
		labIP(t, false, "link", "del", l.Bridge)
		for _, h := range l.Hosts {
			if _, err := os.Stat(filepath.Join("/run/netns", h.NS)); err == nil {
				t.Errorf("network namespace %s left behind", h.NS)
			}
		}
		if exec.Command("ip", "link", "show", "dev", l.Bridge).Run() == nil {
			t.Errorf("bridge %s left behind", l.Bridge)
		}
	})
	labIP(t, true, "link", "add", l.Bridge, "type", "bridge")
	// IPv4 only on the lab's links: every frame between hosts in a
	// capture is then one the test can account for.
	noIPv6(t, "", l.Bridge)
	labIP(t, true, "addr", "add", netip.PrefixFrom(l.RootIP, 24).String(), "dev", l.Bridge)
	labIP(t, true, "link", "set", l.Bridge, "up")
	for i, name := range names {
		h := &labHost{
			Name: name,
			NS:   "pmh-" + tag + "-" + name,
			Veth: fmt.Sprintf("pmv%s%d", tag, i),
			IP:   netip.AddrFrom4([4]byte{base[0], base[1], base[2], byte(10 + i)}),
		}
		l.Hosts[name] = h
		labIP(t, true, "netns", "add", h.NS)
		labIP(t, true, "link", "add", h.Veth, "type", "veth", "peer", "name", "eth0", "netns", h.NS)
		labIP(t, true, "link", "set", h.Veth, "master", l.Bridge)
		noIPv6(t, "", h.Veth)
		labIP(t, true, "link", "set", h.Veth, "up")
		noIPv6(t, h.NS, "eth0")
		labIP(t, true, "-n", h.NS, "addr", "add", netip.PrefixFrom(h.IP, 24).String(), "dev", "eth0")
		labIP(t, true, "-n", h.NS, "link", "set", "eth0", "up")
		labIP(t, true, "-n", h.NS, "link", "set", "lo", "up")
		h.MAC = linkMAC(t, h.NS, "eth0")
	}
	return l
}

// freeLabPrefix picks a random 10.251.X.0/24 that no route or address of
// the root namespace overlaps.
func freeLabPrefix(t *testing.T) netip.Prefix {
	t.Helper()
	out, err := exec.Command("ip", "-j", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		t.Fatalf("read routes: %v", err)
	}
	var routes []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		t.Fatalf("parse ip route output: %v", err)
	}
	var used []netip.Prefix
	for _, r := range routes {
		dst := r.Dst
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if p, err := netip.ParsePrefix(dst); err == nil {
			used = append(used, p)
		}
	}
	for range 100 {
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 251, byte(rand.IntN(256)), 0}), 24)
		free := true
		for _, u := range used {
			if u.Overlaps(cand) {
				free = false
				break
			}
		}
		if free {
			return cand
		}
	}
	t.Fatalf("no free /24 in 10.251.0.0/16 for the test's network")
	return netip.Prefix{}
}

// labIP runs iproute2; with must, a failure ends the test.
func labIP(t *testing.T, must bool, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil && must {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// noIPv6 turns IPv6 off on dev in namespace ns ("" for the root one).
func noIPv6(t *testing.T, ns, dev string) {
	t.Helper()
	path := filepath.Join("/proc/sys/net/ipv6/conf", dev, "disable_ipv6")
	if _, err := os.Stat(path); err != nil {
		return // no IPv6 in this kernel
	}
	cmd := exec.Command("sh", "-c", "echo 1 > "+path)
	if ns != "" {
		cmd = exec.Command("ip", "netns", "exec", ns, "sh", "-c", "echo 1 > "+path)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("turn IPv6 off on %s in %q: %v\n%s", dev, ns, err, out)
	}
}

func linkMAC(t *testing.T, ns, dev string) net.HardwareAddr {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-j", "link", "show", "dev", dev).Output()
	if err != nil {
		t.Fatalf("ip link show %s in %s: %v", dev, ns, err)
	}
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("parse ip link output %q: %v", out, err)
	}
	mac, err := net.ParseMAC(links[0].Address)
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// hostOf names the lab host whose interface has mac; the root namespace
// (the bridge) for any other.
func (l *labNet) hostOf(mac net.HardwareAddr) string {
	for _, h := range l.Hosts {
		if bytes.Equal(h.MAC, mac) {
			return h.Name
		}
	}
	return "root"
}

// labProc is a process the test runs in a lab host, its output in a log
// file that the test prints when it fails.
type labProc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
}

// start runs args in h's network namespace until the test ends: then it
// is stopped with SIGTERM (SIGKILL after 20 s) and, if the test failed, its
// log printed. It enters only the network namespace (nsenter --net), not
// `ip netns exec`'s own mount namespace: that one remounts /sys, which
// hides the cgroup hierarchies mounted under /sys/fs/cgroup, and runc
// then fails with "no cgroup mount found in mountinfo".
func (l *labNet) start(t *testing.T, h *labHost, name string, env []string, args ...string) *labProc {
	t.Helper()
	p := &labProc{name: name, logPath: filepath.Join(l.dir, name+".log"), done: make(chan struct{})}
	lf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	p.cmd = exec.Command("nsenter", append([]string{"--net=" + filepath.Join("/run/netns", h.NS), "--"}, args...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	// nsenter execs the command, so this is the process itself; it dies
	// with the test process even if the test's cleanup never runs.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			p.printLog(t)
		}
	})
	return p
}

func (p *labProc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if !devcluster.WaitOrQuit(p.cmd.Process, p.done, 20*time.Second) {
		t.Errorf("%s did not stop in 20s after SIGTERM; killed (its goroutines are in its log, printed below)", p.name)
	}
}

// exited reports whether the process has ended, and how.
func (p *labProc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// printLog logs the end of the process's log (the last 64 kB), without
// the edge's access log (a JSON record per request), which would drown
// the rest; the file keeps everything.
func (p *labProc) printLog(t *testing.T) {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		t.Logf("%s log: %v", p.name, err)
		return
	}
	var kept [][]byte
	requests := 0
	for line := range bytes.Lines(b) {
		if bytes.HasPrefix(line, []byte("{")) && bytes.Contains(line, []byte(`"msg":"request"`)) {
			requests++
			continue
		}
		kept = append(kept, line)
	}
	b = bytes.Join(kept, nil)
	max := 64 << 10
	if i := bytes.Index(b, []byte("SIGQUIT: quit")); i >= 0 {
		// A goroutine dump (stop): all of it, and what came before.
		max = min(len(b)-i+16<<10, 512<<10)
	}
	if len(b) > max {
		b = append([]byte("...\n"), b[len(b)-max:]...)
	}
	t.Logf("----- %s (%s; %d access log lines left out) -----\n%s", p.name, p.logPath, requests, b)
}

// capFrame is one Ethernet frame of a capture, with the fields the test
// checks.
type capFrame struct {
	Data             []byte
	Src, Dst         net.HardwareAddr
	EtherType        uint16
	SrcIP, DstIP     netip.Addr // IPv4 only
	Proto            uint8      // IP protocol (6 TCP, 17 UDP)
	SrcPort, DstPort uint16
}

// readPcap reads a classic pcap file of Ethernet frames, as `tcpdump -w`
// writes on a bridge.
func readPcap(path string) ([]capFrame, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read capture: %w", err)
	}
	if len(b) < 24 {
		return nil, fmt.Errorf("capture %s: %d bytes, shorter than a pcap header", path, len(b))
	}
	var order binary.ByteOrder
	switch magic := binary.LittleEndian.Uint32(b); magic {
	case 0xa1b2c3d4, 0xa1b23c4d: // microsecond and nanosecond timestamps
		order = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		order = binary.BigEndian
	default:
		return nil, fmt.Errorf("capture %s: magic %#x is not pcap's (pcapng is not read here)", path, magic)
	}
	if lt := order.Uint32(b[20:]) & 0x0fffffff; lt != 1 {
		return nil, fmt.Errorf("capture %s: link type %d, want 1 (Ethernet)", path, lt)
	}
	var frames []capFrame
	for off := 24; off+16 <= len(b); {
		n := int(order.Uint32(b[off+8:]))
		off += 16
		if off+n > len(b) {
			break // the last record, cut short when tcpdump was stopped
		}
		frames = append(frames, parseFrame(b[off:off+n]))
		off += n
	}
	return frames, nil
}

func parseFrame(d []byte) capFrame {
	f := capFrame{Data: d}
	if len(d) < 14 {
		return f
	}
	f.Dst, f.Src = net.HardwareAddr(d[0:6]), net.HardwareAddr(d[6:12])
	f.EtherType = binary.BigEndian.Uint16(d[12:])
	ip := d[14:]
	if f.EtherType != 0x0800 || len(ip) < 20 {
		return f
	}
	ihl := int(ip[0]&0x0f) * 4
	f.Proto = ip[9]
	f.SrcIP = netip.AddrFrom4([4]byte(ip[12:16]))
	f.DstIP = netip.AddrFrom4([4]byte(ip[16:20]))
	fragOff := binary.BigEndian.Uint16(ip[6:]) & 0x1fff
	if (f.Proto == 6 || f.Proto == 17) && fragOff == 0 && len(ip) >= ihl+4 {
		f.SrcPort = binary.BigEndian.Uint16(ip[ihl:])
		f.DstPort = binary.BigEndian.Uint16(ip[ihl+2:])
	}
	return f
}

func (f capFrame) String() string {
	switch {
	case f.EtherType == 0x0806:
		return fmt.Sprintf("ARP %s > %s", f.Src, f.Dst)
	case f.SrcIP.IsValid() && f.SrcPort != 0:
		return fmt.Sprintf("IPv4 proto %d %s:%d > %s:%d, %d bytes", f.Proto, f.SrcIP, f.SrcPort, f.DstIP, f.DstPort, len(f.Data))
	case f.SrcIP.IsValid():
		return fmt.Sprintf("IPv4 proto %d %s > %s, %d bytes", f.Proto, f.SrcIP, f.DstIP, len(f.Data))
	}
	return fmt.Sprintf("ethertype %#04x %s > %s, %d bytes", f.EtherType, f.Src, f.Dst, len(f.Data))
}
