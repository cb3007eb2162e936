package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	goruntime "runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/mesh"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/store"
)

// inNetns runs f on an OS thread that joined the network namespace at
// path: sockets it opens and commands it runs are in that namespace. The
// thread is never handed back to other goroutines.
func inNetns(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		goruntime.LockOSThread() // never unlocked: the thread ends with the goroutine
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// serve accepts TCP connections on ln and answers each with name.
func serve(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		// Long enough for the 4 MiB bulk answer through the userspace
		// mesh on a loaded CI machine (a 2 s deadline cut it short; at
		// load 33, with the matrix's microVMs running, 15 s did).
		c.SetDeadline(time.Now().Add(90 * time.Second))
		io.WriteString(c, name+"\n")
		c.Close()
	}
}

// isoHost is a host of the isolation test: a network namespace with a
// bridge, machines, the host's services and a mesh node.
type isoHost struct {
	name, ns string
	n        int          // host number
	sub6     netip.Prefix // mesh.HostAddrs
	gw       netip.Prefix
	uplink   netip.Addr
	bridge   string
	// svc is the host whose services answer on this host's addresses:
	// itself, or the host whose kernel it shares.
	svc    *isoHost
	node   *mesh.Node
	policy map[string]hostnet.PolicyMachine
}

// isoMachine is a machine of the test: a hostnet.Attach namespace, as a
// runc machine gets (runc joins it; the container adds no network of its
// own), with a TCP server on port 8080 answering its name; or a real
// machine (kind "runc" or "microvm", made by its driver on its host's
// bridge), whose testapp answers its name on 8080 too.
type isoMachine struct {
	name, id, org string
	host          *isoHost
	v4, v6        netip.Addr
	kind          string // "" for a namespace standing in for a machine
}

// hostPorts are the host's own services a machine must not reach: NATS,
// the API (and the relay, on the mesh address), metrics, the edge.
var hostPorts = map[string]int{"nats": 4222, "api": 4280, "metrics": 9091, "edge": 80}

// TestIsolationMatrix proves the network policy (docs/security.md,
// "Network isolation") on two hosts, each a network namespace with its own
// bridge, nftables rules, mesh node (wireguard-go) and 6PN TUN device,
// joined by a link: every machine tries every other machine by IPv4 and
// 6PN, both hosts' services, both hosts' mesh addresses and a metadata
// address; the forbidden must all fail and the allowed all succeed.
// Four of the machines are real, one per host, organisation and driver:
// runc containers (user namespace, seccomp and all) and microVMs (qemu
// microvm, under TCG where there is no KVM); their probes are made by
// the machine's own process (testapp's GET /dial).
func TestIsolationMatrix(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it makes network namespaces, bridges, veths, TUN devices and nftables rules")
	}
	if err := checkNFT(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tag := make([]byte, 3)
	rand.Read(tag)
	sfx := hex.EncodeToString(tag)

	// hC shares hA's kernel, as the hosts of a dev world do: its rules
	// must not touch hA's, and 6PN between them is the kernel's routing.
	hosts := []*isoHost{{name: "hA", n: 1}, {name: "hB", n: 2}, {name: "hC", n: 3}}
	for i, h := range hosts {
		h.ns = "piso-" + sfx + "-" + h.name
		h.bridge = fmt.Sprintf("pbi%s%d", sfx, i)
		h.gw = netip.MustParsePrefix(fmt.Sprintf("172.31.%d.1/24", h.n))
		h.uplink = netip.MustParseAddr(fmt.Sprintf("10.250.0.%d", h.n))
		_, h.sub6, _ = mesh.HostAddrs(h.n)
		h.policy = map[string]hostnet.PolicyMachine{}
		h.svc = h
		if h.name == "hC" {
			h.ns, h.uplink, h.svc = hosts[0].ns, hosts[0].uplink, hosts[0]
			continue
		}
		run(t, "ip", "netns", "add", h.ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", h.ns).Run() })
	}
	a, b, c := hosts[0], hosts[1], hosts[2]
	run(t, "ip", "link", "add", "up0", "netns", a.ns, "type", "veth", "peer", "name", "up0", "netns", b.ns)
	for _, h := range []*isoHost{a, b} {
		run(t, "ip", "-n", h.ns, "addr", "add", h.uplink.String()+"/24", "dev", "up0")
		run(t, "ip", "-n", h.ns, "link", "set", "up0", "up")
		run(t, "ip", "-n", h.ns, "link", "set", "lo", "up")
		// A metadata-style address on the host, as clouds serve at 169.254.169.254.
		run(t, "ip", "-n", h.ns, "addr", "add", "169.254.169.254/32", "dev", "lo")
	}

	// Each host: bridge, services, mesh node, 6PN device.
	var sixpn []<-chan error
	for _, h := range hosts {
		err := inNetns("/run/netns/"+h.ns, func() error {
			if err := hostnet.EnsureBridge(h.bridge, h.gw); err != nil {
				return err
			}
			for name, port := range hostPorts {
				if h.svc != h {
					break // its kernel's services are the other host's
				}
				ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
				if err != nil {
					return err
				}
				t.Cleanup(func() { ln.Close() })
				go serve(ln, h.name+"-"+name)
			}
			dns, err := net.Listen("tcp", netip.AddrPortFrom(h.gw.Addr(), DNSPort).String())
			if err != nil {
				return err
			}
			t.Cleanup(func() { dns.Close() })
			go serve(dns, h.name+"-dns")
			key, err := mesh.GenerateKey()
			if err != nil {
				return err
			}
			addr, _, _ := mesh.HostAddrs(h.n)
			if h.node, err = mesh.New(mesh.Config{Key: key, Addr: addr}); err != nil {
				return err
			}
			t.Cleanup(func() { h.node.Close() })
			done, err := StartSixPN(ctx, h.node, fmt.Sprintf("p6i%s%d", sfx, h.n), h.bridge, h.sub6, nil)
			sixpn = append(sixpn, done)
			return err
		})
		if err != nil {
			t.Fatalf("host %s: %v", h.name, err)
		}
		relay, err := h.node.Listen(4280)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { relay.Close() })
		go serve(relay, h.name+"-relay")
	}
	t.Cleanup(func() {
		cancel()
		for _, done := range sixpn {
			<-done
		}
	})
	for _, h := range hosts {
		var peers []mesh.Peer
		for _, o := range hosts {
			if o != h {
				peers = append(peers, o.node.Self(o.uplink))
			}
		}
		if err := h.node.SetPeers(peers); err != nil {
			t.Fatal(err)
		}
	}

	// Machines (namespaces): two of acme and one of globex on A, one of
	// each on B and on C. Real ones: runc containers r1 (globex) on A
	// and r2 (acme) on B, microVMs v1 (acme) on A and v2 (globex) on B.
	vmErr := canBootVMs(t)
	if vmErr != nil {
		t.Logf("NO microVM rows: this host cannot boot microVMs: %v", vmErr)
	}
	var machines []*isoMachine
	for _, m := range []struct {
		name, org string
		host      *isoHost
		kind      string
	}{
		{"a1", "acme", a, ""}, {"a2", "acme", a, ""}, {"g1", "globex", a, ""}, {"a3", "acme", b, ""}, {"g2", "globex", b, ""},
		{"a4", "acme", c, ""}, {"g3", "globex", c, ""},
		{"r1", "globex", a, "runc"}, {"r2", "acme", b, "runc"},
		{"v1", "acme", a, "microvm"}, {"v2", "globex", b, "microvm"},
	} {
		if m.kind == "microvm" && vmErr != nil {
			continue
		}
		h := m.host
		im := &isoMachine{name: m.name, id: m.name + sfx, org: m.org, host: h, kind: m.kind}
		im.v4 = h.gw.Addr()
		for range len(h.policy) + 1 {
			im.v4 = im.v4.Next()
		}
		spec := store.MachineSpec{ID: im.id, PrivateIP: im.v4.String(), Org: m.org}
		pm, ok := policyMachine(spec, m.org, h.sub6)
		if !ok {
			t.Fatalf("no policy entry for %s", m.name)
		}
		im.v6 = pm.IPv6.Addr()
		h.policy[im.id] = pm
		machines = append(machines, im)
	}
	var real []*isoMachine
	for _, m := range machines {
		h := m.host
		if m.kind != "" {
			real = append(real, m)
			continue
		}
		var nsPath string
		err := inNetns("/run/netns/"+h.ns, func() (err error) {
			nsPath, err = hostnet.Attach(m.id, perchrt.Net{
				Bridge: h.bridge, Addr: netip.PrefixFrom(m.v4, 24), Gateway: h.gw.Addr(),
				Addr6: netip.PrefixFrom(m.v6, 64),
			})
			return err
		})
		t.Cleanup(func() { hostnet.Detach(m.id) })
		if err != nil {
			t.Fatalf("attach %s: %v", m.name, err)
		}
		err = inNetns(nsPath, func() error {
			ln, err := net.Listen("tcp", ":8080")
			if err != nil {
				return err
			}
			t.Cleanup(func() { ln.Close() })
			go serve(ln, m.name)
			bulk, err := net.Listen("tcp", fmt.Sprintf(":%d", bulkPort))
			if err != nil {
				return err
			}
			t.Cleanup(func() { bulk.Close() })
			go serve(bulk, strings.Repeat("x", bulkSize))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	bootMachines(t, real)

	probes := matrix(hosts, machines)

	// Without the rules, the matrix must see some forbidden pairs
	// connect: the probes can tell.
	before := runProbes(probes)
	retryBroken(probes, before, time.Now().Add(2*time.Minute))
	leaks := 0
	for i, p := range probes {
		if errors.Is(before[i], errProbeBroken) {
			t.Fatalf("without the rules: %s: %v", p, before[i])
		}
		if !p.allowed && (before[i] == nil || errors.Is(before[i], errWrongServer)) {
			leaks++
		}
	}
	if leaks == 0 {
		t.Fatal("with no rules, no forbidden probe connected: the probes cannot see a leak")
	}
	t.Logf("with no rules: %d forbidden probes connect", leaks)

	start := time.Now()
	for _, h := range hosts {
		err := inNetns("/run/netns/"+h.ns, func() error {
			return hostnet.ApplyPolicy(HostPolicy(h.bridge, h.gw, h.policy, false))
		})
		if err != nil {
			t.Fatalf("policy of %s: %v", h.name, err)
		}
	}
	t.Logf("rules applied on every host in %v", time.Since(start).Round(time.Millisecond))

	// The mesh may still be shaking hands: allowed cross-host probes get
	// a few tries (a real machine's TCP retries its SYN too).
	results := runProbes(probes)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var retry []int
		for i, p := range probes {
			if (p.allowed && results[i] != nil) || errors.Is(results[i], errProbeBroken) {
				retry = append(retry, i)
			}
		}
		if len(retry) == 0 {
			break
		}
		again := runProbes(pick(probes, retry))
		for j, i := range retry {
			results[i] = again[j]
		}
	}

	var allowed, allowedOK, forbidden, refused int
	type counts struct{ allowed, allowedOK, forbidden, refused int }
	byKind := map[string]*counts{"runc": {}, "microvm": {}} // probes from or to such a machine
	for i, p := range probes {
		var kinds []*counts
		for _, k := range []string{p.fromKind, p.toKind} {
			if c := byKind[k]; c != nil && (len(kinds) == 0 || kinds[0] != c) {
				kinds = append(kinds, c)
			}
		}
		if p.allowed {
			allowed++
			for _, c := range kinds {
				c.allowed++
			}
			if results[i] == nil {
				allowedOK++
				for _, c := range kinds {
					c.allowedOK++
				}
			} else {
				t.Errorf("ALLOWED but failed: %s: %v", p, results[i])
			}
		} else {
			forbidden++
			for _, c := range kinds {
				c.forbidden++
			}
			if results[i] != nil && !errors.Is(results[i], errWrongServer) && !errors.Is(results[i], errProbeBroken) {
				refused++
				for _, c := range kinds {
					c.refused++
				}
			} else {
				t.Errorf("FORBIDDEN but connected: %s: %v", p, results[i])
			}
		}
	}
	t.Logf("isolation matrix: %d/%d forbidden refused, %d/%d allowed succeeded", refused, forbidden, allowedOK, allowed)
	for _, k := range []string{"runc", "microvm"} {
		c := byKind[k]
		t.Logf("  of which from or to a %s machine: %d/%d forbidden refused, %d/%d allowed succeeded", k, c.refused, c.forbidden, c.allowedOK, c.allowed)
	}
	if byKind["runc"].allowedOK == 0 || (vmErr == nil && byKind["microvm"].allowedOK == 0) {
		t.Error("a real machine's probes never succeeded: the matrix did not test it")
	}

	// Full-size packets cross too: the machines' 6PN route MTU keeps
	// their TCP segments within what the mesh carries.
	from, to := machines[0], machines[3] // a1 on A, a3 on B
	err := inNetns(hostnet.NetnsPath(from.id), func() error {
		start := time.Now()
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(to.v6, bulkPort).String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(90 * time.Second))
		n, err := io.Copy(io.Discard, c)
		if err != nil || n != bulkSize+1 {
			return fmt.Errorf("read %d bytes of %d: %v", n, bulkSize+1, err)
		}
		t.Logf("%s → %s over 6PN through the mesh: %d KiB in %v", from.name, to.name, n>>10, time.Since(start).Round(time.Millisecond))
		return nil
	})
	if err != nil {
		t.Errorf("bulk transfer %s → %s over 6PN: %v", from.name, to.name, err)
	}
}

// bulkPort serves bulkSize bytes (and a newline) from every machine.
const (
	bulkPort = 8081
	bulkSize = 4 << 20
)

// probe is one connection attempt of the matrix.
type probe struct {
	from             string      // a machine's netns path, or a host's
	via              *isoMachine // a real machine making the probe itself (from is then unused)
	fromKind, toKind string      // the machines' isoMachine.kind
	fromN            string
	to               netip.AddrPort
	what             string
	want             string // the banner the target answers
	allowed          bool
}

func (p probe) String() string { return fmt.Sprintf("%s → %s (%s)", p.fromN, p.to, p.what) }

func pick(ps []probe, idx []int) []probe {
	out := make([]probe, len(idx))
	for j, i := range idx {
		out[j] = ps[i]
	}
	return out
}

// matrix is every pair the isolation test tries.
func matrix(hosts []*isoHost, machines []*isoMachine) []probe {
	var ps []probe
	for _, m := range machines {
		from := hostnet.NetnsPath(m.id)
		var via *isoMachine
		if m.kind != "" {
			from, via = "", m
		}
		for _, o := range machines {
			if o == m {
				continue
			}
			same := o.org == m.org
			where := "same host"
			if o.host != m.host {
				where = "other host"
			}
			rel := "same org"
			if !same {
				rel = "other org"
			}
			ps = append(ps,
				probe{from: from, via: via, fromKind: m.kind, toKind: o.kind, fromN: m.name, to: netip.AddrPortFrom(o.v4, 8080), what: fmt.Sprintf("%s %s %s IPv4", o.name, rel, where),
					want: o.name, allowed: same && o.host == m.host},
				probe{from: from, via: via, fromKind: m.kind, toKind: o.kind, fromN: m.name, to: netip.AddrPortFrom(o.v6, 8080), what: fmt.Sprintf("%s %s %s 6PN", o.name, rel, where),
					want: o.name, allowed: same})
		}
		for _, h := range hosts {
			names := make([]string, 0, len(hostPorts))
			for name := range hostPorts {
				names = append(names, name)
			}
			sort.Strings(names)
			for _, name := range names {
				port := uint16(hostPorts[name])
				addrs := []netip.Addr{h.uplink}
				if h == m.host {
					// The gateway, a metadata-style address, and the
					// bridge's link-local address that machines route 6PN via.
					addrs = append(addrs, h.gw.Addr(), netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("fe80::1").WithZone("eth0"))
				}
				for _, addr := range addrs {
					ps = append(ps, probe{from: from, via: via, fromKind: m.kind, fromN: m.name, to: netip.AddrPortFrom(addr, port),
						what: h.name + " " + name, want: h.svc.name + "-" + name})
				}
			}
			ps = append(ps, probe{from: from, via: via, fromKind: m.kind, fromN: m.name, to: netip.AddrPortFrom(h.node.Addr(), 4280),
				what: h.name + " relay on its mesh address", want: h.name + "-relay"})
		}
		ps = append(ps, probe{from: from, via: via, fromKind: m.kind, fromN: m.name, to: netip.AddrPortFrom(m.host.gw.Addr(), DNSPort),
			what: "its host's DNS", want: m.host.name + "-dns", allowed: true})
	}
	// The edge reaches the machines of its host.
	for _, m := range machines {
		ps = append(ps, probe{from: "/run/netns/" + m.host.ns, toKind: m.kind, fromN: m.host.name + " (edge)",
			to: netip.AddrPortFrom(m.v4, 8080), what: "its machine " + m.name, want: m.name, allowed: true})
	}
	return ps
}

// retryBroken runs again, until deadline, the probes of results that did
// not run (errProbeBroken), in place.
func retryBroken(ps []probe, results []error, deadline time.Time) {
	for time.Now().Before(deadline) {
		var again []int
		for i := range ps {
			if errors.Is(results[i], errProbeBroken) {
				again = append(again, i)
			}
		}
		if len(again) == 0 {
			return
		}
		for j, err := range runProbes(pick(ps, again)) {
			results[again[j]] = err
		}
	}
}

// errWrongServer is a connection answered by another server than the
// probe's: for a forbidden probe, a leak all the same.
var errWrongServer = errors.New("connected to the wrong server")

// runProbes tries every probe at once; nil is a connection answered by the
// expected server.
func runProbes(ps []probe) []error {
	out := make([]error, len(ps))
	var wg sync.WaitGroup
	// A real machine answers a few probes at a time: an emulated guest
	// on a loaded host serves dozens at once too slowly.
	sems := map[*isoMachine]chan struct{}{}
	for _, p := range ps {
		if p.via != nil && sems[p.via] == nil {
			sems[p.via] = make(chan struct{}, 6)
		}
	}
	for i, p := range ps {
		wg.Go(func() {
			if p.via != nil {
				sems[p.via] <- struct{}{}
				defer func() { <-sems[p.via] }()
				got, err := machineDial(p.via, p.to)
				if err == nil && strings.TrimSpace(got) != p.want {
					err = fmt.Errorf("%w: answered by %q, want %q", errWrongServer, strings.TrimSpace(got), p.want)
				}
				out[i] = err
				return
			}
			out[i] = inNetns(p.from, func() error {
				c, err := net.DialTimeout("tcp", p.to.String(), 1500*time.Millisecond)
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Second))
				// Connected: whatever it reads (nothing, on a timeout),
				// only the expected banner is not a leak.
				b, err := io.ReadAll(c)
				if got := strings.TrimSpace(string(b)); got != p.want {
					return fmt.Errorf("%w: answered by %q, want %q (%v)", errWrongServer, got, p.want, err)
				}
				return nil
			})
		})
	}
	wg.Wait()
	return out
}

// Machines' route for other hosts' 6PN must fit what the mesh carries.
func TestRoute6MTUFitsTheMesh(t *testing.T) {
	if hostnet.Route6MTU != mesh.SixPNMTU {
		t.Fatalf("hostnet.Route6MTU %d, mesh.SixPNMTU %d: machines would send 6PN packets the mesh drops", hostnet.Route6MTU, mesh.SixPNMTU)
	}
}
