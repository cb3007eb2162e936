package anycast

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The lab: a small internet on one machine, for tests and perch dev. In
// network namespaces it creates, one bird2 router per city (an AS each),
// routers linked by veth pairs following geography with eBGP over each
// link, a client namespace per city behind its router, and per city with
// a region a host namespace peering with its router (the Perch side: the
// caller runs a Speaker there). Addresses come only from documentation
// ranges: links from 203.0.113.0/24, clients from 198.51.100.0/24, the
// anycast pool is 192.0.2.0/24; nothing is routed to or from the
// machine's own networks, and Close removes every namespace.

// LabHostASN is the AS every host of the lab speaks from.
const LabHostASN = 64512

// LabPool is the lab's anycast pool, LabPool6 its IPv6 one.
var (
	LabPool  = netip.MustParsePrefix("192.0.2.0/24")
	LabPool6 = netip.MustParsePrefix("2001:db8:1::/48")
)

// LabCity is one city of the lab: a router, a client, and a host if Host.
type LabCity struct {
	Name string // a region code: ams, fra ...
	Host bool
}

// LabConfig is the lab's shape: cities and the links between them.
type LabConfig struct {
	Cities []LabCity
	Links  [][2]string
	Dir    string // bird's configs, sockets and logs
	// Mgmt adds the hosts' management network, the operator's private
	// backbone to its control plane, apart from the routers: a bridge in
	// the machine's own namespace on a free 10.252.X.0/24 (.1), a control
	// namespace on it (.2, ControlNS) and a link (mgmt0) from each host
	// (.10 and up). It is the one private range in the lab, as a real
	// backbone's is (and a registry on it is reached over plain HTTP).
	Mgmt bool
	// BFD runs BFD between each router and its host (100 ms, multiplier
	// 3); the hosts' speakers need SpeakerConfig.BFD then. BFDCities, when
	// set, limits it to those cities' routers: on a loaded machine a
	// 300 ms detection time can drop a live host.
	BFD       bool
	BFDCities []string
	// ID names the lab's namespaces and links (at most 8 of a-z, 0-9;
	// random if empty): a caller that keeps several labs apart gives each
	// its own (perch dev: the world's).
	ID string
	// MgmtNet is the management network's /24 (Mgmt); a free one is
	// picked if not set.
	MgmtNet netip.Prefix
	// LinkDelay, if set, is the one-way delay of the link between two
	// cities' routers: such a link is a pair of TAP devices joined in
	// user space by this process (labdelay.go), which holds each frame
	// that long; a link with no delay is a veth pair.
	LinkDelay func(a, b string) time.Duration
}

// Lab is a built lab.
type Lab struct {
	cfg     LabConfig
	id      string
	idx     map[string]int
	links   int
	birds   map[string]*exec.Cmd
	hostIP  map[string]netip.Addr // host's address on its router link
	rtrIP   map[string]netip.Addr // router's address on its host link
	client  map[string]netip.Addr
	peers   map[string]map[string]netip.Addr // city -> neighbour -> neighbour's address
	mgmt    map[string]netip.Addr            // city -> host's management address
	mgmtNet netip.Prefix
	// The same in IPv6 (2001:db8::/32): links 2001:db8:ffff:N::/64,
	// clients 2001:db8:c:I::/64.
	hostIP6, rtrIP6, client6 map[string]netip.Addr
	peers6                   map[string]map[string]netip.Addr
	taps                     []*tapLink // LinkDelay's links
}

func (l *Lab) bridge() string              { return "acb-" + l.id }
func (l *Lab) mgmtVeth(city string) string { return fmt.Sprintf("acm-%s-%d", l.id, l.idx[city]) }

// ControlNS is the namespace on the management network for a control
// plane (Mgmt), at ControlAddr.
func (l *Lab) ControlNS() string { return "acx-" + l.id }

// ControlAddr is the control namespace's address (Mgmt).
func (l *Lab) ControlAddr() netip.Addr { return l.mgmtAddr(2) }

func (l *Lab) mgmtAddr(i int) netip.Addr {
	b := l.mgmtNet.Addr().As4()
	b[3] = byte(i)
	return netip.AddrFrom4(b)
}

// MgmtAddr is city's host's address on the management network (Mgmt).
func (l *Lab) MgmtAddr(city string) netip.Addr { return l.mgmt[city] }

// CutMgmt takes city's host off the management network (up false) or
// puts it back: the host's link to the control plane, not to its router.
func (l *Lab) CutMgmt(city string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return l.ip("", "link", "set", l.mgmtVeth(city), state)
}

// RouterASN is city's router's AS number.
func (l *Lab) RouterASN(city string) uint32 { return 64600 + uint32(l.idx[city]) }

// HostNS, RouterNS and ClientNS name city's namespaces.
func (l *Lab) HostNS(city string) string   { return "ach-" + l.id + "-" + city }
func (l *Lab) RouterNS(city string) string { return "acr-" + l.id + "-" + city }
func (l *Lab) ClientNS(city string) string { return "acc-" + l.id + "-" + city }

// HostPeer is the --bgp-peer of city's host: its router.
func (l *Lab) HostPeer(city string) Peer { return Peer{Addr: l.rtrIP[city], ASN: l.RouterASN(city)} }

// HostPeer6 is city's host's IPv6 --bgp-peer: its router.
func (l *Lab) HostPeer6(city string) Peer { return Peer{Addr: l.rtrIP6[city], ASN: l.RouterASN(city)} }

// HostAddr is city's host's address on its router link (its router id).
func (l *Lab) HostAddr(city string) netip.Addr { return l.hostIP[city] }

// ClientAddr is city's client's address.
func (l *Lab) ClientAddr(city string) netip.Addr { return l.client[city] }

func (l *Lab) ip(ns string, args ...string) error {
	full := append([]string{"-n", ns}, args...)
	if ns == "" {
		full = args
	}
	out, err := exec.Command("ip", full...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(full, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// nextLink is the next /30 of 203.0.113.0/24: its two addresses.
func (l *Lab) nextLink() (netip.Addr, netip.Addr, error) {
	if l.links >= 64 {
		return netip.Addr{}, netip.Addr{}, errors.New("lab: out of link addresses (64 links)")
	}
	base := netip.AddrFrom4([4]byte{203, 0, 113, byte(4 * l.links)})
	l.links++
	return base.Next(), base.Next().Next(), nil
}

// link6 is the IPv6 pair of the link nextLink just gave.
func (l *Lab) link6() (netip.Addr, netip.Addr) {
	n := l.links - 1
	return netip.MustParseAddr(fmt.Sprintf("2001:db8:ffff:%x::1", n)), netip.MustParseAddr(fmt.Sprintf("2001:db8:ffff:%x::2", n))
}

// addr6 gives the two ends of a veth their IPv6 addresses (a /64, no
// duplicate address detection to wait for); the b side, if it is not a
// router, routes everything through a.
func (l *Lab) addr6(a, aDev string, aIP netip.Addr, b, bDev string, bIP netip.Addr) error {
	if err := l.ip(a, "-6", "addr", "add", netip.PrefixFrom(aIP, 64).String(), "dev", aDev, "nodad"); err != nil {
		return err
	}
	if err := l.ip(b, "-6", "addr", "add", netip.PrefixFrom(bIP, 64).String(), "dev", bDev, "nodad"); err != nil {
		return err
	}
	if bDev == "up0" {
		return l.ip(b, "-6", "route", "add", "default", "via", aIP.String())
	}
	return nil
}

// veth links namespace a (address aIP) and b (bIP) with a /30.
func (l *Lab) veth(a, aName string, aIP netip.Addr, b, bName string, bIP netip.Addr, bits int) error {
	if err := l.ip(a, "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b); err != nil {
		return err
	}
	for _, s := range []struct {
		ns, dev string
		ip      netip.Addr
	}{{a, aName, aIP}, {b, bName, bIP}} {
		if err := l.ip(s.ns, "addr", "add", netip.PrefixFrom(s.ip, bits).String(), "dev", s.dev); err != nil {
			return err
		}
		if err := l.ip(s.ns, "link", "set", s.dev, "up"); err != nil {
			return err
		}
	}
	return nil
}

// NewLab builds the lab and starts its routers. It needs root, ip and
// bird.
func NewLab(cfg LabConfig) (*Lab, error) {
	for _, bin := range []string{"ip", "bird", "birdc"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("lab: %s not found: install bird2 and iproute2 (scripts/deps.sh)", bin)
		}
	}
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	if cfg.ID != "" {
		if !validLabID(cfg.ID) {
			return nil, fmt.Errorf("lab: id %q: want 1 to 8 of a-z and 0-9", cfg.ID)
		}
		id = cfg.ID
	}
	l := &Lab{cfg: cfg, id: id, idx: map[string]int{}, birds: map[string]*exec.Cmd{},
		hostIP: map[string]netip.Addr{}, rtrIP: map[string]netip.Addr{}, client: map[string]netip.Addr{},
		peers: map[string]map[string]netip.Addr{}, mgmt: map[string]netip.Addr{},
		hostIP6: map[string]netip.Addr{}, rtrIP6: map[string]netip.Addr{}, client6: map[string]netip.Addr{}, peers6: map[string]map[string]netip.Addr{}}
	if err := l.build(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (l *Lab) build() error {
	cfg := l.cfg
	if len(cfg.Cities) > 15 {
		return errors.New("lab: at most 15 cities")
	}
	if cfg.Mgmt {
		// The one part of the lab in the machine's own namespace: on a
		// /24 no route there overlaps.
		var err error
		if cfg.MgmtNet.IsValid() {
			if !cfg.MgmtNet.Addr().Is4() || cfg.MgmtNet.Bits() != 24 {
				return fmt.Errorf("lab: management network %s: want an IPv4 /24", cfg.MgmtNet)
			}
			l.mgmtNet = cfg.MgmtNet.Masked()
		} else if l.mgmtNet, err = freeMgmtNet(); err != nil {
			return err
		}
		if err := l.ip("", "link", "add", l.bridge(), "type", "bridge"); err != nil {
			return err
		}
		if err := l.ip("", "addr", "add", netip.PrefixFrom(l.mgmtAddr(1), 24).String(), "dev", l.bridge()); err != nil {
			return err
		}
		if err := l.ip("", "link", "set", l.bridge(), "up"); err != nil {
			return err
		}
		if err := l.mgmtLink(l.ControlNS(), "acm-"+l.id+"-x", l.ControlAddr()); err != nil {
			return err
		}
	}
	for i, c := range cfg.Cities {
		l.idx[c.Name] = i
		l.peers[c.Name] = map[string]netip.Addr{}
		nss := []string{l.RouterNS(c.Name), l.ClientNS(c.Name)}
		if c.Host {
			nss = append(nss, l.HostNS(c.Name))
		}
		for _, ns := range nss {
			if err := l.ip("", "netns", "add", ns); err != nil {
				return err
			}
			if err := l.ip(ns, "link", "set", "lo", "up"); err != nil {
				return err
			}
		}
		for _, k := range []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"} {
			if out, err := exec.Command("ip", "netns", "exec", l.RouterNS(c.Name), "sysctl", "-qw", k).CombinedOutput(); err != nil {
				return fmt.Errorf("lab: sysctl %s: %w: %s", k, err, out)
			}
		}
		// The client: a /28 of 198.51.100.0/24 behind its router.
		base := netip.AddrFrom4([4]byte{198, 51, 100, byte(16 * i)})
		gw, cl := base.Next(), base.Next().Next()
		if err := l.veth(l.RouterNS(c.Name), "client", gw, l.ClientNS(c.Name), "up0", cl, 28); err != nil {
			return err
		}
		if err := l.ip(l.ClientNS(c.Name), "route", "add", "default", "via", gw.String()); err != nil {
			return err
		}
		l.client[c.Name] = cl
		gw6, cl6 := netip.MustParseAddr(fmt.Sprintf("2001:db8:c:%x::1", i)), netip.MustParseAddr(fmt.Sprintf("2001:db8:c:%x::2", i))
		if err := l.addr6(l.RouterNS(c.Name), "client", gw6, l.ClientNS(c.Name), "up0", cl6); err != nil {
			return err
		}
		l.client6[c.Name] = cl6
		if c.Host {
			r, h, err := l.nextLink()
			if err != nil {
				return err
			}
			if err := l.veth(l.RouterNS(c.Name), "host", r, l.HostNS(c.Name), "up0", h, 30); err != nil {
				return err
			}
			if err := l.ip(l.HostNS(c.Name), "route", "add", "default", "via", r.String()); err != nil {
				return err
			}
			l.rtrIP[c.Name], l.hostIP[c.Name] = r, h
			r6, h6 := l.link6()
			if err := l.addr6(l.RouterNS(c.Name), "host", r6, l.HostNS(c.Name), "up0", h6); err != nil {
				return err
			}
			l.rtrIP6[c.Name], l.hostIP6[c.Name] = r6, h6
			if cfg.Mgmt {
				m := l.mgmtAddr(10 + i)
				if err := l.mgmtLink(l.HostNS(c.Name), l.mgmtVeth(c.Name), m); err != nil {
					return err
				}
				l.mgmt[c.Name] = m
			}
		}
	}
	for _, lk := range cfg.Links {
		a, b := lk[0], lk[1]
		if _, ok := l.idx[a]; !ok {
			return fmt.Errorf("lab: link %s-%s: no city %s", a, b, a)
		}
		if _, ok := l.idx[b]; !ok {
			return fmt.Errorf("lab: link %s-%s: no city %s", a, b, b)
		}
		ai, bi, err := l.nextLink()
		if err != nil {
			return err
		}
		if d := l.linkDelay(a, b); d > 0 {
			if err := l.tapLink(l.RouterNS(a), "to-"+b, ai, l.RouterNS(b), "to-"+a, bi, d); err != nil {
				return err
			}
		} else if err := l.veth(l.RouterNS(a), "to-"+b, ai, l.RouterNS(b), "to-"+a, bi, 30); err != nil {
			return err
		}
		l.peers[a][b], l.peers[b][a] = bi, ai
		ai6, bi6 := l.link6()
		if err := l.addr6(l.RouterNS(a), "to-"+b, ai6, l.RouterNS(b), "to-"+a, bi6); err != nil {
			return err
		}
		if l.peers6[a] == nil {
			l.peers6[a] = map[string]netip.Addr{}
		}
		if l.peers6[b] == nil {
			l.peers6[b] = map[string]netip.Addr{}
		}
		l.peers6[a][b], l.peers6[b][a] = bi6, ai6
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	for _, c := range cfg.Cities {
		if err := l.startBird(c); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) birdSock(city string) string { return filepath.Join(l.cfg.Dir, "bird-"+city+".ctl") }

func (l *Lab) startBird(c LabCity) error {
	i := l.idx[c.Name]
	var b strings.Builder
	fmt.Fprintf(&b, "router id 198.51.100.%d;\n", 240+i)
	fmt.Fprintf(&b, "log %q all;\n", filepath.Join(l.cfg.Dir, "bird-"+c.Name+".log"))
	b.WriteString("protocol device { scan time 1; }\n")
	b.WriteString("protocol direct { ipv4; ipv6; interface \"client\"; }\n")
	b.WriteString("protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }\n")
	b.WriteString("protocol kernel { ipv6 { import none; export where source = RTS_BGP; }; }\n")
	timers := "hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 2; error forget time 10;"
	withBFD := l.cfg.BFD && (len(l.cfg.BFDCities) == 0 || slices.Contains(l.cfg.BFDCities, c.Name))
	if c.Host {
		bfd := ""
		if withBFD {
			// A static BFD session: it outlives the BGP session, so its
			// discriminator stays what the host's GoBGP learned (GoBGP
			// keeps a peer's discriminator across BGP resets, and a
			// session bird made anew per BGP session never came up again).
			fmt.Fprintf(&b, "protocol bfd { interface \"host\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; neighbor %s; neighbor %s; }\n",
				l.hostIP[c.Name], l.hostIP6[c.Name])
			bfd = "bfd on;"
		}
		fmt.Fprintf(&b, "protocol bgp host {\n  description \"perch host %s\";\n  local %s as %d;\n  neighbor %s as %d;\n  passive on;\n  %s %s\n"+
			"  ipv4 { import where net ~ [ %s{32,32} ]; export none; };\n}\n",
			c.Name, l.rtrIP[c.Name], l.RouterASN(c.Name), l.hostIP[c.Name], LabHostASN, timers, bfd, LabPool)
	}
	if c.Host {
		bfd := ""
		if withBFD {
			bfd = "bfd on;"
		}
		fmt.Fprintf(&b, "protocol bgp host6 {\n  description \"perch host %s, IPv6\";\n  local %s as %d;\n  neighbor %s as %d;\n  passive on;\n  %s %s\n"+
			"  ipv6 { import where net ~ [ %s{128,128} ]; export none; };\n}\n",
			c.Name, l.rtrIP6[c.Name], l.RouterASN(c.Name), l.hostIP6[c.Name], LabHostASN, timers, bfd, LabPool6)
	}
	for _, other := range l.cfg.Cities {
		addr, ok := l.peers[c.Name][other.Name]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "protocol bgp to_%s {\n  neighbor %s as %d;\n  local as %d;\n  %s\n  ipv4 { import all; export all; };\n}\n",
			other.Name, addr, l.RouterASN(other.Name), l.RouterASN(c.Name), timers)
		fmt.Fprintf(&b, "protocol bgp to_%s6 {\n  neighbor %s as %d;\n  local as %d;\n  %s\n  ipv6 { import all; export all; };\n}\n",
			other.Name, l.peers6[c.Name][other.Name], l.RouterASN(other.Name), l.RouterASN(c.Name), timers)
	}
	conf := filepath.Join(l.cfg.Dir, "bird-"+c.Name+".conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	cmd := exec.Command("ip", "netns", "exec", l.RouterNS(c.Name), "bird", "-f", "-c", conf, "-s", l.birdSock(c.Name),
		"-P", filepath.Join(l.cfg.Dir, "bird-"+c.Name+".pid"))
	out, err := os.Create(filepath.Join(l.cfg.Dir, "bird-"+c.Name+".out"))
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("lab: bird in %s: %w", c.Name, err)
	}
	out.Close()
	l.birds[c.Name] = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := l.Birdc(c.Name, "show", "status"); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(l.cfg.Dir, "bird-"+c.Name+".out"))
			return fmt.Errorf("lab: bird in %s did not come up: %s", c.Name, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freeMgmtNet picks a random 10.252.X.0/24 that no route of the
// machine's own namespace overlaps.
func freeMgmtNet() (netip.Prefix, error) {
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").CombinedOutput()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("lab: ip route: %w: %s", err, out)
	}
	var used []netip.Prefix
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		if dst == "local" || dst == "broadcast" || dst == "unicast" {
			if len(f) < 2 {
				continue
			}
			dst = f[1]
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if p, err := netip.ParsePrefix(dst); err == nil {
			used = append(used, p)
		}
	}
	for range 100 {
		b := make([]byte, 1)
		_, _ = rand.Read(b)
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 252, b[0], 0}), 24)
		if !slices.ContainsFunc(used, cand.Overlaps) {
			return cand, nil
		}
	}
	return netip.Prefix{}, errors.New("lab: no free /24 in 10.252.0.0/16 for the management network")
}

// mgmtLink joins namespace ns (made if it does not exist) to the
// management bridge through veth, at address a.
func (l *Lab) mgmtLink(ns, veth string, a netip.Addr) error {
	if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
		if err := l.ip("", "netns", "add", ns); err != nil {
			return err
		}
		if err := l.ip(ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	if err := l.ip("", "link", "add", veth, "type", "veth", "peer", "name", "mgmt0", "netns", ns); err != nil {
		return err
	}
	if err := l.ip("", "link", "set", veth, "master", l.bridge(), "up"); err != nil {
		return err
	}
	if err := l.ip(ns, "addr", "add", netip.PrefixFrom(a, 24).String(), "dev", "mgmt0"); err != nil {
		return err
	}
	return l.ip(ns, "link", "set", "mgmt0", "up")
}

// Birdc runs birdc against city's router.
func (l *Lab) Birdc(city string, args ...string) (string, error) {
	out, err := exec.Command("birdc", append([]string{"-s", l.birdSock(city)}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s at %s: %w: %s", strings.Join(args, " "), city, err, out)
	}
	return string(out), nil
}

// Dial connects from city's client namespace to addr: the socket is made
// on a thread moved into the namespace, which then ends with the
// goroutine.
func (l *Lab) Dial(ctx context.Context, city, network, addr string) (net.Conn, error) {
	return DialIn(ctx, filepath.Join("/run/netns", l.ClientNS(city)), network, addr)
}

// DialIn connects from the network namespace at nsPath.
func DialIn(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNS(nsPath, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// ListenIn listens on a TCP address of the network namespace at nsPath.
func ListenIn(nsPath, addr string) (net.Listener, error) {
	var ln net.Listener
	err := inNS(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// inNS runs fn on a thread moved into the network namespace at nsPath:
// the sockets it makes live there.
func inNS(nsPath string, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		// The thread goes back to its namespace before it is unlocked; if
		// it cannot, it stays locked and ends with this goroutine. (A
		// thread ending would also kill children started from it with
		// Pdeathsig: the lab's routers and hosts.)
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- fmt.Errorf("open own namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("open %s: %w", nsPath, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("setns %s: %w", nsPath, err)
			return
		}
		defer func() {
			if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
		}()
		ch <- fn()
	}()
	return <-ch
}

// Close stops the routers and deletes every namespace of the lab.
func (l *Lab) Close() {
	for _, cmd := range l.birds {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	for _, t := range l.taps {
		t.close()
	}
	// The management links' ends in this namespace go first, and at once:
	// a deleted namespace's devices go only when the kernel gets to it.
	for _, link := range l.Resources().Links {
		if _, err := net.InterfaceByName(link); err == nil {
			_ = l.ip("", "link", "del", link)
		}
	}
	for _, c := range l.cfg.Cities {
		for _, ns := range []string{l.RouterNS(c.Name), l.ClientNS(c.Name), l.HostNS(c.Name)} {
			if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
				_ = l.ip("", "netns", "del", ns)
			}
		}
	}
	if l.cfg.Mgmt {
		if _, err := os.Stat(filepath.Join("/run/netns", l.ControlNS())); err == nil {
			_ = l.ip("", "netns", "del", l.ControlNS())
		}
		if _, err := net.InterfaceByName(l.bridge()); err == nil {
			_ = l.ip("", "link", "del", l.bridge())
		}
	}
}
