// Command hello is Perch's sample app: an HTTP server that says which
// region and machine answered. It listens on $PORT (8080 by default), on
// IPv4 and IPv6. GET /dns/{name} resolves a name from inside the machine
// (internal DNS included), as JSON.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	region := os.Getenv("PERCH_REGION")
	if msg := os.Getenv("HELLO_CRASH"); msg != "" {
		// For tests of the restart policy: fail at once.
		fmt.Fprintln(os.Stderr, msg)
		os.Exit(2)
	}
	machine := os.Getenv("PERCH_MACHINE_ID")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "hello from %s (machine %s); edge %s\n", region, machine, r.Header.Get("Perch-Region"))
	})
	http.HandleFunc("/env/{name}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, os.Getenv(r.PathValue("name")))
	})
	// A slow answer, for tests of the edge's concurrency limits.
	http.HandleFunc("/sleep/{duration}", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.PathValue("duration"))
		if err != nil || d > time.Minute {
			http.Error(w, "want a duration up to 1m, like /sleep/2s", http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(d):
		case <-r.Context().Done():
		}
		fmt.Fprintf(w, "slept %s in %s (machine %s)\n", d, region, machine)
	})
	handleHealth(http.DefaultServeMux)
	handleDNS(http.DefaultServeMux)
	http.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("exiting on request")
		os.Exit(3)
	})
	log.Printf("hello listening on :%s in %s", port, region)
	// With no host, Go listens on IPv6 and IPv4 alike (one socket,
	// [::]:port, IPv4 mapped), so the machine answers on its 6PN address too.
	log.Fatal(http.ListenAndServe(":"+port, nil))
}
