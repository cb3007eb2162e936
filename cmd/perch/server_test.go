package main

import (
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/store"
	"github.com/spf13/cobra"
)

// The cluster flags come all together or not at all, and each mistake
// says which flag to add or drop.
func TestClusterFlags(t *testing.T) {
	for _, tc := range []struct {
		name, peers, nats string
		c                 store.Cluster
		want              string // "" means accepted
	}{
		{name: "none", want: ""},
		{name: "full", c: store.Cluster{Name: "p", Listen: "10.0.0.1:4282"}, peers: "10.0.0.1:4282, 10.0.0.2:4282,10.0.0.3:4282", want: ""},
		{name: "peers without a name", peers: "10.0.0.1:4282", want: "need --cluster-name"},
		{name: "no listen", c: store.Cluster{Name: "p"}, peers: "10.0.0.1:4282", want: "needs --cluster-listen"},
		{name: "no peers", c: store.Cluster{Name: "p", Listen: "10.0.0.1:4282"}, want: "needs --cluster-peers"},
		{name: "external nats", c: store.Cluster{Name: "p", Listen: "10.0.0.1:4282"}, peers: "10.0.0.1:4282", nats: "nats://n:4222", want: "drop --cluster-name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			err := clusterConfig(&c, tc.peers, tc.nats)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
			if tc.name == "full" && (len(c.Peers) != 3 || c.Peers[1] != "10.0.0.2:4282" || c.Replicas() != 3) {
				t.Errorf("peers %q, replicas %d; want three peers, trimmed, and 3 replicas", c.Peers, c.Replicas())
			}
		})
	}
	one := store.Cluster{Name: "p", Listen: "a:1", Peers: []string{"a:1", "b:1"}}
	if r := one.Replicas(); r != 2 {
		t.Errorf("two servers keep %d replicas, want 2", r)
	}
	var alone *store.Cluster
	if r := alone.Replicas(); r != 1 {
		t.Errorf("a server alone keeps %d replicas, want 1", r)
	}
}

// perch server backup and restore say what was wrong: a restore from a
// directory that is no backup (before reaching any server), a backup
// without the server's data dir.
func TestBackupRestoreCommandErrors(t *testing.T) {
	run := func(cmd *cobra.Command, args ...string) error {
		cmd.SetArgs(args)
		cmd.SetOut(new(strings.Builder))
		cmd.SetErr(new(strings.Builder))
		return cmd.Execute()
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		cmd  *cobra.Command
		args []string
		want string
	}{
		{restoreCmd(), []string{dir + "/missing", "--data-dir", dir}, "no backup at " + dir + "/missing"},
		{restoreCmd(), []string{dir, "--data-dir", dir}, "is not a Perch backup"},
		{backupCmd(), []string{dir + "/b", "--data-dir", dir + "/none"}, "give the server's --data-dir"},
	} {
		if err := run(tc.cmd, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %v: %v, want an error saying %q", tc.cmd.Name(), tc.args, err, tc.want)
		}
	}
}
