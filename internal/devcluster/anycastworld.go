package devcluster

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/anycast"
	"github.com/perchhq/perch/internal/geo"
)

// An anycast world (`perch dev up --anycast`, Options.Anycast) is a dev
// world built inside the anycast lab (anycast.Lab): a bird2 router per
// region's city, routers linked by geography (each city to its two
// nearest, then the nearest pair between any parts left apart), a client
// namespace per city, and each region's agent in its city's host
// namespace, peering over eBGP (IPv4 and IPv6) with its router. The
// control plane stays in this process, on the lab's management bridge
// (the one private network, 10.253.X.0/24), which every host reaches
// through its own link. The control plane's anycast pools are the lab's
// documentation ranges. With Latency set, each router-to-router link
// holds every frame for the fiber time between its two cities.
//
// Everything the lab makes is named after the world's id, w<X> for the
// management network 10.253.X.0/24 claimed by lock, so two worlds on one
// machine never share a namespace, link or address in this namespace.

// AnycastInfo is world.json's part for an anycast world: what `perch dev
// exec` and `perch dev down` need.
type AnycastInfo struct {
	// ID names every namespace and link of the world's lab.
	ID string `json:"id"`
	// MgmtNet is the management network: the bridge (.1) in this
	// namespace, each host on its own link.
	MgmtNet string `json:"mgmt_net"`
	// PoolV4 and PoolV6 are the control plane's anycast pools.
	PoolV4 string        `json:"pool_v4"`
	PoolV6 string        `json:"pool_v6"`
	Cities []AnycastCity `json:"cities"`
	// Links are the router-to-router links, with their one-way delay.
	Links []AnycastLink `json:"links"`
	// Lab is what to remove if this world's process died without.
	Lab anycast.LabResources `json:"lab"`
}

// AnycastCity is one city of an anycast world.
type AnycastCity struct {
	Name      string `json:"name"`
	ClientNS  string `json:"client_ns"`
	RouterNS  string `json:"router_ns"`
	HostNS    string `json:"host_ns,omitempty"` // none in a city without a region
	Client    string `json:"client"`
	Client6   string `json:"client6"`
	RouterASN uint32 `json:"router_asn"`
}

// AnycastLink is one link between two cities' routers.
type AnycastLink struct {
	A     string `json:"a"`
	B     string `json:"b"`
	Delay string `json:"delay"` // one way; "0s" is a plain veth
}

// ClientNamespace is the namespace of city's client in the anycast world
// i describes; the error says what exists when it is not there.
func (i Info) ClientNamespace(city string) (string, error) {
	if i.Anycast == nil {
		return "", fmt.Errorf("the dev world in %s is not an anycast world: start one with perch dev up --anycast", i.Dir)
	}
	var names []string
	for _, c := range i.Anycast.Cities {
		if c.Name == city {
			return c.ClientNS, nil
		}
		names = append(names, c.Name)
	}
	return "", fmt.Errorf("no city %q in the anycast world in %s; its cities: %s", city, i.Dir, strings.Join(names, ", "))
}

// geoLinks links each city to its two nearest, then joins the parts left
// apart by their nearest pair until every city reaches every other.
func geoLinks(world *geo.World, cities []string) [][2]string {
	var links [][2]string
	has := map[[2]string]bool{}
	add := func(a, b string) {
		if a > b {
			a, b = b, a
		}
		if !has[[2]string{a, b}] {
			has[[2]string{a, b}] = true
			links = append(links, [2]string{a, b})
		}
	}
	for _, c := range cities {
		others := slices.DeleteFunc(slices.Clone(cities), func(o string) bool { return o == c })
		for i, o := range world.Nearest(c, others) {
			if i == 2 {
				break
			}
			add(c, o)
		}
	}
	// Union the parts until one is left.
	part := map[string]int{}
	for i, c := range cities {
		part[c] = i
	}
	merge := func(a, b string) {
		pa, pb := part[a], part[b]
		for c, p := range part {
			if p == pb {
				part[c] = pa
			}
		}
	}
	for _, l := range links {
		merge(l[0], l[1])
	}
	for {
		best, bestKm := [2]string{}, -1.0
		for _, a := range cities {
			for _, b := range cities {
				if part[a] == part[b] {
					continue
				}
				if km := world.Distance(a, b); bestKm < 0 || km < bestKm {
					best, bestKm = [2]string{a, b}, km
				}
			}
		}
		if bestKm < 0 {
			break
		}
		add(best[0], best[1])
		merge(best[0], best[1])
	}
	slices.SortFunc(links, func(x, y [2]string) int { return strings.Compare(x[0]+x[1], y[0]+y[1]) })
	return links
}

// claimLabNet claims a free 10.253.X.0/24 for the world's management
// network, by an flock held until release (as claimMachineNet does for
// the machine net), and returns it with the world's lab id.
func claimLabNet() (p netip.Prefix, id string, release func(), err error) {
	dir := filepath.Join(os.TempDir(), "perch-lab-nets")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return p, "", nil, fmt.Errorf("anycast lab claims: %w", err)
	}
	routes, err := kernelRoutes()
	if err != nil {
		return p, "", nil, err
	}
	for x := 0; x < 256; x++ {
		c := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 253, byte(x), 0}), 24)
		if slices.ContainsFunc(routes, c.Overlaps) {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("10-253-%d-0_24.lock", x)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			return p, "", nil, fmt.Errorf("claim %s: %w", c, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close() // another world has it
			continue
		}
		return c, fmt.Sprintf("w%02x", x), func() { f.Close() }, nil
	}
	return p, "", nil, errors.New("no free /24 in 10.253.0.0/16 for an anycast world's management network; stop other dev worlds (perch dev down)")
}

// startLab builds the world's lab: its cities are the regions.
func (w *World) startLab() error {
	for _, bin := range []string{"bird", "birdc", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("perch dev up --anycast needs %s: install bird2 and util-linux (scripts/deps.sh)", bin)
		}
	}
	all := slices.Concat(w.opts.Regions, w.opts.AnycastClients)
	if len(all) > 15 {
		return fmt.Errorf("perch dev up --anycast runs at most 15 cities (one router each); %d given", len(all))
	}
	for _, c := range w.opts.AnycastClients {
		if _, ok := w.opts.World.Lookup(c); !ok {
			return fmt.Errorf("--anycast-clients: unknown city %q; known: %s", c, strings.Join(w.opts.World.Codes(), ", "))
		}
		if slices.Contains(w.opts.Regions, c) {
			return fmt.Errorf("--anycast-clients: %s is a region of the world already (every region's city has a client)", c)
		}
	}
	mgmt, id, release, err := claimLabNet()
	if err != nil {
		return err
	}
	var cities []anycast.LabCity
	for _, r := range w.opts.Regions {
		cities = append(cities, anycast.LabCity{Name: r, Host: true})
	}
	for _, c := range w.opts.AnycastClients {
		cities = append(cities, anycast.LabCity{Name: c})
	}
	links := geoLinks(w.opts.World, all)
	oneWay := func(a, b string) time.Duration {
		if w.opts.Latency <= 0 {
			return 0
		}
		return w.opts.World.FiberRTT(a, b, w.opts.Latency) / 2
	}
	lab, err := anycast.NewLab(anycast.LabConfig{Cities: cities, Links: links, Dir: filepath.Join(w.opts.Dir, "lab"),
		// No BFD: at 100 ms x 3 a loaded machine's hosts flapped (seen:
		// sin's sessions reset "BFD is down" and its client sent to ams);
		// the routers' 3 s hold time notices a dead host.
		Mgmt: true, MgmtNet: mgmt, ID: id, LinkDelay: oneWay})
	if err != nil {
		release()
		return fmt.Errorf("anycast lab: %w", err)
	}
	w.lab, w.releaseLab = lab, release
	ai := &AnycastInfo{ID: id, MgmtNet: mgmt.String(), PoolV4: anycast.LabPool.String(), PoolV6: anycast.LabPool6.String(), Lab: lab.Resources()}
	for _, c := range cities {
		ac := AnycastCity{Name: c.Name, ClientNS: lab.ClientNS(c.Name), RouterNS: lab.RouterNS(c.Name),
			Client: lab.ClientAddr(c.Name).String(), Client6: lab.ClientAddr6(c.Name).String(), RouterASN: lab.RouterASN(c.Name)}
		if c.Host {
			ac.HostNS = lab.HostNS(c.Name)
		}
		ai.Cities = append(ai.Cities, ac)
	}
	for _, l := range links {
		ai.Links = append(ai.Links, AnycastLink{A: l[0], B: l[1], Delay: oneWay(l[0], l[1]).Round(10 * time.Microsecond).String()})
	}
	w.info.Anycast = ai
	return nil
}

// closeLab removes the lab: routers, links, namespaces, the claim.
func (w *World) closeLab() {
	if w.lab == nil {
		return
	}
	w.lab.Close()
	w.lab = nil
	w.releaseLab()
	// Bird's configs, sockets, pid files and logs.
	_ = os.RemoveAll(filepath.Join(w.opts.Dir, "lab"))
}

// anycastAgentArgs wraps region's agent command line for the lab: run in
// its host namespace, reached at its management address, peering with
// its router.
func (w *World) anycastAgentArgs(region string, args []string) []string {
	l := w.lab
	me := l.MgmtAddr(region).String()
	p, p6 := l.HostPeer(region), l.HostPeer6(region)
	out := append([]string{"nsenter", "--net=" + filepath.Join("/run/netns", l.HostNS(region)), "--"}, args...)
	return append(out, "--address", me, "--mesh-endpoint", me,
		"--bgp-asn", strconv.Itoa(anycast.LabHostASN),
		"--bgp-peer", fmt.Sprintf("%s,%d", p.Addr, p.ASN),
		"--bgp-peer", fmt.Sprintf("%s,%d", p6.Addr, p6.ASN))
}

// removeLab removes what an anycast world's lab left when its process
// died: the routers, the namespaces (their links go with them) and the
// management bridge.
func removeLab(r anycast.LabResources) error {
	var errs []error
	for city, pid := range r.Birds {
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "bird" {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				errs = append(errs, fmt.Errorf("stop the router of %s (pid %d): %w", city, pid, err))
			}
		}
	}
	// The management links first: deleting one end deletes both at once,
	// where a deleted namespace's devices go only when the kernel gets to
	// it.
	for _, link := range slices.Concat(r.Links, []string{r.Bridge}) {
		if link == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join("/sys/class/net", link)); err == nil {
			if out, err := exec.Command("ip", "link", "del", link).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("ip link del %s: %w: %s", link, err, strings.TrimSpace(string(out))))
			}
		}
	}
	for _, ns := range r.Namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %w: %s", ns, err, strings.TrimSpace(string(out))))
		}
	}
	if r.Dir != "" {
		if err := os.RemoveAll(r.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove the routers' files: %w", err))
		}
	}
	return errors.Join(errs...)
}
