package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/perchhq/perch/internal/devcluster"
	"github.com/spf13/cobra"
)

func defaultDevDir() string {
	if d := os.Getenv("PERCH_DEV_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "perch", "dev")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "state", "perch", "dev")
}

func devCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "dev", Short: "Run the whole platform on this machine, one host per region"}
	cmd.AddCommand(devUpCmd(), devDownCmd(), devStatusCmd(), devExecCmd())
	return cmd
}

func devUpCmd() *cobra.Command {
	var opts devcluster.Options
	var regions, edgeBase, anycastClients string
	var acme acmeFlags
	var latency bool
	var inflation float64
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a control plane and one host per region; Ctrl-C stops everything",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			opts.Regions = strings.Split(regions, ",")
			if anycastClients != "" {
				if !opts.Anycast {
					return fmt.Errorf("--anycast-clients needs --anycast: the clients are the anycast lab's")
				}
				opts.AnycastClients = strings.Split(anycastClients, ",")
			}
			a, err := netip.ParseAddr(edgeBase)
			if err != nil || !a.IsLoopback() {
				return fmt.Errorf("--edge-base %q must be a loopback address such as 127.0.1.1", edgeBase)
			}
			opts.EdgeBase = a
			if opts.Anycast && cmd.Flags().Changed("edge-base") {
				return fmt.Errorf("--edge-base does not apply with --anycast: each region's edge is its host's address on the lab's management network")
			}
			switch {
			case !latency:
				opts.Latency = 0
			case inflation < 1:
				return fmt.Errorf("--route-inflation %g is below 1: no route is shorter than the great circle; use 1.5 (typical) or --latency=false", inflation)
			default:
				opts.Latency = inflation
			}
			opts.Log = newLogger()
			if opts.Certs.ACME, err = acme.config(); err != nil {
				return err
			}
			if err := devcluster.CheckServers(opts); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "starting a dev world with %s in %s\n", regions, opts.Dir)
			if opts.Latency > 0 {
				fmt.Fprintf(out, "simulated latency on: mesh packets take the fiber time between cities x %g (--latency=false turns it off)\n", opts.Latency)
				if opts.Anycast {
					fmt.Fprintln(out, "and so do frames between the anycast lab's routers")
				}
			}
			w, err := devcluster.Start(ctx, opts)
			if err != nil {
				return err
			}
			i := w.Info()
			if len(i.Servers) > 1 {
				for _, s := range i.Servers {
					fmt.Fprintf(out, "server %-6s  %s   pid %d   log %s\n", s.Name, s.APIURL, s.PID, filepath.Join(opts.Dir, "logs", "server-"+s.Name+".log"))
				}
				fmt.Fprintf(out, "control plane  %d servers clustered; the CLI and agents fail over between them   (registry %s: push images there)\n", len(i.Servers), i.Registry)
			} else {
				fmt.Fprintf(out, "control plane  %s   (registry %s)\n", i.APIURL, i.Registry)
			}
			fmt.Fprintf(out, "dashboard      %s   (log in with world.json's token)\n", i.UIURL)
			for _, r := range i.Regions {
				fmt.Fprintf(out, "region %-6s  edge %s   host %s\n", r.Code, r.EdgeAddr, r.HostID)
			}
			fmt.Fprintf(out, "dev CA         %s   (trust it for https://APP.perch.local, e.g. curl --cacert %s)\n", i.CACert, i.CACert)
			if a := i.Anycast; a != nil {
				fmt.Fprintf(out, "anycast        pools %s and %s, announced over BGP to each city's bird2 router (world %s)\n", a.PoolV4, a.PoolV6, a.ID)
				for _, c := range a.Cities {
					region := ""
					if c.HostNS == "" {
						region = "   (no region: a client only)"
					}
					fmt.Fprintf(out, "city %-8s client %s, %s   router AS%d%s\n", c.Name, c.Client, c.Client6, c.RouterASN, region)
				}
				for _, l := range a.Links {
					fmt.Fprintf(out, "link %s-%s   %s one way\n", l.A, l.B, l.Delay)
				}
				fmt.Fprintf(out, "a city's client: perch dev exec --from %s -- curl -H 'Host: APP.perch.local' http://ADDRESS/   (perch ips allocate-v4 gives an app its address)\n", a.Cities[0].Name)
			}
			fmt.Fprintf(out, "world.json     %s\nnext: perch auth login; perch launch --image IMAGE; perch deploy   (Ctrl-C stops the world)\n", devcluster.InfoPath(opts.Dir))
			<-ctx.Done()
			fmt.Fprintln(out, "stopping the dev world ...")
			if err := w.Close(); err != nil {
				return err
			}
			fmt.Fprintln(out, "stopped; no machine, namespace or mount left behind")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&regions, "regions", "iad,ams,sin", "regions to run a host in (comma separated, or all)")
	f.StringVar(&opts.Dir, "dir", defaultDevDir(), "where the world keeps its state and world.json")
	f.IntVar(&opts.Servers, "servers", 1, "control plane servers: 1 (in this process), or 3 or 5 clustered, each a process of its own (docs/servers.md); a dead one is not restarted")
	f.StringVar(&opts.APIListen, "api", "127.0.0.1:4280", "control plane listen address")
	f.StringVar(&edgeBase, "edge-base", "127.0.1.1", "edge address of the first region; the next regions count up")
	f.StringVar(&opts.NATSURL, "nats", "", "use this external NATS instead of the embedded one")
	f.StringVar(&opts.NATSToken, "nats-token", "", "auth token for the external NATS")
	f.BoolVar(&latency, "latency", true, "simulate fiber latency between the regions' cities on the mesh (and with --anycast between the lab's routers)")
	f.Float64Var(&inflation, "route-inflation", 1.5, "how much longer than the great circle the simulated routes are")
	f.StringVar(&anycastClients, "anycast-clients", "", "with --anycast, cities with a router and a client but no region (comma separated): clients far from every region")
	f.BoolVar(&opts.Anycast, "anycast", false, "build the world in an anycast lab: a bird2 router and a client per region's city, agents announcing apps' addresses over BGP (docs/anycast.md)")
	acme.register(f)
	return cmd
}

func devDownCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the dev world and remove its machines",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			if err := devcluster.Down(cmd.Context(), dir, exe, newLogger()); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "dev world stopped")
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", defaultDevDir(), "the world's directory")
	return cmd
}

func devStatusCmd() *cobra.Command {
	var dir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the dev world's addresses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			i, err := devcluster.ReadInfo(dir)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(i)
			}
			if len(i.Servers) > 1 {
				for _, s := range i.Servers {
					state := "running"
					if s.PID <= 0 || syscall.Kill(s.PID, 0) != nil {
						state = "exited (not restarted; the next perch dev up starts it)"
					}
					fmt.Fprintf(cmd.OutOrStdout(), "server %s %s (pid %d) %s\n", s.Name, s.APIURL, s.PID, state)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "perch dev up (pid %d)\n", i.PID)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "control plane %s (pid %d)\n", i.APIURL, i.PID)
			}
			for _, r := range i.Regions {
				fmt.Fprintf(cmd.OutOrStdout(), "%-6s edge %-12s host %s\n", r.Code, r.EdgeAddr, r.HostID)
			}
			if a := i.Anycast; a != nil {
				for _, c := range a.Cities {
					fmt.Fprintf(cmd.OutOrStdout(), "city %-6s client %s, %s (perch dev exec --from %s -- CMD)\n", c.Name, c.Client, c.Client6, c.Name)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", defaultDevDir(), "the world's directory")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print world.json")
	return cmd
}
