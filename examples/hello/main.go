// Command hello is Perch's sample app: an HTTP server that says which
// region and machine answered. It listens on $PORT (8080 by default), on
// IPv4 and IPv6. GET /dns/{name} resolves a name from inside the machine
// (internal DNS included), as JSON; GET /fetch?url=U fetches U from inside
// it (another machine over 6PN). POST /count adds one to a counter kept
// only in memory and answers with it; GET /count reads it (a suspended
// and resumed machine keeps it, a restarted one starts from 0). On SIGTERM or SIGINT it finishes the
// requests in flight and exits, as a well-behaved server does.
// HELLO_UDP_ECHO_PORT=P echoes UDP datagrams on P; HELLO_DNS_PORT=P
// answers DNS on P over UDP and TCP (udp.go), for tests of UDP services.
//
// For tests of deploys, environment variables make it misbehave:
// HELLO_CRASH (exit 2 at once, printing it), HELLO_START_DELAY (listen
// only after this long), HELLO_EXIT_AFTER (exit 1 this long after it
// started listening), HELLO_NO_LISTEN=1 (never listen), HELLO_LINGER=1
// (on a stop signal, log it and keep serving, saying every second how
// long ago the signal came, until killed).
//
// As a release command (`hello release ok|fail|hang`, release.go) it
// says which release it runs for and whether DATABASE_URL is set, then
// exits 0, exits 3, or never exits.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// allocated holds what HELLO_ALLOC_MB asked for.
var allocated [][]byte

func main() {
	if len(os.Args) > 1 && os.Args[1] == "release" {
		release(os.Args[2:])
		return
	}
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
	if mb, _ := strconv.Atoi(os.Getenv("HELLO_ALLOC_MB")); mb > 0 {
		// For tests of the memory limit: use mb MiB, then serve.
		allocated = make([][]byte, mb)
		for i := range allocated {
			allocated[i] = make([]byte, 1<<20)
			for j := 0; j < 1<<20; j += 4096 {
				allocated[i][j] = 1
			}
		}
	}
	machine := os.Getenv("PERCH_MACHINE_ID")
	if mib, err := strconv.Atoi(os.Getenv("HELLO_FLOOD_MIB")); err == nil && mib > 0 {
		go flood(mib)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "hello from %s (machine %s); edge %s\n", region, machine, r.Header.Get("Perch-Region"))
	})
	http.HandleFunc("/env/{name}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, os.Getenv(r.PathValue("name")))
	})
	// PUT writes the body into a file, for tests of volumes.
	http.HandleFunc("PUT /file/{path...}", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err := os.WriteFile("/"+r.PathValue("path"), b, 0o644); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "written")
	})
	// A file's mode and content, for tests of config.files.
	http.HandleFunc("/file/{path...}", func(w http.ResponseWriter, r *http.Request) {
		p := "/" + r.PathValue("path")
		fi, err := os.Stat(p)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		b, _ := os.ReadFile(p)
		fmt.Fprintf(w, "%04o %s", fi.Mode().Perm(), b)
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
	var count atomic.Int64
	http.HandleFunc("POST /count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, count.Add(1))
	})
	http.HandleFunc("GET /count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, count.Load())
	})
	handleHealth(http.DefaultServeMux)
	handleDNS(http.DefaultServeMux)
	handleFetch(http.DefaultServeMux)
	serveUDP(region, machine)
	http.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("exiting on request")
		os.Exit(3)
	})
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT)
	if os.Getenv("HELLO_NO_LISTEN") == "1" {
		log.Printf("hello: not listening (HELLO_NO_LISTEN)")
		log.Printf("hello: got %s", <-stop)
		return
	}
	if d, err := time.ParseDuration(os.Getenv("HELLO_START_DELAY")); err == nil {
		log.Printf("hello: starting slowly, listening in %s", d)
		time.Sleep(d)
	}
	// With no host, Go listens on IPv6 and IPv4 alike (one socket,
	// [::]:port, IPv4 mapped), so the machine answers on its 6PN address too.
	srv := &http.Server{Addr: ":" + port}
	go func() {
		if err := srv.ListenAndServe(); err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()
	log.Printf("hello listening on :%s in %s", port, region)
	if d, err := time.ParseDuration(os.Getenv("HELLO_EXIT_AFTER")); err == nil {
		go func() {
			time.Sleep(d)
			log.Printf("hello: exiting after %s (HELLO_EXIT_AFTER)", d)
			os.Exit(1)
		}()
	}
	sig := <-stop
	log.Printf("hello: got signal %s", signalName(sig))
	if os.Getenv("HELLO_LINGER") == "1" {
		start := time.Now()
		for range time.Tick(time.Second) {
			log.Printf("hello: still running %ds after %s", int(time.Since(start).Seconds()), signalName(sig))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("hello: shutdown: %v", err)
	}
	log.Printf("hello: stopped")
}

func signalName(s os.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGQUIT:
		return "SIGQUIT"
	}
	return "SIGTERM"
}

// flood prints mib MiB of stdout as fast as it can, for tests of the log
// rate limit, then (once the host's rate allows a line again) says so.
func flood(mib int) {
	w := bufio.NewWriterSize(os.Stdout, 1<<20)
	line := []byte("hello: flood line 0000000000 " + strings.Repeat("x", 98) + "\n") // 128 bytes
	for i := range mib << 13 {
		copy(line[18:28], fmt.Sprintf("%010d", i))
		w.Write(line)
	}
	w.Flush()
	time.Sleep(2 * time.Second)
	fmt.Printf("hello: flooded %d MiB\n", mib)
}
