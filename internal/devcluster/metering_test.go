package devcluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/billing"
	"github.com/perchhq/perch/internal/devcluster"
)

// TestMeteringSurvivesCutAndKill: a machine runs while its host's agent is
// cut off from NATS (the control plane and its NATS down) and then killed
// with SIGKILL; the machine runs on under its shim. Once both are back
// and the machine is stopped, the month's started seconds equal the
// machine's running time within one interval: nothing lost (the spool)
// and nothing counted twice (record ids), with the ledger rebuilt from the
// stream by the restarted control plane.
func TestMeteringSurvivesCutAndKill(t *testing.T) {
	const interval = time.Second
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}, MeterInterval: interval})
	ctx := context.Background()
	c := w.Client()
	ref := pushImage(t, w, "hello:v1")
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: "metered"}); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	m := createStarted(t, w, "metered", "iad", api.MachineConfig{Image: ref, Services: httpService()})
	afterStart := time.Now()
	started := func() float64 {
		var u billing.Usage
		if err := c.Usage(ctx, "app", "metered", "", &u); err != nil {
			return -1
		}
		return u.StartedSeconds
	}
	eventually(t, 10*time.Second, "first records", func() (bool, string) { s := started(); return s > 0, fmt.Sprint(s) })

	w.StopServer() // NATS gone: the agent spools
	cut := time.Now()
	for time.Since(cut) < 3*interval {
		time.Sleep(interval / 4) // the cut lasts three intervals
	}
	if err := w.KillAgent("iad"); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var spool struct{ Pending []billing.Record }
	b, err := os.ReadFile(filepath.Join(w.Info().Regions[0].StateDir, "meter.json"))
	if err == nil {
		err = json.Unmarshal(b, &spool)
	}
	if err != nil || len(spool.Pending) < 2 {
		t.Fatalf("the killed agent's spool holds %d records (%v), want the cut's intervals", len(spool.Pending), err)
	}
	t.Logf("the killed agent left %d records in its spool", len(spool.Pending))
	for time.Since(killed) < 2*interval {
		time.Sleep(interval / 4) // the machine runs with no agent
	}
	if err := w.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.StartAgent(ctx, "iad"); err != nil {
		t.Fatal(err)
	}
	c = w.Client()
	eventually(t, 30*time.Second, "records from after the restart", func() (bool, string) {
		s := started()
		return s > time.Since(before).Seconds()-3*interval.Seconds(), fmt.Sprint(s)
	})
	beforeStop := time.Now()
	if err := c.StopMachine(ctx, "metered", m.ID, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitMachine(ctx, "metered", m.ID, api.StateStopped, time.Minute); err != nil {
		t.Fatal(err)
	}
	afterStop := time.Now()
	lo, hi := beforeStop.Sub(afterStart).Seconds(), afterStop.Sub(before).Seconds()
	var got float64
	eventually(t, 10*time.Second, "started seconds equal to the running time", func() (bool, string) {
		got = started()
		return got >= lo-interval.Seconds() && got <= hi+interval.Seconds(),
			fmt.Sprintf("%.2f s metered, ran between %.2f and %.2f s", got, lo, hi)
	})
	t.Logf("metered %.2f s started; the machine ran between %.2f and %.2f s (off by at most %.2f s)", got, lo, hi,
		math.Max(math.Max(0, lo-got), math.Max(0, got-hi)))
}
