package main

import (
	"cmp"
	"flag"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

func cmdReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	beforePath := fs.String("before", "", "results of measure with the app in iad only")
	afterPath := fs.String("after", "", "results of measure with the app in every region")
	memPath := fs.String("memory", "", "results of memory")
	fs.Parse(args)
	var before, after Phase
	var mem Memory
	for path, v := range map[string]any{*beforePath: &before, *afterPath: &after, *memPath: &mem} {
		if err := readJSON(path, v); err != nil {
			return err
		}
	}
	rows, err := join(before, after)
	if err != nil {
		return err
	}
	fmt.Print(latencyTable(rows, before.AccessOneWay, before.Requests))
	fmt.Printf("Load average (1, 5, 15 min) of the machine: %s at the start of \"before\", %s at its end; %s at the start of \"after\", %s at its end.\n",
		before.LoadStart, before.LoadEnd, after.LoadStart, after.LoadEnd)
	fmt.Println()
	fmt.Print(memoryTable(mem))
	return nil
}

// row is one city in both phases.
type row struct {
	b, a City
}

func (r row) reduction() float64 { return 1 - r.a.MedianMS/r.b.MedianMS }

func join(before, after Phase) ([]row, error) {
	byRegion := map[string]City{}
	for _, c := range after.Cities {
		byRegion[c.Region] = c
	}
	var rows []row
	for _, b := range before.Cities {
		a, ok := byRegion[b.Region]
		if !ok {
			return nil, fmt.Errorf("%s was measured before but not after", b.Region)
		}
		rows = append(rows, row{b, a})
	}
	// Farthest from iad first: where moving the app matters most.
	slices.SortStableFunc(rows, func(x, y row) int { return -cmp.Compare(x.b.MedianMS, y.b.MedianMS) })
	return rows, nil
}

func latencyTable(rows []row, access time.Duration, n int) string {
	limit := 2 * float64(access) / float64(time.Millisecond)
	var b strings.Builder
	fmt.Fprintf(&b, "Time to first byte for a client in each city through its own city's edge, in ms: from the request\n")
	fmt.Fprintf(&b, "leaving the client on a new connection to the first byte of the answer; median of %d requests after\n", n)
	fmt.Fprintf(&b, "a first (cold) one. Client to edge: %s one way, so the physical limit is a %.1f ms round trip.\n", access, limit)
	b.WriteString("Cold is the edge's first request to that machine: before, it opens a TCP connection over the mesh and\n")
	b.WriteString("the mesh relay's handshake (internal/mesh/relay.go), a round trip each, before the request's own round trip.\n\n")
	b.WriteString("| city | region | before: cold | before | after: cold | after | reduction | limit | after ÷ limit | answered from |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|---|\n")
	var reductions, ratios []float64
	var over80 []string
	for _, r := range rows {
		red, ratio := r.reduction(), r.a.MedianMS/limit
		reductions, ratios = append(reductions, red), append(ratios, ratio)
		if red >= 0.8 {
			over80 = append(over80, r.b.Region)
		}
		fmt.Fprintf(&b, "| %s | %s | %.1f | %.1f | %.1f | %.1f | %s | %.1f | %.2f | %s → %s |\n",
			r.b.City, r.b.Region, r.b.ColdMS, r.b.MedianMS, r.a.ColdMS, r.a.MedianMS, percent(red), limit, ratio,
			servedBy(r.b), servedBy(r.a))
	}
	fmt.Fprintf(&b, "\nMedian reduction across %d cities: %s. Cities with a reduction of 80 %% or more: %d of %d",
		len(rows), percent(median(reductions)), len(over80), len(rows))
	var under []string
	for _, r := range rows {
		if !slices.Contains(over80, r.b.Region) {
			under = append(under, r.b.Region+" "+percent(r.reduction()))
		}
	}
	if len(under) > 0 {
		fmt.Fprintf(&b, " (below: %s)", strings.Join(under, ", "))
	}
	fmt.Fprintf(&b, ".\nAfter ÷ physical limit: median %.2f, worst %.2f.\n", median(ratios), slices.Max(ratios))
	if f := failures(rows); f != "" {
		fmt.Fprintf(&b, "Failed requests (not counted): %s.\n", f)
	}
	return b.String()
}

// percent formats a fraction as a whole percentage, without "-0 %".
func percent(f float64) string {
	v := math.Round(100 * f)
	if v == 0 {
		return "0 %"
	}
	return fmt.Sprintf("%.0f %%", v)
}

// servedBy is the region that answered, or each with its count when
// several did (the table then shows the routing was not what was asked).
func servedBy(c City) string {
	if len(c.ServedBy) == 1 {
		for r := range c.ServedBy {
			return r
		}
	}
	var parts []string
	for _, r := range slices.Sorted(maps.Keys(c.ServedBy)) {
		parts = append(parts, fmt.Sprintf("%s %d", r, c.ServedBy[r]))
	}
	return strings.Join(parts, ", ")
}

func failures(rows []row) string {
	var parts []string
	for _, r := range rows {
		if r.b.Failed > 0 {
			parts = append(parts, fmt.Sprintf("%s before %d", r.b.Region, r.b.Failed))
		}
		if r.a.Failed > 0 {
			parts = append(parts, fmt.Sprintf("%s after %d", r.a.Region, r.a.Failed))
		}
	}
	return strings.Join(parts, ", ")
}

func memoryTable(m Memory) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Memory of the idle hosts (agent with its edge and mesh node, no machine), before anything was deployed:\n\n")
	b.WriteString("| host | RSS MiB | Pss MiB |\n|---|--:|--:|\n")
	var rss, pss int64
	for _, a := range m.Agents {
		rss += a.RSSKB
		pss += a.PssKB
		fmt.Fprintf(&b, "| agent %s | %.1f | %.1f |\n", a.Region, mib(a.RSSKB), mib(a.PssKB))
	}
	n := float64(max(len(m.Agents), 1))
	fmt.Fprintf(&b, "| **%d agents, total** | **%.1f** | **%.1f** |\n", len(m.Agents), mib(rss), mib(pss))
	fmt.Fprintf(&b, "| agents, mean | %.1f | %.1f |\n", mib(rss)/n, mib(pss)/n)
	fmt.Fprintf(&b, "| control plane (perch dev up, embedded NATS) | %.1f | %.1f |\n", mib(m.Control.RSSKB), mib(m.Control.PssKB))
	b.WriteString("\nRSS counts the perch binary's pages shared by all agents in each of them; Pss divides shared pages among\n")
	b.WriteString("the processes sharing them, so its total is what the agents really take together.\n")
	return b.String()
}
