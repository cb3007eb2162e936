package main

import (
	"fmt"
	"github.com/perchhq/perch/internal/anycast"
	"github.com/perchhq/perch/internal/billing"
	"github.com/perchhq/perch/internal/geo"
	"net/netip"
	"os/signal"
	"strings"
	"syscall"

	"github.com/perchhq/perch/internal/cli"
	"github.com/perchhq/perch/internal/meshhost"
	"github.com/perchhq/perch/internal/registry"
	"github.com/perchhq/perch/internal/server"
	"github.com/perchhq/perch/internal/store"
	"github.com/spf13/cobra"
)

func serverCmd() *cobra.Command {
	var cfg server.Config
	var machineNet string
	var acme acmeFlags
	var mesh server.MeshConfig
	var noMesh bool
	var pricesFile string
	var anycastV4, anycastV6 string
	var cluster store.Cluster
	var peers string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: API, scheduler, registry and state store",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			pfx, err := netip.ParsePrefix(machineNet)
			if err != nil {
				return fmt.Errorf("--machine-net %q is not a CIDR range; write e.g. 172.30.0.0/16", machineNet)
			}
			cfg.MachineNet = pfx
			if err := clusterConfig(&cluster, peers, cfg.NATSURL); err != nil {
				return err
			}
			if cluster.Name != "" {
				cfg.Cluster = &cluster
			}
			if cfg.Anycast, err = anycast.ParsePools(anycastV4, anycastV6); err != nil {
				return err
			}
			if !noMesh {
				cfg.Mesh = &mesh
			}
			cfg.Log = newLogger()
			if cfg.Certs.ACME, err = acme.config(); err != nil {
				return err
			}
			if pricesFile != "" {
				p, err := billing.LoadPrices(pricesFile, geo.Default().Codes())
				if err != nil {
					return fmt.Errorf("--prices: %w", err)
				}
				cfg.Prices = &p
			}
			srv, err := server.New(ctx, cfg)
			if err != nil {
				return err
			}
			defer srv.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "perch server: API and registry on %s\nadmin token written to %s\n", srv.URL(), srv.TokenPath())
			return srv.Serve(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", ":4280", "API and registry listen address")
	f.Uint16Var(&mesh.Port, "mesh-port", meshhost.DefaultPort, "UDP port of the control plane's WireGuard mesh node (0 picks one)")
	f.StringVar(&mesh.Host, "mesh-host", "", "address hosts send the control plane's mesh packets to (default: the --listen address)")
	f.StringVar(&mesh.Region, "region", "", "region the control plane runs in (e.g. iad)")
	f.BoolVar(&noMesh, "no-mesh", false, "do not join the WireGuard mesh")
	f.Float64Var(&mesh.Latency, "simulate-latency", 0, "delay mesh packets by the fiber time between regions times this route inflation (test worlds only)")
	_ = f.MarkHidden("simulate-latency")
	f.StringVar(&cfg.DataDir, "data-dir", "/var/lib/perch/server", "where state, registry blobs and tokens live")
	f.StringVar(&cfg.NATSURL, "nats", "", "use this external NATS (nats://host:4222) instead of the embedded one")
	f.StringVar(&cfg.NATSToken, "nats-token", "", "auth token for the external NATS")
	f.StringVar(&cfg.NATSListen, "nats-listen", "127.0.0.1:4281", "where the embedded NATS listens")
	f.StringVar(&cfg.NATSAdvertise, "nats-advertise", "", "NATS URL handed to agents (default: the server's own)")
	f.StringVar(&cfg.LeafListen, "leaf-listen", "", "where the embedded NATS takes agents' leaf nodes (host:port, e.g. 10.0.0.1:4283): each agent keeps local mirrors of what it serves, for a cut from the control plane (docs/servers.md)")
	f.StringVar(&cfg.LeafAdvertise, "leaf-advertise", "", "leaf node URLs handed to agents, comma-separated (default: nats-leaf:// of --leaf-listen)")
	f.StringVar(&anycastV4, "anycast-v4", "", "IPv4 range apps' anycast addresses come from (its first usable address is the shared one; docs/anycast.md)")
	f.StringVar(&anycastV6, "anycast-v6", "", "IPv6 range apps' dedicated anycast addresses come from")
	f.StringVar(&machineNet, "machine-net", "172.30.0.0/16", "range that host machine subnets (/24 each) come from")
	f.DurationVar(&cfg.HostTimeout, "host-timeout", 0, "how long a silent host stays up (default 10s)")
	f.Int64Var(&cfg.LogBytesPerApp, "log-bytes-per-app", store.LogBytesPerApp, "size of each app's log stream in bytes: an app's oldest lines go beyond it, never another app's")
	f.DurationVar(&cfg.Registry.UploadTimeout, "registry-upload-timeout", registry.DefaultUploadTimeout, "how long a registry blob upload may sit idle before it is removed")
	f.Int64Var(&cfg.Registry.MaxBlobBytes, "registry-max-blob-bytes", registry.DefaultMaxBlobBytes, "largest blob (image layer) the registry accepts, in bytes; larger uploads get 413 (-1: no cap)")
	f.BoolVar(&cfg.RotateSecretsKey, "rotate-secrets-key", false, "replace the secrets master key in --data-dir at start: every app's data key is re-wrapped with a new one (docs/secrets.md)")
	f.StringVar(&cluster.Name, "cluster-name", "", "join a cluster of control planes by this name (the same on every server; docs/servers.md)")
	f.StringVar(&cluster.Listen, "cluster-listen", "", "where this server's NATS takes its peers' routes (host:port, e.g. 10.0.0.1:4282)")
	f.StringVar(&peers, "cluster-peers", "", "every server's --cluster-listen address, comma-separated (A,B,C)")
	f.StringVar(&cluster.ServerName, "server-name", "", "this server's name in its cluster, unique (default: from --cluster-listen)")
	acme.register(f)
	cmd.AddCommand(initClusterCmd(), cli.NewServerStatusCmd(), cli.NewServerRemoveCmd(), backupCmd(), restoreCmd())
	f.StringVar(&pricesFile, "prices", "", "TOML price table for usage and budgets (default: Fly.io's published prices; see docs/budgets.md)")
	f.DurationVar(&cfg.MeterInterval, "meter-interval", 0, "how often budgets are checked (default 10s)")
	f.BoolVar(&cfg.Certs.DevCA, "dev-ca", false, "give every app a certificate for <app>.<dev-domain> from a built-in CA (for test setups; clients must trust it)")
	f.StringVar(&cfg.Certs.DevDomain, "dev-domain", "perch.local", "domain of the dev CA's certificates (the agents' --edge-domain)")
	return cmd
}

// clusterConfig checks the cluster flags: all or none.
func clusterConfig(c *store.Cluster, peers, externalNATS string) error {
	for p := range strings.SplitSeq(peers, ",") {
		if p = strings.TrimSpace(p); p != "" {
			c.Peers = append(c.Peers, p)
		}
	}
	switch {
	case c.Name == "" && (c.Listen != "" || len(c.Peers) > 0 || c.ServerName != ""):
		return fmt.Errorf("--cluster-listen, --cluster-peers and --server-name need --cluster-name: give every server of the cluster the same --cluster-name")
	case c.Name == "":
		return nil
	case externalNATS != "":
		return fmt.Errorf("--cluster-name clusters the embedded NATS; with --nats %s, cluster that NATS instead and drop --cluster-name", externalNATS)
	case c.Listen == "":
		return fmt.Errorf("--cluster-name needs --cluster-listen (host:port this server's peers connect to, e.g. 10.0.0.1:4282)")
	case len(c.Peers) == 0:
		return fmt.Errorf("--cluster-name needs --cluster-peers: every server's --cluster-listen, comma-separated")
	}
	return nil
}

func initClusterCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "init-cluster",
		Short: "Make the secrets a cluster's servers share; copy them into every server's --data-dir before starting it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := server.InitClusterSecrets(dir)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster secrets in %s: %s\ncopy these files into every server's --data-dir (mode 0600) before its first start\n", dir, strings.Join(names, " "))
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data-dir", "/var/lib/perch/server", "where to write them (the first server's data dir)")
	return cmd
}

// backupFlags are where backup and restore find the server: run on the
// server, with its --data-dir and --nats-listen.
type backupFlags struct{ dataDir, natsListen string }

func (b *backupFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&b.dataDir, "data-dir", "/var/lib/perch/server", "the server's --data-dir (its NATS password and keys are there)")
	cmd.Flags().StringVar(&b.natsListen, "nats-listen", "127.0.0.1:4281", "the server's --nats-listen (its embedded NATS)")
}

func (b *backupFlags) natsURL() string { return "nats://" + b.natsListen }

func backupCmd() *cobra.Command {
	var b backupFlags
	cmd := &cobra.Command{
		Use:   "backup DIR",
		Short: "Back up the control plane's state from a running server into a new directory: a JetStream snapshot of every bucket, stream and object store, and the keys the state needs (docs/operations.md)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := server.Backup(cmd.Context(), server.BackupOptions{DataDir: b.dataDir, NATSURL: b.natsURL(), Dir: args[0], Log: newLogger()})
			if err != nil {
				return err
			}
			var msgs uint64
			for _, s := range m.Streams {
				msgs += s.Messages
			}
			fmt.Fprintf(cmd.OutOrStdout(), "backup of %s in %s: %d streams, %d messages, keys %s\n", m.Server, args[0], len(m.Streams), msgs, strings.Join(m.Keys, " "))
			return nil
		},
	}
	b.register(cmd)
	return cmd
}

func restoreCmd() *cobra.Command {
	var b backupFlags
	var force bool
	cmd := &cobra.Command{
		Use:   "restore DIR",
		Short: "Restore a backup into a running new server (or cluster) with no apps, machines or hosts; restart the servers after (docs/operations.md)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := server.Restore(cmd.Context(), server.RestoreOptions{DataDir: b.dataDir, NATSURL: b.natsURL(), Dir: args[0], Force: force, Log: newLogger()})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %d streams of the backup of %s (%s); its keys (%s) are in %s.\nNow copy those key files into every other server's --data-dir (a cluster), and restart every server.\n",
				len(m.Streams), m.Server, m.Created.Format("2006-01-02T15:04:05Z"), strings.Join(m.Keys, " "), b.dataDir)
			return nil
		},
	}
	b.register(cmd)
	cmd.Flags().BoolVar(&force, "force", false, "replace the server's state even if it holds apps, machines or hosts")
	return cmd
}
