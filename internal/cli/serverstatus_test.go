package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// TestServerStatusSingle: `perch server status` on a server alone shows
// it, its streams at one replica and the leases it holds with their
// holder (TestTokenScopes checks the route is the admin token's).
func TestServerStatusSingle(t *testing.T) {
	loggedOut(t)
	srv := startServerWith(t)
	t.Setenv(envAPIURL, srv.URL())
	t.Setenv(envAPIToken, srv.AdminToken())
	var st *api.ClusterStatus
	eventually := time.Now().Add(30 * time.Second)
	for {
		var err error
		st, err = api.NewClient(srv.URL(), srv.AdminToken()).ClusterStatus(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Leases) > 0 || time.Now().After(eventually) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st.Cluster != "" || !st.Quorum || len(st.Servers) != 1 || !st.Servers[0].Up || st.Servers[0].Name != srv.Name() {
		t.Errorf("status %+v: want one server, up, %s, with quorum", st, srv.Name())
	}
	if len(st.Leases) == 0 || st.Leases[0].Holder != srv.Name() || st.Leases[0].Since.IsZero() {
		t.Errorf("leases %+v: want held by %s, with the time taken", st.Leases, srv.Name())
	}
	apps := false
	for _, s := range st.Streams {
		apps = apps || (s.Name == "KV_perch_apps" && s.Replicas == 1)
	}
	if !apps {
		t.Errorf("streams %+v: want KV_perch_apps at one replica", st.Streams)
	}

	cmd := NewServerStatusCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs(nil)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("perch server status: %v\n%s", err, out.String())
	}
	t.Logf("perch server status:\n%s", out.String())
	for _, want := range []string{"Single server " + srv.Name(), "host-monitor", "KV_perch_apps", "SERVER"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("perch server status does not show %q", want)
		}
	}
}

// TestServerRemoveSingle: `perch server remove` on a server alone says
// there is no cluster to remove a server from (the cluster case:
// internal/server's TestAddAndRemoveServer).
func TestServerRemoveSingle(t *testing.T) {
	loggedOut(t)
	srv := startServerWith(t)
	t.Setenv(envAPIURL, srv.URL())
	t.Setenv(envAPIToken, srv.AdminToken())
	cmd := NewServerRemoveCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"s1"})
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), "not one of a cluster") || !strings.Contains(err.Error(), "400") {
		t.Errorf("perch server remove on a single server: %v, want a 400 saying it is not one of a cluster", err)
	}
}
