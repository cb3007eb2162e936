package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/perchhq/perch/internal/devcluster"
)

// Memory is the resident memory of the world's processes while idle.
type Memory struct {
	Agents  []ProcMemory `json:"agents"`
	Control ProcMemory   `json:"control"` // perch dev up: control plane and embedded NATS
}

// ProcMemory is one process's memory. RSS counts every page the process
// maps, so the perch binary's text shared by all agents is counted in each;
// Pss splits each shared page among its sharers, so Pss adds up.
type ProcMemory struct {
	Region string `json:"region,omitempty"`
	PID    int    `json:"pid"`
	RSSKB  int64  `json:"rss_kb"`
	PssKB  int64  `json:"pss_kb"`
}

func cmdMemory(args []string) error {
	fs := flag.NewFlagSet("memory", flag.ExitOnError)
	dir := fs.String("world", "", "the dev world's directory")
	out := fs.String("out", "", "where to write the results (JSON)")
	fs.Parse(args)
	info, err := devcluster.ReadInfo(*dir)
	if err != nil {
		return err
	}
	var m Memory
	for _, r := range info.Regions {
		p, err := procMemory(r.PID)
		if err != nil {
			return fmt.Errorf("agent of %s: %w", r.Code, err)
		}
		p.Region = r.Code
		m.Agents = append(m.Agents, p)
	}
	if m.Control, err = procMemory(info.PID); err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	var rss, pss int64
	for _, a := range m.Agents {
		rss += a.RSSKB
		pss += a.PssKB
	}
	fmt.Printf("%d idle agents: RSS %.1f MiB in all (%.1f MiB each on average), Pss %.1f MiB in all\n",
		len(m.Agents), mib(rss), mib(rss)/float64(max(len(m.Agents), 1)), mib(pss))
	return writeJSON(*out, m)
}

func procMemory(pid int) (ProcMemory, error) {
	p := ProcMemory{PID: pid}
	var err error
	if p.RSSKB, err = procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:"); err != nil {
		return p, err
	}
	// smaps_rollup needs Linux 4.14; without it Pss stays 0 and the
	// report says so.
	p.PssKB, _ = procField(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss:")
	return p, nil
}

// procField reads a "Name:   1234 kB" line of a /proc file.
func procField(path, name string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("read memory: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 2 && fields[0] == name {
			return strconv.ParseInt(fields[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s has no %s line", path, name)
}

func mib(kb int64) float64 { return float64(kb) / 1024 }
