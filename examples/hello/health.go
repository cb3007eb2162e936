package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"sync/atomic"
)

// handleHealth serves /health for health checks, and two switches that
// tests and demos use to make it fail and pass again: /health/fail and
// /health/ok.
func handleHealth(mux *http.ServeMux) {
	var failing atomic.Bool
	var checked atomic.Int64
	// HELLO_UNHEALTHY=1 starts failing: a release whose checks never pass.
	failing.Store(os.Getenv("HELLO_UNHEALTHY") == "1")
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		checked.Add(1)
		if failing.Load() {
			http.Error(w, "unhealthy (switched by /health/fail)", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	// How many times /health was asked: tests wait for checks to run.
	mux.HandleFunc("/health/count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, checked.Load())
	})
	mux.HandleFunc("/health/fail", func(w http.ResponseWriter, r *http.Request) {
		failing.Store(true)
		log.Printf("health: failing from now on")
		fmt.Fprintln(w, "health checks fail from now on")
	})
	mux.HandleFunc("/health/ok", func(w http.ResponseWriter, r *http.Request) {
		failing.Store(false)
		log.Printf("health: passing from now on")
		fmt.Fprintln(w, "health checks pass from now on")
	})
}
