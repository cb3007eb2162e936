package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// A process group whose CPU the idle measurement reports.
type group int

const (
	groupAgent  group = iota // the agent process itself
	groupReaped              // children the agent ran and waited for (runc state, ...)
	groupShim                // perch runc-shim, one per machine
	groupRunc                // `runc run` under each shim
	groupApp                 // the machines' own processes
)

var groupOrder = []group{groupAgent, groupReaped, groupShim, groupRunc, groupApp}

var groupLabel = map[group]string{
	groupAgent:  "agent (utime+stime)",
	groupReaped: "agent's reaped children (cutime+cstime)",
	groupShim:   "shims (perch runc-shim), together",
	groupRunc:   "runc run under the shims, together",
	groupApp:    "the machines' apps, together",
}

// proc is one process's line of /proc/<pid>/stat, in clock ticks.
type proc struct {
	pid, ppid       int
	self, children  int64 // utime+stime, cutime+cstime
	comm, firstArgs string
}

// readProcs reads every process of the system.
func readProcs() (map[int]proc, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := map[int]proc{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := readProc(pid)
		if err != nil {
			continue // gone meanwhile
		}
		out[pid] = p
	}
	return out, nil
}

func readProc(pid int) (proc, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return proc{}, err
	}
	s := string(b)
	// comm is in parentheses and may hold spaces: split after the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return proc{}, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return proc{}, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	// f[0] is field 3 (state): ppid 4, utime 14, stime 15, cutime 16, cstime 17.
	num := func(field int) int64 { n, _ := strconv.ParseInt(f[field-3], 10, 64); return n }
	p := proc{pid: pid, ppid: int(num(4)), self: num(14) + num(15), children: num(16) + num(17), comm: s[strings.IndexByte(s, '(')+1 : i]}
	if c, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline")); err == nil {
		args := strings.Split(strings.TrimRight(string(c), "\x00"), "\x00")
		if len(args) > 2 {
			args = args[:2]
		}
		p.firstArgs = strings.Join(args, " ")
	}
	return p, nil
}

type groupPIDs struct{ pids []int }

// classify sorts the agent and its descendants into groups: the shims are
// the agent's children running runc-shim, under each its `runc run`, and
// under that the machine's processes.
func classify(agent int, procs map[int]proc) map[group]*groupPIDs {
	kids := map[int][]int{}
	for _, p := range procs {
		kids[p.ppid] = append(kids[p.ppid], p.pid)
	}
	g := map[group]*groupPIDs{}
	for _, k := range groupOrder {
		g[k] = &groupPIDs{}
	}
	if _, ok := procs[agent]; ok {
		g[groupAgent].pids = []int{agent}
		g[groupReaped].pids = []int{agent}
	}
	var under func(pid int, k group)
	under = func(pid int, k group) {
		for _, c := range kids[pid] {
			g[k].pids = append(g[k].pids, c)
			under(c, k)
		}
	}
	for _, s := range kids[agent] {
		if !strings.HasSuffix(procs[s].firstArgs, " runc-shim") {
			continue // a runc state or the like, running right now
		}
		g[groupShim].pids = append(g[groupShim].pids, s)
		for _, r := range kids[s] {
			g[groupRunc].pids = append(g[groupRunc].pids, r)
			under(r, groupApp)
		}
	}
	return g
}

// usage is the CPU each group used over a window.
type usage struct {
	secs   float64
	hz     float64
	groups map[group]groupUsage
}

type groupUsage struct {
	pids  []int
	ticks int64
	hz    float64
}

func (u usage) pct(k group) float64 {
	return float64(u.groups[k].ticks) / u.hz / u.secs * 100
}

func (g groupUsage) cell(secs float64) string {
	return fmt.Sprintf("%.3f%% (%d)", float64(g.ticks)/g.hz/secs*100, len(g.pids))
}

// measure reads the agent's and its descendants' CPU times, waits d, and
// reads them again; a process that appeared meanwhile counts from zero.
func measure(agent int, d time.Duration) (usage, error) {
	hz := clockTicks()
	before, err := readProcs()
	if err != nil {
		return usage{}, err
	}
	t0 := time.Now()
	time.Sleep(d)
	after, err := readProcs()
	if err != nil {
		return usage{}, err
	}
	secs := time.Since(t0).Seconds()
	if _, ok := after[agent]; !ok {
		return usage{}, fmt.Errorf("agent %d is gone", agent)
	}
	u := usage{secs: secs, hz: hz, groups: map[group]groupUsage{}}
	for k, g := range classify(agent, after) {
		gu := groupUsage{pids: g.pids, hz: hz}
		for _, pid := range g.pids {
			a, b := after[pid], before[pid]
			if b.comm != a.comm && b.pid != 0 {
				b = proc{} // pid reused: count from zero
			}
			if k == groupReaped {
				gu.ticks += a.children - b.children
			} else {
				gu.ticks += a.self - b.self
			}
		}
		u.groups[k] = gu
	}
	return u, nil
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat times.
func clockTicks() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return float64(n)
		}
	}
	return 100
}
