package hostnet_test

import (
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/hostnet/hostnettest"
)

// A bridge's policy is two tables of its own, replaced whole, and gone
// after RemovePolicy; bad input is refused before nft runs.
func TestPolicyTablesComeAndGo(t *testing.T) {
	br := hostnettest.New(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft is not installed (scripts/deps.sh installs nftables): %v", err)
	}
	n := br.Net6(t)
	m := hostnet.PolicyMachine{ID: newID(t, "pol"), IPv4: n.Addr.Addr(), IPv6: n.Addr6, Org: netip.MustParsePrefix("fdaa:8000:1::/48")}
	p := hostnet.Policy{Bridge: br.Name, Gateway: br.Gateway, DNSPort: 53, Machines: []hostnet.PolicyMachine{m}}
	t.Cleanup(func() { hostnet.RemovePolicy(br.Name) })
	for range 2 { // a second apply replaces the first
		if err := hostnet.ApplyPolicy(p); err != nil {
			t.Fatal(err)
		}
	}
	table := hostnet.PolicyTable(br.Name)
	tables, err := hostnet.PolicyTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"bridge " + table, "inet " + table} {
		if !slices.Contains(tables, want) {
			t.Errorf("tables %v: %q missing", tables, want)
		}
	}
	out, err := exec.Command("ip", "-6", "route", "show", "dev", br.Name).Output()
	if err != nil || !strings.Contains(string(out), n.Addr6.Masked().String()) {
		t.Errorf("no route for the machine's 6PN /64 %s on %s: %s %v", n.Addr6.Masked(), br.Name, out, err)
	}

	for _, bad := range []hostnet.Policy{
		{Bridge: br.Name, Gateway: br.Gateway, Machines: []hostnet.PolicyMachine{{ID: "x", IPv4: netip.MustParseAddr("192.0.2.9")}}},
		{Bridge: br.Name, Gateway: br.Gateway, Machines: []hostnet.PolicyMachine{{ID: "../x", IPv4: n.Addr.Addr()}}},
		{Bridge: "bad name", Gateway: br.Gateway},
		{Bridge: br.Name},
	} {
		if err := hostnet.ApplyPolicy(bad); err == nil {
			t.Errorf("ApplyPolicy(%+v) must fail", bad)
		}
	}

	for range 2 { // removing a removed policy is no error
		if err := hostnet.RemovePolicy(br.Name); err != nil {
			t.Fatal(err)
		}
	}
	tables, err = hostnet.PolicyTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if strings.HasSuffix(tb, " "+table) {
			t.Errorf("table %s left after RemovePolicy", tb)
		}
	}
}

// The egress rules are never applied in tests (machines must not reach
// out of the box); nft checks them without applying (nft -c).
func TestEgressRulesAreValid(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft is not installed (scripts/deps.sh installs nftables)")
	}
	p := hostnet.Policy{Bridge: "pb-check", Gateway: netip.MustParsePrefix("10.213.250.1/24"), DNSPort: 53, Egress: true,
		Machines: []hostnet.PolicyMachine{{ID: "m1", IPv4: netip.MustParseAddr("10.213.250.2")}}}
	script := hostnet.PolicyRules(p)
	if !strings.Contains(script, "masquerade") {
		t.Fatalf("egress rules have no masquerade:\n%s", script)
	}
	cmd := exec.Command("nft", "-c", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft refuses the egress rules: %v: %s\n%s", err, out, script)
	}
	p.Egress = false
	if strings.Contains(hostnet.PolicyRules(p), "masquerade") {
		t.Error("rules without egress masquerade")
	}
}
