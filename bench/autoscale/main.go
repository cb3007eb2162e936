// Command autoscale replays a recorded 10-minute traffic trace (trace.csv:
// seconds, region, requests in flight entering there) through the
// autoscaler's pure Decide with simulated time, and compares the
// machine-seconds its decisions use with keeping, in every region, the
// machines that region's peak needs all the time.
//
//	go run ./bench/autoscale            # replay bench/autoscale/trace.csv
//	go run ./bench/autoscale -record    # write the synthetic trace anew
package main

import (
	"encoding/csv"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/autoscale"
)

var regions = []string{"iad", "fra", "syd", "gru", "sin"}

const (
	step     = 2 * time.Second // the edges' report interval
	duration = 10 * time.Minute
	// startDelay is how long a new machine takes to serve after the
	// decision (measured cold start through the edge is well under this).
	startDelay = 2 * time.Second
)

func main() {
	path := flag.String("trace", "bench/autoscale/trace.csv", "trace file")
	record := flag.Bool("record", false, "write a new synthetic trace to -trace and exit")
	window := flag.Duration("window", time.Minute, "scale_down_window for the replay")
	flag.Parse()
	if *record {
		if err := writeTrace(*path); err != nil {
			log.Fatal(err)
		}
		return
	}
	trace, err := readTrace(*path)
	if err != nil {
		log.Fatal(err)
	}
	set := autoscale.Resolve(api.AutoscaleSettings{MaxMachines: 40, ScaleDownWindow: window.String()}, regions, 0)
	per := set.Target * float64(set.SoftLimit)

	counts := map[string]autoscale.Count{}
	pending := map[string][]time.Duration{} // machines deciding at t serve from t+startDelay
	var hist []autoscale.Recommendation
	var autoMS, staticMS, unservedS float64
	peak := map[string]int{}
	t0 := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	for i := range int(duration / step) {
		at := time.Duration(i) * step
		dem := map[string]autoscale.Demand{}
		for _, r := range regions {
			c := trace[at][r]
			dem[r] = autoscale.Demand{RPS: c * 10, Concurrency: c}
			peak[r] = max(peak[r], int(math.Ceil(c/per)))
		}
		out := autoscale.Decide(autoscale.Input{Now: t0.Add(at), Settings: set, Demand: dem, Machines: counts, History: hist})
		hist = append(hist, out.Recommendation)
		for len(hist) > 0 && t0.Add(at).Sub(hist[0].At) > set.Window {
			hist = hist[1:]
		}
		for _, r := range regions {
			c := counts[r]
			want := out.Desired[r]
			for c.Total < want {
				c.Total++
				c.Owned++
				pending[r] = append(pending[r], at+startDelay)
			}
			if want < c.Total {
				c.Total, c.Owned = want, want
				pending[r] = pending[r][:min(len(pending[r]), want)]
			}
			counts[r] = c
			serving := 0
			for _, ready := range pending[r] {
				if ready <= at {
					serving++
				}
			}
			autoMS += float64(c.Total) * step.Seconds()
			if dem[r].Concurrency > float64(serving*set.SoftLimit) {
				unservedS += step.Seconds() // over the soft limit itself, not only the target
			}
		}
	}
	for _, r := range regions {
		staticMS += float64(max(peak[r], 1)) * duration.Seconds()
	}
	fmt.Printf("trace %s: %d regions, %s, step %s; target %.1f × soft limit %d = %.0f in flight per machine; scale_down_window %s\n",
		*path, len(regions), duration, step, set.Target, set.SoftLimit, per, set.Window)
	fmt.Printf("static (each region's peak count, all the time): %.0f machine-seconds\n", staticMS)
	fmt.Printf("autoscaler's decisions:                          %.0f machine-seconds (%.0f%% of static)\n", autoMS, autoMS/staticMS*100)
	fmt.Printf("region-seconds with demand above the serving machines' soft limit: %.0f of %.0f (%.1f%%; start delay %s)\n",
		unservedS, duration.Seconds()*float64(len(regions)), unservedS/(duration.Seconds()*float64(len(regions)))*100, startDelay)
	fmt.Printf("peak machines per region: %v\n", peak)
}

// writeTrace records a synthetic day squeezed into ten minutes: each
// region's demand follows its own sun (a raised cosine peaking at its local
// midday), plus a short burst in sin.
func writeTrace(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	w.Write([]string{"seconds", "region", "in_flight"})
	phase := map[string]float64{"iad": 0.0, "fra": 0.25, "syd": 0.55, "gru": 0.1, "sin": 0.65}
	peakC := map[string]float64{"iad": 60, "fra": 45, "syd": 25, "gru": 18, "sin": 30}
	for i := range int(duration / step) {
		at := time.Duration(i) * step
		x := at.Seconds() / duration.Seconds()
		for _, r := range regions {
			c := peakC[r] * math.Max(0, math.Cos(2*math.Pi*(x-phase[r]))) // night: nothing
			if r == "sin" && at >= 7*time.Minute && at < 7*time.Minute+40*time.Second {
				c += 50
			}
			w.Write([]string{strconv.Itoa(int(at.Seconds())), r, strconv.FormatFloat(math.Round(c*10)/10, 'f', 1, 64)})
		}
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return err
	}
	return f.Close()
}

func readTrace(path string) (map[time.Duration]map[string]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open trace: %w (record one with -record)", err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("read trace %s: %w", path, err)
	}
	out := map[time.Duration]map[string]float64{}
	for i, row := range rows[1:] {
		s, err1 := strconv.Atoi(row[0])
		c, err2 := strconv.ParseFloat(row[2], 64)
		if err1 != nil || err2 != nil || !slices.Contains(regions, row[1]) {
			return nil, fmt.Errorf("trace %s line %d: want seconds,region,in_flight, got %v", path, i+2, row)
		}
		at := time.Duration(s) * time.Second
		if out[at] == nil {
			out[at] = map[string]float64{}
		}
		out[at][row[1]] = c
	}
	return out, nil
}
