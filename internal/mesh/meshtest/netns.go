// Package meshtest gives tests and benchmarks of the mesh two hosts in
// one kernel: two network namespaces joined by a veth pair, and a way to
// open sockets (or make TUN devices) inside either. Root only; imports
// nothing of Perch.
package meshtest

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Pair is two network namespaces joined by a veth pair.
type Pair struct {
	NS   [2]string     // paths under /run/netns
	Addr [2]netip.Addr // each end's IPv4 address on the veth
	// Link is each end's veth device name.
	Link  [2]string
	names [2]string
}

var seq atomic.Int64

// NewPair makes the namespaces (their loopback up) and the veth pair,
// 10.77.0.1/24 in the first and 10.77.0.2/24 in the second; Close removes
// them.
func NewPair() (*Pair, error) {
	id := fmt.Sprintf("pmt%d-%d", os.Getpid()%100000, seq.Add(1))
	p := &Pair{
		Addr:  [2]netip.Addr{netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.2")},
		Link:  [2]string{"veth-a", "veth-b"},
		names: [2]string{id + "a", id + "b"},
	}
	for i, n := range p.names {
		p.NS[i] = filepath.Join("/run/netns", n)
	}
	steps := [][]string{
		{"netns", "add", p.names[0]},
		{"netns", "add", p.names[1]},
		{"link", "add", "veth-a", "netns", p.names[0], "type", "veth", "peer", "name", "veth-b", "netns", p.names[1]},
	}
	for i := range 2 {
		steps = append(steps,
			[]string{"-n", p.names[i], "link", "set", "lo", "up"},
			[]string{"-n", p.names[i], "addr", "add", p.Addr[i].String() + "/24", "dev", p.Link[i]},
			[]string{"-n", p.names[i], "link", "set", p.Link[i], "up"},
		)
	}
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			p.Close()
			return nil, fmt.Errorf("meshtest: ip %s: %w: %s", strings.Join(s, " "), err, out)
		}
	}
	return p, nil
}

// SetMTU sets both ends of the veth pair to mtu (jumbo frames: 9000).
func (p *Pair) SetMTU(mtu int) error {
	for i, n := range p.names {
		if out, err := exec.Command("ip", "-n", n, "link", "set", p.Link[i], "mtu", fmt.Sprint(mtu)).CombinedOutput(); err != nil {
			return fmt.Errorf("meshtest: veth MTU %d: %w: %s", mtu, err, out)
		}
	}
	return nil
}

// Close deletes both namespaces (the veth pair and any TUN device in them
// go too).
func (p *Pair) Close() error {
	var first error
	for _, n := range p.names {
		if out, err := exec.Command("ip", "netns", "del", n).CombinedOutput(); err != nil && first == nil && !strings.Contains(string(out), "No such file") {
			first = fmt.Errorf("meshtest: ip netns del %s: %w: %s", n, err, out)
		}
	}
	return first
}

// In runs f on a thread inside namespace i: the sockets and devices f
// makes stay in it; goroutines f starts run outside it.
func (p *Pair) In(i int, f func() error) error { return InNetns(p.NS[i], f) }

// InNetns runs f on a thread inside the network namespace at path.
func InNetns(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with the goroutine rather than
		// going back to the pool in the wrong namespace.
		runtime.LockOSThread()
		ns, err := os.Open(path)
		if err != nil {
			errc <- fmt.Errorf("meshtest: %w", err)
			return
		}
		err = unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET)
		ns.Close()
		if err != nil {
			errc <- fmt.Errorf("meshtest: enter %s: %w", path, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
