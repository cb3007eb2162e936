package runc

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/hostnet/hostnettest"
	"github.com/perchhq/perch/internal/mesh"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/drivertest"
)

// TestIsolationRuncMachines is the isolation matrix of docs/security.md
// with real runc machines (user namespace, seccomp and all) of two
// organisations on one host's bridge under its network policy
// (hostnet.ApplyPolicy): each machine fetches from every other machine
// by IPv4 and 6PN, and from a service of the host on the bridge's
// gateway; its own organisation's machines answer, nothing else does.
// Before the policy, the cross-organisation IPv4 and host probes connect,
// so a probe does see a leak. internal/agent's TestIsolationMatrix covers
// the same rules across hosts and the mesh, with runc machines, microVMs
// and namespaces standing in for more machines.
func TestIsolationRuncMachines(t *testing.T) {
	needRoot(t)
	br := hostnettest.New(t)
	rootfs := drivertest.BuildRootfs(t)
	d := newTestDriver(t)
	destroyAll(t, d)

	// A service of the host on the bridge's gateway (as NATS, the API or
	// the agent would listen on a host address).
	ln, err := net.Listen("tcp", net.JoinHostPort(br.Gateway.Addr().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	hostSvc := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "host service") })}
	// No keep-alive: a connection opened before the policy would stay
	// open through it (conntrack's established state), a test artefact
	// (the agent applies the policy before a machine starts).
	hostSvc.SetKeepAlivesEnabled(false)
	go hostSvc.Serve(ln)
	t.Cleanup(func() { hostSvc.Close() })

	type machine struct {
		spec runtime.Spec
		org  string
	}
	var ms []machine
	for i, org := range []string{"acme", "acme", "beta", "beta"} {
		n := br.Net(t)
		n.Addr6 = netip.PrefixFrom(mesh.MachineAddr(org, br.Subnet6, n.Addr.Addr()), 64)
		id := fmt.Sprintf("iso%d-%d", i, time.Now().UnixNano()%1e9)
		spec := runtime.Spec{
			ID:       id,
			Rootfs:   rootfs,
			Process:  runtime.Process{Args: []string{"/app", "serve"}, Env: []string{"PORT=8080", "MESSAGE=hello from " + id}},
			Hostname: "h-" + id,
			Net:      n,
			CPUs:     1,
			MemoryMB: 128,
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := d.Create(ctx, spec); err != nil {
			cancel()
			t.Fatalf("create %s: %v", id, err)
		}
		if err := d.Start(ctx, id); err != nil {
			cancel()
			t.Fatalf("start %s: %v", id, err)
		}
		cancel()
		ms = append(ms, machine{spec, org})
	}
	client := &http.Client{Transport: &http.Transport{}, Timeout: 20 * time.Second}
	// fetch asks machine m to GET target from inside it: the body, or ""
	// when it could not (testapp answers 502).
	fetch := func(m runtime.Spec, target string) (string, error) {
		u := fmt.Sprintf("http://%s:8080/fetch?url=%s", m.Net.Addr.Addr(), url.QueryEscape(target))
		deadline := time.Now().Add(15 * time.Second)
		for {
			resp, err := client.Get(u)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusBadGateway {
					return "", nil
				}
				return fmt.Sprintf("%d %s", resp.StatusCode, b), nil
			}
			if time.Now().After(deadline) { // the machine's own server never came up
				return "", fmt.Errorf("machine %s: %w", m.ID, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Every machine serves before any probe.
	for _, m := range ms {
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := client.Get(fmt.Sprintf("http://%s:8080/", m.spec.Net.Addr.Addr()))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("machine %s does not serve: %v", m.spec.ID, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	type probe struct {
		from, what, target, want string // want "" for a forbidden probe
	}
	var probes []probe
	for _, a := range ms {
		for _, b := range ms {
			if a.spec.ID == b.spec.ID {
				continue
			}
			want := ""
			if a.org == b.org {
				want = "hello from " + b.spec.ID
			}
			for _, addr := range []netip.Addr{b.spec.Net.Addr.Addr(), b.spec.Net.Addr6.Addr()} {
				probes = append(probes, probe{a.spec.ID, fmt.Sprintf("%s (%s) -> %s (%s)", a.spec.ID, a.org, b.spec.ID, b.org),
					"http://" + netip.AddrPortFrom(addr, 8080).String() + "/", want})
			}
		}
		probes = append(probes, probe{a.spec.ID, a.spec.ID + " -> the host's service on the gateway", "http://" + ln.Addr().String() + "/", ""})
	}
	specOf := map[string]runtime.Spec{}
	for _, m := range ms {
		specOf[m.spec.ID] = m.spec
	}
	// run runs the probes at once; it returns each one's answer.
	run := func(ps []probe) []string {
		out := make([]string, len(ps))
		var wg sync.WaitGroup
		for i, p := range ps {
			wg.Go(func() {
				got, err := fetch(specOf[p.from], p.target)
				if err != nil {
					t.Error(err)
				}
				out[i] = got
			})
		}
		wg.Wait()
		return out
	}

	// Without the policy the forbidden IPv4 and host probes connect.
	var open []probe
	for _, p := range probes {
		if p.want == "" && !strings.Contains(p.target, "[") {
			open = append(open, p)
		}
	}
	connected := 0
	for _, got := range run(open) {
		if got != "" {
			connected++
		}
	}
	if connected != len(open) {
		t.Fatalf("without the network policy %d of %d forbidden IPv4 and host probes connect; want all (else the probes cannot see a leak)", connected, len(open))
	}

	pol := hostnet.Policy{Bridge: br.Name, Gateway: br.Gateway, DNSPort: 53}
	for _, m := range ms {
		pol.Machines = append(pol.Machines, hostnet.PolicyMachine{ID: m.spec.ID, IPv4: m.spec.Net.Addr.Addr(), IPv6: m.spec.Net.Addr6, Org: mesh.OrgPrefix(m.org)})
	}
	if err := hostnet.ApplyPolicy(pol); err != nil {
		t.Fatalf("apply the network policy: %v", err)
	}
	t.Cleanup(func() {
		if err := hostnet.RemovePolicy(br.Name); err != nil {
			t.Error(err)
		}
	})
	refused, allowed, forbidden, ok := 0, 0, 0, 0
	for i, got := range run(probes) {
		p := probes[i]
		if p.want == "" {
			forbidden++
			if got != "" {
				t.Errorf("LEAK: %s via %s answered %q", p.what, p.target, got)
			} else {
				refused++
			}
			continue
		}
		allowed++
		if !strings.Contains(got, p.want) {
			t.Errorf("%s via %s: %q, want %q", p.what, p.target, got, p.want)
		} else {
			ok++
		}
	}
	t.Logf("runc machines of two organisations on one host: %d of %d forbidden probes refused, %d of %d allowed succeed (before the policy %d of %d forbidden IPv4 and host probes connected)",
		refused, forbidden, ok, allowed, connected, len(open))
}
