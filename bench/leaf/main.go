// Command leaf measures a host's leaf node (issue 18, "regions as leaf
// nodes"): what its mirrors cost in memory and disk for a control plane
// of a given size, how long a fresh leaf takes to mirror it, how long a
// leaf restarted while cut off takes to serve its mirrors, and how long
// the changes made during a cut take to reach it once the link is back.
// The control plane's NATS and the leaf run in this process, the link
// between them through a loopback relay the benchmark cuts.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

func main() {
	apps := flag.Int("apps", 200, "apps")
	perApp := flag.Int("machines", 5, "machines per app (a spec and a status each)")
	certs := flag.Int("certs", 200, "certificates (edge copy: certificate and key, ~4 KiB)")
	changes := flag.Int("changes", 100, "specs changed during the cut")
	cutFor := flag.Duration("cut", 15*time.Second, "how long the link is cut")
	flag.Parse()
	ctx := context.Background()
	log.SetFlags(0)
	quiet := slog.New(slog.DiscardHandler)
	dir, err := os.MkdirTemp("", "perch-bench-leaf-")
	must(err)
	defer os.RemoveAll(dir)

	hub, err := store.RunEmbeddedWith(filepath.Join(dir, "hub"), "127.0.0.1:0", "secret", store.EmbeddedOptions{LeafListen: "127.0.0.1:0"}, quiet)
	must(err)
	defer hub.Shutdown()
	st, err := store.Open(ctx, hub.URL(), "secret", "bench")
	must(err)
	defer st.Close()
	bc, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	must(hub.SetHostUsers(store.HostUser{HostID: "ams-bench", Region: "ams", PassBcrypt: string(bc)}))

	// A control plane of the given size.
	spec := func(app string, i, gen int) []byte {
		b, _ := json.Marshal(store.MachineSpec{ID: fmt.Sprintf("m%04d", i), App: app, Region: "ams", HostID: "ams-bench", Generation: int64(gen),
			Config: api.MachineConfig{Image: "registry/" + app + ":deployment-01HZX", Env: map[string]string{"PORT": "8080", "FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "ams"},
				Services: []api.Service{{Protocol: "tcp", InternalPort: 8080, Ports: []api.Port{{Port: 80, Handlers: []string{"http"}}, {Port: 443, Handlers: []string{"tls", "http"}}}}}}})
		return b
	}
	keys := 0
	for a := range *apps {
		app := fmt.Sprintf("app%04d", a)
		_, err := st.Apps.Put(ctx, app, []byte(`{"name":"`+app+`","org":"personal","hostnames":["`+app+`.example.com"]}`))
		must(err)
		for m := range *perApp {
			i := a**perApp + m
			_, err := st.Machines.Put(ctx, app+fmt.Sprintf(".m%04d", i), spec(app, i, 1))
			must(err)
			_, err = st.Status.Put(ctx, app+fmt.Sprintf(".m%04d", i), []byte(`{"state":"started","ready":true,"generation":1,"events":[{"type":"start","status":"started","source":"host"}]}`))
			must(err)
			keys += 2
		}
		keys++
	}
	pem := strings.Repeat("A", 4096)
	for c := range *certs {
		_, err := st.EdgeTLS.Put(ctx, fmt.Sprintf("certificates/acme/c%04d.example.com/c.crt", c), []byte(pem))
		must(err)
		keys++
	}
	link := newLink(hubAddr(hub))

	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse
	}
	before := heap()
	leafDir := filepath.Join(dir, "leaf")
	start := time.Now()
	cfg := store.LeafConfig{Dir: leafDir, Remotes: []string{link.url()}, HostID: "ams-bench", Password: "pw", Log: quiet}
	leaf, err := store.RunLeaf(ctx, cfg)
	must(err)
	caughtUp := func() bool {
		ms, err := leaf.Mirrors(ctx)
		if err != nil {
			return false
		}
		var n uint64
		for _, m := range ms {
			n += m.Msgs
		}
		return n >= uint64(keys)
	}
	wait(caughtUp, 5*time.Minute, "initial mirror")
	initial := time.Since(start)
	mem := heap() - before
	fmt.Printf("control plane: %d apps, %d machines (spec + status), %d certificates: %d keys\n", *apps, *apps**perApp, *certs, keys)
	fmt.Printf("fresh leaf mirrored everything in %s\n", initial.Round(time.Millisecond))
	fmt.Printf("leaf memory (Go heap + stacks in use, after GC): %.1f MiB\n", float64(mem)/(1<<20))
	fmt.Printf("leaf disk (%s): %.1f MiB\n", "JetStream store", float64(du(leafDir))/(1<<20))

	// Cut, restart the leaf while cut off, change specs meanwhile.
	link.set(true)
	leaf.Shutdown()
	for i := range *changes {
		a := i % *apps
		app := fmt.Sprintf("app%04d", a)
		idx := a**perApp + (i/(*apps))%*perApp
		_, err := st.Machines.Put(ctx, app+fmt.Sprintf(".m%04d", idx), spec(app, idx, 2))
		must(err)
	}
	last := fmt.Sprintf("app%04d.m%04d", (*changes-1)%*apps, ((*changes-1)%*apps)**perApp+((*changes-1)/(*apps))%*perApp)
	restart := time.Now()
	leaf, err = store.RunLeaf(ctx, cfg)
	must(err)
	defer leaf.Shutdown()
	if _, err := leaf.KV(store.BucketMachines).Get(ctx, last); err != nil {
		log.Fatalf("restarted leaf has no %s: %v", last, err)
	}
	fmt.Printf("leaf restarted while cut off, serving its mirrors, in %s\n", time.Since(restart).Round(time.Millisecond))
	time.Sleep(*cutFor - time.Since(restart))
	link.set(false)
	back := time.Now()
	wait(func() bool {
		e, err := leaf.KV(store.BucketMachines).Get(ctx, last)
		if err != nil {
			return false
		}
		var s store.MachineSpec
		return json.Unmarshal(e.Value(), &s) == nil && s.Generation == 2
	}, 5*time.Minute, "catch-up")
	fmt.Printf("%d changes made during a %s cut reached the leaf %s after the link returned\n", *changes, *cutFor, time.Since(back).Round(time.Millisecond))
}

func wait(cond func() bool, d time.Duration, what string) {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			log.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func du(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if i, err := d.Info(); err == nil {
				n += i.Size()
			}
		}
		return nil
	})
	return n
}

func hubAddr(e *store.Embedded) string {
	u, err := url.Parse(e.LeafURL())
	must(err)
	return u.Host
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

// link is a loopback TCP relay that can be cut.
type link struct {
	ln    net.Listener
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func newLink(target string) *link {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	l := &link{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.mu.Lock()
			u, err := net.Dial("tcp", target)
			if l.cut || err != nil {
				l.mu.Unlock()
				c.Close()
				continue
			}
			l.conns = append(l.conns, c, u)
			l.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return l
}

func (l *link) url() string { return "nats-leaf://" + l.ln.Addr().String() }

func (l *link) set(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if cut {
		for _, c := range l.conns {
			c.Close()
		}
		l.conns = nil
	}
}
