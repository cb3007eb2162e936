// Command anycast measures BGP convergence in the anycast lab (issue 16;
// internal/anycast's NewLab): six cities of bird2 routers, a host in five
// of them running the real Speaker (this binary started again in the
// host's namespace) announcing one address with a responder that answers
// its region. It times, from mrs's client (mrs's only neighbour is cdg):
//
//   - loss: mrs's host killed (SIGKILL: the session's TCP connection
//     closes) or frozen (SIGSTOP: nothing closes; the router's hold time,
//     3 s, or BFD, 3 x 100 ms, must notice), to the client answered by cdg;
//   - return: the host started again (or SIGCONT), to mrs answering again;
//   - announce-to-reachable: a new address given to every host at once,
//     to each city's client reaching it,
//
// with BFD off and on. It needs root and bird2; bench/README.md records
// the output.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/anycast"
)

var (
	cities = []anycast.LabCity{{Name: "lhr", Host: true}, {Name: "cdg", Host: true}, {Name: "ams", Host: true},
		{Name: "fra", Host: true}, {Name: "arn"}, {Name: "mrs", Host: true}}
	links = [][2]string{{"lhr", "ams"}, {"lhr", "cdg"}, {"cdg", "ams"}, {"ams", "fra"}, {"cdg", "fra"}, {"fra", "arn"}, {"cdg", "mrs"}}
	home  = map[string]string{"lhr": "lhr", "cdg": "cdg", "ams": "ams", "fra": "fra", "mrs": "mrs", "arn": "fra"}
)

const addr = "192.0.2.10"

func main() {
	if anycast.IsLabHost() {
		os.Exit(anycast.RunLabHost())
	}
	rounds := flag.Int("n", 5, "rounds of each measurement")
	only := flag.String("bfd", "both", "off, on or both")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("needs root (network namespaces, bird)")
	}
	fmt.Printf("anycast lab: %d cities, %d links, hosts in all but arn; %d rounds; client polls every 10 ms\n", len(cities), len(links), *rounds)
	for _, bfd := range []bool{false, true} {
		if *only == "on" && !bfd || *only == "off" && bfd {
			continue
		}
		if err := run(bfd, *rounds); err != nil {
			log.Fatal(err)
		}
	}
}

type host struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startHost(lab *anycast.Lab, dir, city string, bfd bool) (*host, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", "netns", "exec", lab.HostNS(city), exe)
	cmd.Env = append(os.Environ(), lab.HostEnv(city, addr, bfd)...)
	logf, err := os.OpenFile(dir+"/host-"+city+".log", os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	h := &host{cmd: cmd}
	if h.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	h.out = bufio.NewReader(out)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if line, err := h.out.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		return nil, fmt.Errorf("host %s: %q %v (log in %s)", city, line, err, logf.Name())
	}
	return h, nil
}

func (h *host) kill() {
	_ = h.cmd.Process.Kill()
	_ = h.cmd.Wait()
}

// ask connects from city's client to a:80 and returns the region that
// answered.
func ask(lab *anycast.Lab, city, a string) (string, error) {
	// Short timeouts: the lab's round trips are well under a millisecond,
	// and a connection to an address no router has a route for yet can
	// hang (the routers rate-limit their ICMP unreachables).
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	c, err := lab.Dial(ctx, city, "tcp", a+":80")
	if err != nil {
		return "", err
	}
	defer c.Close()
	// A frozen host's kernel still accepts the connection: a short read
	// deadline keeps the measurement's granularity at ~100 ms.
	_ = c.SetDeadline(time.Now().Add(100 * time.Millisecond))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimPrefix(strings.TrimSpace(line), "region="), nil
}

// wait polls city's client until region answers at a; it returns how long
// since from.
func wait(lab *anycast.Lab, city, a, region string, from time.Time, within time.Duration) (time.Duration, error) {
	for time.Since(from) < within {
		if got, err := ask(lab, city, a); err == nil && got == region {
			return time.Since(from), nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0, fmt.Errorf("%s's client: %s not answering at %s within %s", city, region, a, within)
}

func run(bfd bool, rounds int) (err error) {
	dir, err := os.MkdirTemp("", "perch-bench-anycast-")
	if err != nil {
		return err
	}
	defer func() {
		if err == nil {
			os.RemoveAll(dir)
		} else {
			log.Printf("logs kept in %s", dir)
		}
	}()
	lab, err := anycast.NewLab(anycast.LabConfig{Cities: cities, Links: links, Dir: dir, BFD: bfd})
	if err != nil {
		return err
	}
	defer lab.Close()
	hosts := map[string]*host{}
	defer func() {
		for _, h := range hosts {
			h.kill()
		}
	}()
	for _, c := range cities {
		if c.Host {
			if hosts[c.Name], err = startHost(lab, dir, c.Name, bfd); err != nil {
				return err
			}
		}
	}
	for _, c := range cities {
		if _, err := wait(lab, c.Name, addr, home[c.Name], time.Now(), 60*time.Second); err != nil {
			return err
		}
	}
	if bfd {
		out, err := lab.Birdc("mrs", "show", "bfd", "sessions")
		if err != nil || !strings.Contains(out, "Up") {
			return fmt.Errorf("BFD on, but mrs's router has no BFD session up: %s %v", out, err)
		}
	}
	var killLoss, killBack, freezeLoss, freezeBack, announce []time.Duration
	for range rounds {
		// Killed: the session's connection closes at once.
		t0 := time.Now()
		hosts["mrs"].kill()
		d, err := wait(lab, "mrs", addr, "cdg", t0, 30*time.Second)
		if err != nil {
			return err
		}
		killLoss = append(killLoss, d)
		t0 = time.Now()
		if hosts["mrs"], err = startHost(lab, dir, "mrs", bfd); err != nil {
			return err
		}
		if d, err = wait(lab, "mrs", addr, "mrs", t0, 30*time.Second); err != nil {
			return err
		}
		killBack = append(killBack, d)
		// Frozen: only the hold timer or BFD notices.
		t0 = time.Now()
		_ = hosts["mrs"].cmd.Process.Signal(syscall.SIGSTOP)
		if d, err = wait(lab, "mrs", addr, "cdg", t0, 30*time.Second); err != nil {
			return err
		}
		freezeLoss = append(freezeLoss, d)
		t0 = time.Now()
		_ = hosts["mrs"].cmd.Process.Signal(syscall.SIGCONT)
		if d, err = wait(lab, "mrs", addr, "mrs", t0, 30*time.Second); err != nil {
			return err
		}
		freezeBack = append(freezeBack, d)
	}
	// A new address per round, given to every host at once: the time
	// until the slowest city's client reaches it.
	for i := range rounds {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i)}).String()
		t0 := time.Now()
		for _, h := range hosts {
			fmt.Fprintf(h.stdin, "add %s\n", a)
		}
		var slowest time.Duration
		for _, c := range cities {
			d, err := wait(lab, c.Name, a, home[c.Name], t0, 30*time.Second)
			if err != nil {
				return err
			}
			slowest = max(slowest, d)
		}
		announce = append(announce, slowest)
	}
	mode := "BFD off (hold time 3 s)"
	if bfd {
		mode = "BFD on (100 ms x 3)"
	}
	fmt.Printf("\n%s\n", mode)
	fmt.Printf("  mrs's host killed (SIGKILL) -> mrs's client answered by cdg: %s\n", stats(killLoss))
	fmt.Printf("  mrs's host started again    -> mrs's client answered by mrs: %s\n", stats(killBack))
	fmt.Printf("  mrs's host frozen (SIGSTOP) -> mrs's client answered by cdg: %s\n", stats(freezeLoss))
	fmt.Printf("  mrs's host thawed (SIGCONT) -> mrs's client answered by mrs: %s\n", stats(freezeBack))
	fmt.Printf("  new address announced by every host -> every city's client reaches it: %s\n", stats(announce))
	return nil
}

func stats(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("median %s, min %s, max %s", s[len(s)/2].Round(time.Millisecond), s[0].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
}
