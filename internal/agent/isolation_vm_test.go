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
	"strings"
	"sync"
	"testing"
	"time"

	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/drivertest"
	"github.com/perchhq/perch/internal/runtime/microvm"
)

// TestMain lets the test binary be the microVM shim, as the perch binary
// is in production: TestIsolationMatrix boots real microVMs.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "microvm-shim" {
		os.Exit(microvm.ShimMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// vmControlPort is where a microVM of the matrix serves testapp's HTTP
// (GET /dial): the test's way to make the guest open a connection. Its
// matrix target is the banner on 8080, as for the other machines.
const vmControlPort = 8090

// vmDriver is a microVM driver for the matrix's hosts, or the reason
// this host cannot boot microVMs.
func vmDriver(t *testing.T, initBin, cache string, h *isoHost) (*microvm.Driver, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(tLog{t, h.name}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return microvm.New(microvm.Config{
		StateDir: filepath.Join(t.TempDir(), h.name), CacheDir: cache,
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

// bootVMs makes and boots the matrix's microVM machines, each on its
// host's bridge from inside the host's network namespace (its tap, shim
// and qemu live there, as an agent's would), and waits until each one's
// testapp answers. The machines are destroyed when the test ends.
func bootVMs(t *testing.T, vms []*isoMachine) {
	t.Helper()
	start := time.Now()
	var rootfs, initBin string
	var initErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		initBin = filepath.Join(t.TempDir(), "perch-init")
		cmd := exec.Command("go", "build", "-trimpath", "-o", initBin, "github.com/perchhq/perch/internal/runtime/microvm/guestinit/perchinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			initErr = fmt.Errorf("build perch-init: %v\n%s", err, out)
		}
	})
	rootfs = drivertest.BuildRootfs(t)
	wg.Wait()
	if initErr != nil {
		t.Fatal(initErr)
	}
	cache := t.TempDir()
	drivers := map[*isoHost]*microvm.Driver{}
	for _, m := range vms {
		h := m.host
		d := drivers[h]
		if d == nil {
			var err error
			if d, err = vmDriver(t, initBin, cache, h); err != nil {
				t.Fatal(err)
			}
			drivers[h] = d
		}
		spec := perchrt.Spec{
			ID:     m.id,
			Rootfs: rootfs,
			Process: perchrt.Process{Args: []string{"/app", "serve"}, Env: []string{
				fmt.Sprintf("PORT=%d", vmControlPort), "BANNER_PORT=8080", "MESSAGE=" + m.name}},
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
				t.Errorf("destroy microVM %s: %v", m.name, err)
			}
		})
		// Creating makes the image's disk once in the shared cache:
		// one machine at a time.
		err := inNetns("/run/netns/"+h.ns, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			return d.Create(ctx, spec)
		})
		if err != nil {
			t.Fatalf("create microVM %s: %v", m.name, err)
		}
	}
	// Emulated boots (TCG) take seconds each, longer on a loaded host:
	// all at once, with generous bounds.
	errs := make([]error, len(vms))
	for i, m := range vms {
		wg.Go(func() {
			errs[i] = inNetns("/run/netns/"+m.host.ns, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				defer cancel()
				return drivers[m.host].Start(ctx, m.id)
			})
			if errs[i] != nil {
				return
			}
			deadline := time.Now().Add(2 * time.Minute)
			for {
				body, err := vmGet(m, "/")
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
			t.Fatalf("microVM %s: %v", vms[i].name, err)
		}
	}
	t.Logf("microVMs %d booted and serving in %v", len(vms), time.Since(start).Round(time.Millisecond))
}

// vmGet asks microVM m's testapp for path, from inside m's host's
// network namespace (one connection on this locked thread: an
// http.Client would dial from another thread, in another namespace).
func vmGet(m *isoMachine, path string) (string, error) {
	var body string
	err := inNetns("/run/netns/"+m.host.ns, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(m.v4, vmControlPort).String(), 5*time.Second)
		if err != nil {
			return fmt.Errorf("%w: %w", errProbeBroken, err)
		}
		defer c.Close()
		// The guest is emulated: its own dial and read take up to 3.5 s,
		// more when the host is loaded.
		c.SetDeadline(time.Now().Add(30 * time.Second))
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

// errProbeBroken is a probe from a microVM that did not run (the test
// could not reach the guest's testapp): neither a refusal nor a success.
var errProbeBroken = errors.New("probe did not run")

// vmDial is a probe from microVM m: the banner its guest reads from to,
// or why the guest could not connect.
func vmDial(m *isoMachine, to netip.AddrPort) (string, error) {
	return vmGet(m, "/dial?addr="+url.QueryEscape(to.String()))
}
