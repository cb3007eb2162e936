// Command latency is the latency demo of issue 4: for a client in every
// region's city it measures the time to first byte through that city's
// edge, once while the sample app runs only in iad and once when it runs in
// every region, and reports the reduction against the physical limit (the
// client's round trip to its own edge). It also records the memory of each
// idle host. bench/latency/run.sh brings the dev world up, deploys the app
// and calls the steps below in order; results go to bench/latency/results.md.
//
//	latency env      -world DIR                 shell variables for the script
//	latency settle   -world DIR                 wait until the mesh has measured every pair
//	latency memory   -world DIR -out F          VmRSS and Pss of each agent and the control plane
//	latency measure  -world DIR -out F          TTFB through each region's edge
//	latency wait     -world DIR                 until each edge answers from its own region
//	latency report   -before F -after F -memory F   the results as markdown
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/perchhq/perch/internal/devcluster"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("latency: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: latency env|settle|memory|measure|wait|report [flags]; see bench/latency/run.sh")
	}
	steps := map[string]func([]string) error{
		"env": cmdEnv, "settle": cmdSettle, "memory": cmdMemory,
		"measure": cmdMeasure, "wait": cmdWait, "report": cmdReport,
	}
	step, ok := steps[os.Args[1]]
	if !ok {
		log.Fatalf("unknown step %q: want env, settle, memory, measure, wait or report", os.Args[1])
	}
	if err := step(os.Args[2:]); err != nil {
		log.Fatalf("%s: %v", os.Args[1], err)
	}
}

// cmdEnv prints what the script needs from world.json as shell
// assignments, so the script parses no JSON.
func cmdEnv(args []string) error {
	fs := flag.NewFlagSet("env", flag.ExitOnError)
	dir := fs.String("world", "", "the dev world's directory")
	fs.Parse(args)
	info, err := devcluster.ReadInfo(*dir)
	if err != nil {
		return err
	}
	var codes []string
	for _, r := range info.Regions {
		codes = append(codes, r.Code)
	}
	for _, kv := range [][2]string{
		{"PERCH_API_URL", info.APIURL}, {"PERCH_API_TOKEN", info.Token},
		{"REGISTRY", info.Registry}, {"WORLD_REGIONS", strings.Join(codes, ",")},
	} {
		fmt.Printf("%s=%s\n", kv[0], shellQuote(kv[1]))
	}
	return nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read results: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
