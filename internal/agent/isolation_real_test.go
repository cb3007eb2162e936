package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/drivertest"
	"github.com/perchhq/perch/internal/runtime/microvm"
	"github.com/perchhq/perch/internal/runtime/runc"
)

// TestMain lets the test binary be the runc and microVM shims, as the
// perch binary is in production: TestIsolationMatrix makes real machines.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "microvm-shim":
			os.Exit(microvm.ShimMain(os.Args[2:]))
		case "runc-shim":
			os.Exit(runc.ShimMain(os.Args[2:]))
		}
	}
	os.Exit(m.Run())
}

// controlPort is where a real machine of the matrix serves testapp's
// HTTP (GET /dial): the test's way to make the machine's own process
// open a connection. Its matrix target is the banner on 8080, as for the
// other machines.
const controlPort = 8090

// newDriver is host h's driver of kind, with its own state dir.
func newDriver(t *testing.T, kind, initBin, cache, state string, h *isoHost) (perchrt.Driver, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(tLog{t, h.name}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if kind == "runc" {
		state = filepath.Join(t.TempDir(), h.name+"-runc")
		return runc.New(runc.Config{StateDir: state, ShimCommand: []string{exe, "runc-shim"}, Log: log})
	}
	return microvm.New(microvm.Config{
		StateDir: state, CacheDir: cache,
		ShimCommand: []string{exe, "microvm-shim"}, Init: initBin, Log: log,
	})
}

type tLog struct {
	t    *testing.T
	host string
}

func (w tLog) Write(p []byte) (int, error) {
	w.t.Log(w.host + ": " + strings.TrimSpace(string(p)))
	return len(p), nil
}

// canBootVMs says why this host cannot boot microVMs, or nil.
func canBootVMs(t *testing.T) error {
	d, err := microvm.New(microvm.Config{StateDir: t.TempDir(), Init: os.Args[0]})
	if err != nil {
		return err
	}
	return d.Check()
}

// bootMachines makes and starts the matrix's real machines with their
// drivers (one runc and one microvm driver per host), each on its host's
// bridge from inside the host's network namespace (its veth or tap,
// shim and qemu live there, as an agent's would), and waits until each
// one's testapp answers. The machines are destroyed when the test ends.
func bootMachines(t *testing.T, ms []*isoMachine) {
	t.Helper()
	start := time.Now()
	var rootfs, initBin string
	var initErr error
	var wg sync.WaitGroup
	if slices.ContainsFunc(ms, func(m *isoMachine) bool { return m.kind == "microvm" }) {
		wg.Go(func() {
			initBin = filepath.Join(t.TempDir(), "perch-init")
			cmd := exec.Command("go", "build", "-trimpath", "-o", initBin, "github.com/perchhq/perch/internal/runtime/microvm/guestinit/perchinit")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				initErr = fmt.Errorf("build perch-init: %v\n%s", err, out)
			}
		})
	}
	rootfs = drivertest.BuildRootfs(t)
	wg.Wait()
	if initErr != nil {
		t.Fatal(initErr)
	}
	cache := t.TempDir()
	type hostKind struct {
		h    *isoHost
		kind string
	}
	drivers := map[hostKind]perchrt.Driver{}
	states := map[*isoHost]string{} // the microVM driver's state dir of each host
	for _, m := range ms {
		h := m.host
		d := drivers[hostKind{h, m.kind}]
		if d == nil {
			var err error
			if m.kind == "microvm" {
				states[h] = filepath.Join(t.TempDir(), h.name+"-microvm")
			}
			if d, err = newDriver(t, m.kind, initBin, cache, states[h], h); err != nil {
				t.Fatal(err)
			}
			drivers[hostKind{h, m.kind}] = d
		}
		spec := perchrt.Spec{
			ID:     m.id,
			Rootfs: rootfs,
			Process: perchrt.Process{Args: []string{"/app", "serve"}, Env: []string{
				fmt.Sprintf("PORT=%d", controlPort), "BANNER_PORT=8080", "MESSAGE=" + m.name}},
			Hostname: m.name,
			Net: perchrt.Net{Bridge: h.bridge, Addr: netip.PrefixFrom(m.v4, 24), Gateway: h.gw.Addr(),
				Addr6: netip.PrefixFrom(m.v6, 64)},
			CPUs:     1,
			MemoryMB: microvm.MinMemoryMB,
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := inNetns("/run/netns/"+h.ns, func() error { return d.Destroy(ctx, m.id) }); err != nil {
				t.Errorf("destroy %s machine %s: %v", m.kind, m.name, err)
			}
		})
		// Creating makes a microVM image's disk once in the shared cache:
		// one machine at a time.
		err := inNetns("/run/netns/"+h.ns, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			return d.Create(ctx, spec)
		})
		if err != nil {
			t.Fatalf("create %s machine %s: %v", m.kind, m.name, err)
		}
	}
	// Emulated boots (TCG) take seconds each, longer on a loaded host:
	// all at once, with generous bounds.
	errs := make([]error, len(ms))
	for i, m := range ms {
		wg.Go(func() {
			errs[i] = inNetns("/run/netns/"+m.host.ns, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				defer cancel()
				return drivers[hostKind{m.host, m.kind}].Start(ctx, m.id)
			})
			if errs[i] != nil {
				return
			}
			deadline := time.Now().Add(2 * time.Minute)
			for {
				body, err := machineGet(m, "/")
				if err == nil && strings.Contains(body, m.name) {
					return
				}
				if time.Now().After(deadline) {
					errs[i] = fmt.Errorf("its testapp does not answer on %v: %v", m.v4, err)
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			m := ms[i]
			if m.kind == "microvm" {
				b, _ := os.ReadFile(filepath.Join(states[m.host], "machines", m.id, "console.log"))
				t.Logf("%s's console, its end:\n%s", m.name, b[max(0, len(b)-4000):])
			}
			t.Fatalf("%s machine %s: %v", m.kind, m.name, err)
		}
	}
	t.Logf("%d real machines made, started and serving in %v", len(ms), time.Since(start).Round(time.Millisecond))
}

// machineGet asks real machine m's testapp for path, from inside m's
// host's network namespace (one connection on this locked thread: an
// http.Client would dial from another thread, in another namespace).
func machineGet(m *isoMachine, path string) (string, error) {
	var body string
	err := inNetns("/run/netns/"+m.host.ns, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(m.v4, controlPort).String(), 5*time.Second)
		if err != nil {
			return fmt.Errorf("%w: %w", errProbeBroken, err)
		}
		defer c.Close()
		// Its own dial and read take up to 3.5 s, more in an emulated
		// guest on a loaded host.
		c.SetDeadline(time.Now().Add(60 * time.Second))
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, m.name); err != nil {
			return fmt.Errorf("%w: %w", errProbeBroken, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return fmt.Errorf("%w: %w", errProbeBroken, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return fmt.Errorf("%w: %w", errProbeBroken, err)
		}
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusBadGateway: // the guest could not connect: refused
			return fmt.Errorf("from inside %s: %s", m.name, strings.TrimSpace(string(b)))
		default:
			return fmt.Errorf("%w: %s answered %s: %s", errProbeBroken, m.name, resp.Status, strings.TrimSpace(string(b)))
		}
		body = string(b)
		return nil
	})
	return body, err
}

// errProbeBroken is a probe from a real machine that did not run (the
// test could not reach its testapp): neither a refusal nor a success.
var errProbeBroken = errors.New("probe did not run")

// machineDial is a probe from real machine m: the banner its process
// reads from to, or why it could not connect.
func machineDial(m *isoMachine, to netip.AddrPort) (string, error) {
	return machineGet(m, "/dial?addr="+url.QueryEscape(to.String()))
}
