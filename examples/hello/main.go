// Command hello is Perch's sample app: an HTTP server that says which
// region and machine answered. It listens on $PORT (8080 by default).
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
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
	http.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("exiting on request")
		os.Exit(3)
	})
	log.Printf("hello listening on :%s in %s", port, region)
	log.Fatal(http.ListenAndServe(":"+port, nil))
}
