// Command testapp is the program drivertest runs inside machines. It is
// built static and copied into a test root filesystem as /app.
//
//	app serve     answer HTTP on $PORT with what the process sees (JSON),
//	              GET /fetch?url=U with U fetched from inside, GET
//	              /fs?path=P with file P and PUT /fs?path=P writing it;
//	              exit 0 on SIGTERM unless IGNORE_SIGTERM=1, or die of
//	              it with no handler at all if DEFAULT_SIGTERM=1 (as a
//	              Python or Node program without one does)
//	app exit N    print a line to stdout and stderr, exit with code N
//	app sandbox   print one line per probe of the sandbox ("uid 0",
//	              "keyctl EPERM", ...) and exit 0
//	app forkbomb N  start processes until fork fails, print "forked N
//	              failed ERR", keep them N seconds, exit 0
//	app alloc MB  touch MB MiB of memory, print "allocated", sleep
//	app fillup PATH write PATH until a write fails, print "wrote N MiB: ERR"
//	app write P T write T into file P, print "wrote", exit 0
//	app read P    print file P, exit 0 (1 if it cannot be read)
//	app fill P MB write MB MiB of data into file P in 1 MiB writes, fsync,
//	              print "filled BYTES SECONDS ERR" (ERR "-" if none)
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Info is the answer to GET /.
type Info struct {
	Message  string   `json:"message"`
	UID      int      `json:"uid"`
	GID      int      `json:"gid"`
	Groups   []int    `json:"groups"`
	Cwd      string   `json:"cwd"`
	Hostname string   `json:"hostname"`
	Hosts    string   `json:"hosts"`
	Resolv   string   `json:"resolv"` // /etc/resolv.conf, "" if none
	Addrs    []string `json:"addrs"`  // of every interface, with prefix length
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: app serve | app exit N")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "exit":
		code, _ := strconv.Atoi(os.Args[2])
		fmt.Println("hello stdout")
		fmt.Fprintln(os.Stderr, "hello stderr")
		os.Exit(code)
	case "serve":
		serve()
	case "sandbox":
		sandbox()
		os.Exit(0)
	case "forkbomb":
		secs, _ := strconv.Atoi(os.Args[2])
		forkbomb(time.Duration(secs) * time.Second)
		os.Exit(0)
	case "alloc":
		mb, _ := strconv.Atoi(os.Args[2])
		alloc(mb)
	case "fillup":
		fillUp(os.Args[2])
		os.Exit(0)
	case "sleep":
		time.Sleep(time.Hour)
	case "write":
		if err := os.WriteFile(os.Args[2], []byte(os.Args[3]), 0o644); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("wrote")
		os.Exit(0)
	case "read":
		b, err := os.ReadFile(os.Args[2])
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Printf("read %s\n", b)
		os.Exit(0)
	case "fill":
		mb, _ := strconv.Atoi(os.Args[3])
		fill(os.Args[2], mb)
		os.Exit(0)
	}
	os.Exit(2)
}

// fill writes mb MiB into path and reports bytes, seconds and the error
// that stopped it (ENOSPC on a full volume).
func fill(path string, mb int) {
	start := time.Now()
	f, err := os.Create(path)
	if err != nil {
		fmt.Printf("filled 0 0 %v\n", err)
		return
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1) // not zeros: nothing may skip them
	}
	var n int64
	for i := 0; i < mb && err == nil; i++ {
		var w int
		w, err = f.Write(buf)
		n += int64(w)
	}
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	msg := "-"
	if err != nil {
		msg = err.Error()
	}
	fmt.Printf("filled %d %.6f %s\n", n, time.Since(start).Seconds(), msg)
}

func serve() {
	sigs := make(chan os.Signal, 1)
	switch {
	case os.Getenv("IGNORE_SIGTERM") == "1":
		signal.Ignore(syscall.SIGTERM)
	case os.Getenv("DEFAULT_SIGTERM") == "1":
		defaultSIGTERM()
	default:
		signal.Notify(sigs, syscall.SIGTERM)
	}
	go func() {
		<-sigs
		fmt.Println("got SIGTERM")
		os.Exit(0)
	}()
	// SIGHUP is only reported: the Signal case checks it arrives and the
	// process keeps running.
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	go func() {
		for range hups {
			fmt.Println("got SIGHUP")
		}
	}()
	http.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		cwd, _ := os.Getwd()
		host, _ := os.Hostname()
		hosts, _ := os.ReadFile("/etc/hosts")
		resolv, _ := os.ReadFile("/etc/resolv.conf")
		groups, _ := os.Getgroups()
		var addrs []string
		if all, err := net.InterfaceAddrs(); err == nil {
			for _, a := range all {
				addrs = append(addrs, a.String())
			}
		}
		json.NewEncoder(w).Encode(Info{
			Message: os.Getenv("MESSAGE"), UID: os.Getuid(), GID: os.Getgid(), Groups: groups,
			Cwd: cwd, Hostname: host, Hosts: string(hosts), Resolv: string(resolv), Addrs: addrs,
		})
	})
	// GET /fetch?url=U answers with U's body, fetched from inside the
	// machine: how a test sees what the machine can reach.
	client := &http.Client{Timeout: 5 * time.Second}
	http.HandleFunc("GET /fetch", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get(r.URL.Query().Get("url"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})
	// GET /dial?addr=H:P opens a TCP connection from inside the machine
	// and answers with what the server there sends within 2 s (502 only
	// when the machine cannot connect: a connection made counts, whatever
	// it reads): the isolation matrix's probe from inside a machine.
	http.HandleFunc("GET /dial", func(w http.ResponseWriter, r *http.Request) {
		c, err := net.DialTimeout("tcp", r.URL.Query().Get("addr"), 1500*time.Millisecond)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		b, _ := io.ReadAll(io.LimitReader(c, 4096))
		w.Write(b)
	})
	// BANNER_PORT=P answers every connection on P with MESSAGE and a
	// newline, then closes it: the isolation matrix's target.
	if p := os.Getenv("BANNER_PORT"); p != "" {
		ln, err := net.Listen("tcp", ":"+p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, os.Getenv("MESSAGE")+"\n")
				c.Close()
			}
		}()
	}
	// UNACCEPTED_PORT=P listens on P and never accepts: a connection to it
	// stays in the kernel's accept queue (what CRIU calls in flight).
	if p := os.Getenv("UNACCEPTED_PORT"); p != "" {
		ln, err := net.Listen("tcp", ":"+p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer ln.Close()
	}
	// POST /count adds one to a counter held only in memory and answers
	// with its new value; GET /count answers with it. A machine resumed
	// from a snapshot keeps it; a machine booted afresh starts at 0.
	var count atomic.Int64
	http.HandleFunc("POST /count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, count.Add(1))
	})
	http.HandleFunc("GET /count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, count.Load())
	})
	// PUT /files/NAME writes NAME under /tmp; GET reads it back.
	http.HandleFunc("PUT /files/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := os.WriteFile(filepath.Join("/tmp", r.PathValue("name")), []byte("written"), 0o644); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	http.HandleFunc("GET /files/{name}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, filepath.Join("/tmp", r.PathValue("name")))
	})
	// GET /fs?path=P answers with file P; PUT writes "written" into it.
	http.HandleFunc("GET /fs", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	http.HandleFunc("PUT /fs", func(w http.ResponseWriter, r *http.Request) {
		if err := os.WriteFile(r.URL.Query().Get("path"), []byte("written"), 0o644); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
		}
	})
	addr := ":" + os.Getenv("PORT")
	fmt.Println("listening on", addr)
	if err := http.ListenAndServe(addr, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// defaultSIGTERM sets SIGTERM's disposition to SIG_DFL behind the Go
// runtime's back, which otherwise catches it (and exits on it itself):
// the process then has no handler, as most programs in other languages.
func defaultSIGTERM() {
	var act [4]uint64 // struct sigaction: handler SIG_DFL (0), no flags, no mask
	if _, _, errno := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGTERM), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0); errno != 0 {
		fmt.Fprintln(os.Stderr, "rt_sigaction:", errno)
		os.Exit(1)
	}
}
