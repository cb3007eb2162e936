package edge

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// listeners keeps one listener open per public HTTP port of the current
// snapshot, on the edge's address.
type listeners struct {
	e  *Edge
	wg sync.WaitGroup // serving and draining goroutines

	mu   sync.Mutex // guards open
	open map[int]*portServer

	// skipped and failing remember which unserved ports and which ports
	// that could not be bound were already logged, to log them once.
	skipped, failing map[int]bool
}

type portServer struct {
	ln  net.Listener
	srv *http.Server
}

func newListeners(e *Edge) *listeners {
	return &listeners{e: e, open: map[int]*portServer{}, skipped: map[int]bool{}, failing: map[int]bool{}}
}

// bindRetry is how often ports that could not be bound are tried again
// when the routes do not change meanwhile.
const bindRetry = 5 * time.Second

// run syncs the listeners with every new snapshot until ctx is done, then
// closes them all.
func (l *listeners) run(ctx context.Context) {
	if !l.e.cfg.Addr.IsValid() {
		<-ctx.Done()
		return
	}
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			l.closeAll()
			l.wg.Wait()
			return
		case <-l.e.table.changed:
		case <-retry.C:
		}
		if l.sync(ctx, l.e.table.Snapshot()) {
			retry.Reset(bindRetry)
		}
	}
}

// sync opens the ports s needs and drains those it no longer has. A port
// that cannot be bound is logged and tried again later; sync says whether
// one failed.
func (l *listeners) sync(ctx context.Context, s *Snapshot) (failed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	want := map[int]bool{}
	for _, p := range s.ports {
		want[p] = true
		if l.open[p] != nil {
			continue
		}
		ps, err := l.listen(p)
		if err != nil {
			failed = true
			level := slog.LevelError
			if l.failing[p] {
				level = slog.LevelDebug
			}
			l.failing[p] = true
			l.e.log.Log(ctx, level, "cannot listen on public port; will retry", "port", p, "err", err)
			continue
		}
		delete(l.failing, p)
		l.open[p] = ps
		l.e.log.Info("listening", "addr", ps.ln.Addr().String())
	}
	for p := range l.failing {
		if !want[p] {
			delete(l.failing, p)
		}
	}
	for p, ps := range l.open {
		if !want[p] {
			delete(l.open, p)
			l.e.log.Info("closing public port: no app serves it any more", "port", p)
			l.wg.Go(func() { drain(ctx, ps.srv) })
		}
	}
	seen := map[int]bool{}
	for p, h := range s.skipped {
		seen[p] = true
		if !l.skipped[p] {
			l.e.log.Debug("public port not served: its handlers are not supported yet", "port", p, "handlers", h)
		}
	}
	l.skipped = seen
	return failed
}

func (l *listeners) listen(port int) (*portServer, error) {
	addr := netip.AddrPortFrom(l.e.cfg.Addr, uint16(port)).String()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		Handler:           l.e.Handler(port),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(l.e.log.Handler(), slog.LevelDebug),
	}
	l.wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			l.e.log.Error("public port stopped serving", "port", port, "err", err)
		}
	})
	return &portServer{ln: ln, srv: srv}, nil
}

// drain lets the requests in flight on a port that went away finish, unless
// the edge stops first.
func drain(ctx context.Context, srv *http.Server) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if srv.Shutdown(ctx) != nil {
		srv.Close()
	}
}

func (l *listeners) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p, ps := range l.open {
		ps.srv.Close()
		delete(l.open, p)
	}
}

func (l *listeners) ports() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Sorted(maps.Keys(l.open))
}
