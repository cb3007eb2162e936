package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/bench/internal/accessnet"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/geo"
)

// Phase is one measurement of every city: the app in iad only ("before")
// or in every region ("after").
type Phase struct {
	Name         string        `json:"name"`
	AccessOneWay time.Duration `json:"access_one_way"`
	Requests     int           `json:"requests"` // warm ones, after the cold one
	Cities       []City        `json:"cities"`
	// The machine's load average (1, 5, 15 min) as the phase started and
	// ended: other work on the 2 cores shows up in the numbers.
	LoadStart string `json:"load_start"`
	LoadEnd   string `json:"load_end"`
}

// City is what a client in one region's city saw through that city's edge.
type City struct {
	Region string `json:"region"`
	City   string `json:"city"`
	Edge   string `json:"edge"`
	// TTFB from the request leaving the client on an open connection to
	// the response's first byte arriving, in ms: the first request
	// through this edge, and the median of the ones after it.
	ColdMS   float64   `json:"cold_ms"`
	MedianMS float64   `json:"median_ms"`
	WarmMS   []float64 `json:"warm_ms"`
	// ServedBy counts the regions whose machine answered.
	ServedBy map[string]int `json:"served_by"`
	Failed   int            `json:"failed"`
}

func cmdMeasure(args []string) error {
	fs := flag.NewFlagSet("measure", flag.ExitOnError)
	dir := fs.String("world", "", "the dev world's directory")
	name := fs.String("phase", "before", "name of this measurement")
	app := fs.String("app", "hello", "app to request")
	n := fs.Int("n", 20, "requests per city after the first (cold) one")
	access := fs.Duration("access", time.Millisecond, "one-way latency between a client and its city's edge")
	out := fs.String("out", "", "where to write the results (JSON)")
	fs.Parse(args)
	info, err := devcluster.ReadInfo(*dir)
	if err != nil {
		return err
	}
	ph := Phase{Name: *name, AccessOneWay: *access, Requests: *n, LoadStart: loadAvg()}
	// One city at a time: 2 cores run every host of the world, and
	// parallel clients would measure the CPU queue instead of the network.
	for _, r := range info.Regions {
		c, err := measureCity(r.EdgeAddr, *app+".perch.local", *n, *access)
		if err != nil {
			return fmt.Errorf("%s edge %s: %w", r.Code, r.EdgeAddr, err)
		}
		c.Region, c.Edge = r.Code, r.EdgeAddr
		if reg, ok := geo.Default().Lookup(r.Code); ok {
			c.City = reg.City
		}
		fmt.Printf("%-4s %-14s cold %7.1f ms  median %7.1f ms  served by %v\n", c.Region, c.City, c.ColdMS, c.MedianMS, c.ServedBy)
		ph.Cities = append(ph.Cities, c)
	}
	ph.LoadEnd = loadAvg()
	return writeJSON(*out, ph)
}

var servedRe = regexp.MustCompile(`^hello from (\S+) `)

// measureCity sends 1+n GET requests through the edge at addr, each on a
// new connection as a new visitor would, and times each one's TTFB.
func measureCity(addr, host string, n int, oneWay time.Duration) (City, error) {
	c := City{ServedBy: map[string]int{}}
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext:        accessnet.DialDelayed(oneWay),
			DisableKeepAlives:  true,
			DisableCompression: true,
		},
	}
	cold := true
	for i := 0; i <= n; i++ {
		ttfb, from, err := timeRequest(client, "http://"+addr+"/", host)
		if err != nil {
			c.Failed++
			if c.Failed > n/4 {
				return c, fmt.Errorf("%d of %d requests failed, the last: %w", c.Failed, i+1, err)
			}
			continue
		}
		c.ServedBy[from]++
		ms := float64(ttfb) / float64(time.Millisecond)
		if cold {
			c.ColdMS, cold = ms, false
			continue
		}
		c.WarmMS = append(c.WarmMS, ms)
	}
	c.MedianMS = median(c.WarmMS)
	return c, nil
}

// timeRequest returns the time from having a connection to the first
// response byte, and the region the body says answered. The connection's
// own round trip is left out: it is the same with the app anywhere.
func timeRequest(client *http.Client, url, host string) (time.Duration, string, error) {
	var gotConn, firstByte time.Time
	trace := &httptrace.ClientTrace{
		GotConn:              func(httptrace.GotConnInfo) { gotConn = time.Now() },
		GotFirstResponseByte: func() { firstByte = time.Now() },
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, "", fmt.Errorf("%s: %q", resp.Status, body)
	}
	m := servedRe.FindSubmatch(body)
	if m == nil {
		return 0, "", fmt.Errorf("body %q does not say which region answered", body)
	}
	return firstByte.Sub(gotConn), string(m[1]), nil
}

// loadAvg is /proc/loadavg's first three fields.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
