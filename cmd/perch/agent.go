package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/agent"
	"github.com/perchhq/perch/internal/anycast"
	"github.com/perchhq/perch/internal/edge"
	"github.com/perchhq/perch/internal/fdstore"
	"github.com/perchhq/perch/internal/image"
	"github.com/perchhq/perch/internal/meshhost"
	"github.com/perchhq/perch/internal/runtime/microvm"
	"github.com/perchhq/perch/internal/store"
	"github.com/spf13/cobra"
)

func agentCmd() *cobra.Command {
	var cfg agent.Config
	var edgeAddr, http1 string
	var imageCacheGB, imageMaxGB float64
	var bgpASN string
	var bgpPeers []string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a host: machines of its region and the edge proxy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			store.QuietNATSSampler() // the agent runs no NATS server
			// First: the listening sockets a supervisor kept across this
			// agent's last exit (systemd's FileDescriptorStoreMax=, perch
			// dev), made close-on-exec before anything is started.
			cfg.Log = newLogger()
			cfg.Sockets = fdstore.FromEnv(cfg.Log.With("component", "fdstore"))
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			a, err := netip.ParseAddr(edgeAddr)
			if err != nil {
				return fmt.Errorf("--edge-addr %q is not an IP address", edgeAddr)
			}
			cfg.EdgeAddr = a
			if cfg.EdgeHTTP1, err = edge.ParseHTTP1Mode(http1); err != nil {
				return fmt.Errorf("--http1: %w", err)
			}
			if imageCacheGB < 0 {
				return fmt.Errorf("--image-cache-max %g: want a size in GB, or 0 for no limit", imageCacheGB)
			}
			cfg.ImageCacheMax = int64(imageCacheGB * 1e9)
			if imageMaxGB <= 0 || cfg.ImageLimits.MaxEntries <= 0 || cfg.ImageLimits.MaxDepth <= 0 {
				return fmt.Errorf("--image-max-gb, --image-max-entries and --image-max-depth must be above 0 (got %g, %d, %d)", imageMaxGB, cfg.ImageLimits.MaxEntries, cfg.ImageLimits.MaxDepth)
			}
			cfg.ImageLimits.MaxBytes = int64(imageMaxGB * (1 << 30))
			if cfg.JoinToken == "" {
				cfg.JoinToken = os.Getenv("PERCH_JOIN_TOKEN")
			}
			if cfg.Token == "" {
				cfg.Token = os.Getenv("PERCH_API_TOKEN")
			}
			// The shims and machines this agent starts inherit its
			// environment: no token goes on to them.
			os.Unsetenv("PERCH_JOIN_TOKEN")
			os.Unsetenv("PERCH_API_TOKEN")
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find perch executable: %w", err)
			}
			cfg.ShimCommand = []string{exe, "runc-shim"}
			cfg.MicroVM.ShimCommand = []string{exe, "microvm-shim"}
			cfg.Anycast.ASN, cfg.Anycast.Peers = bgpFlags(cfg.Log, bgpASN, bgpPeers)
			// The access log is JSON whatever the diagnostics look like:
			// it is for machines to read.
			cfg.AccessLog = slog.New(slog.NewJSONHandler(os.Stderr, nil))
			ag, err := agent.New(ctx, cfg)
			if err != nil {
				return err
			}
			return ag.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Region, "region", "", "region of this host (e.g. iad)")
	f.StringVar(&cfg.ServerURL, "server", "http://127.0.0.1:4280", "control plane URL")
	f.StringVar(&cfg.JoinToken, "join-token", "", "join token for the first start (default $PERCH_JOIN_TOKEN; perch hosts join-token create): exchanged for the host credential kept in the state dir")
	f.StringVar(&cfg.Token, "token", "", "deprecated: an operator API token, used only to make this host's join token (default $PERCH_API_TOKEN)")
	_ = f.MarkDeprecated("token", "use --join-token (perch hosts join-token create)")
	f.StringVar(&cfg.StateDir, "state-dir", "/var/lib/perch/agent", "where machines, images and the host id live")
	f.StringVar(&cfg.Address, "address", "", "address other hosts reach this one at (default the edge address)")
	f.StringVar(&edgeAddr, "edge-addr", "127.0.0.1", "address the edge proxy listens on")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "address:port to serve Prometheus metrics on at /metrics (e.g. 127.0.0.1:9091; default: not served)")
	f.StringVar(&http1, "http1", "", "how the edge serves HTTP/1.1 clients: fast (its own fast path; requests with bodies, upgrades and HTTP/2 still go to net/http) or std (net/http for all) (default fast)")
	f.StringVar(&cfg.EdgeDomain, "edge-domain", "perch.local", "apps answer at <app>.<domain>")
	f.IntVar(&cfg.CPUs, "cpus", 0, "CPUs to offer (default: all)")
	f.IntVar(&cfg.MemoryMB, "memory-mb", 0, "memory to offer in MB (default: all)")
	f.StringVar(&cfg.RuncPath, "runc", "", "runc binary (default: runc from PATH)")
	f.StringVar(&cfg.MicroVM.KernelDir, "microvm-kernel-dir", microvm.DefaultKernelDir, "guest kernel for microVMs: vmlinuz and its modules/ (see docs/microvm.md)")
	f.StringVar(&cfg.MicroVM.Init, "microvm-init", "", "guest init for microVMs (default: this perch binary)")
	f.StringVar(&cfg.MicroVM.QEMU, "qemu", "", "qemu-system-x86_64 binary (default: from PATH)")
	f.Uint16Var(&cfg.MeshPort, "mesh-port", meshhost.DefaultPort, "UDP port of the host's WireGuard mesh (0 picks one)")
	f.StringVar(&cfg.MeshMode, "mesh-mode", "netstack", "where mesh TCP runs: netstack (in the agent), tun (the kernel's, through a TUN device; root, faster) or auto (tun when possible)")
	f.IntVar(&cfg.MeshMTU, "mesh-mtu", 0, "MTU of the mesh (default 1420, for 1500-byte links); larger only if every link between hosts carries jumbo frames: their MTU less 80, the same on every host")
	f.BoolVar(&cfg.MachineEgress, "machine-egress", false, "let machines reach the internet through NAT on this host (private ranges stay unreachable)")
	f.BoolVar(&cfg.NoLeaf, "no-leaf", false, "connect straight to the control plane's NATS even when it offers leaf nodes: no local mirrors, nothing served after a restart while cut off (docs/servers.md)")
	f.StringVar(&cfg.MeshEndpoint, "mesh-endpoint", "", "UDP host[:port] other hosts send mesh packets to (default --address and --mesh-port; behind NAT, the public address)")
	f.DurationVar(&cfg.MeterInterval, "meter-interval", 0, "how often machines' time is metered and sent (default 10s)")
	f.Float64Var(&cfg.MeshLatency, "simulate-latency", 0, "delay mesh packets by the fiber time between regions times this route inflation (one-machine worlds only; perch dev sets it)")
	_ = f.MarkHidden("simulate-latency")
	f.Float64Var(&imageCacheGB, "image-cache-max", agent.DefaultImageCacheGB, "GB of disk the image store may hold; unused images and layers beyond it are removed, least recently used first (0: no limit)")
	f.Float64Var(&imageMaxGB, "image-max-gb", float64(image.DefaultMaxBytes)/(1<<30), "GiB one image's layers may write when unpacked; a larger image is refused (docs/security.md)")
	f.Int64Var(&cfg.ImageLimits.MaxEntries, "image-max-entries", image.DefaultMaxEntries, "files, directories and links one image's layers may hold; more is refused")
	f.IntVar(&cfg.ImageLimits.MaxDepth, "image-max-depth", image.DefaultMaxDepth, "directories deep a path in an image may go; deeper is refused")
	f.StringVar(&bgpASN, "bgp-asn", "", "AS number this host announces its anycast addresses from (docs/anycast.md; default: no BGP)")
	f.StringArrayVar(&bgpPeers, "bgp-peer", nil, "an upstream BGP router as ADDR,ASN[,password] (repeat for several)")
	f.BoolVar(&cfg.Anycast.BFD, "bgp-bfd", false, "run BFD with every BGP peer (100 ms x 3: a silent peer is dropped in well under the 9 s hold time); the peers must run BFD too")
	f.StringVar(&cfg.Anycast.Device, "anycast-device", anycast.DefaultDevice, "dummy device the host's anycast addresses go on")
	f.DurationVar(&cfg.Anycast.WithdrawWait, "bgp-withdraw-wait", 2*time.Second, "on SIGTERM, how long to keep serving after withdrawing the routes, before draining")
	f.DurationVar(&cfg.Anycast.DrainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, after the withdraw wait, how long at most to wait for the connections on the anycast addresses to finish")
	_ = cmd.MarkFlagRequired("region")
	return cmd
}

// bgpFlags reads --bgp-asn and --bgp-peer. A bad value is logged and
// leaves BGP (or that peer) out: the host still serves its machines.
func bgpFlags(log *slog.Logger, asn string, peers []string) (uint32, []anycast.Peer) {
	if asn == "" {
		if len(peers) > 0 {
			log.Error("--bgp-peer without --bgp-asn: BGP is off on this host; give the AS number to announce from with --bgp-asn")
		}
		return 0, nil
	}
	n, err := strconv.ParseUint(asn, 10, 64)
	if err == nil {
		err = anycast.CheckASN(n)
	} else {
		err = fmt.Errorf("%q is not a number", asn)
	}
	if err != nil {
		log.Error("--bgp-asn: BGP is off on this host: nothing is announced from it", "err", err)
		return 0, nil
	}
	var out []anycast.Peer
	for _, s := range peers {
		p, err := anycast.ParsePeer(s)
		if err != nil {
			log.Error("BGP peer left out", "err", err)
			continue
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		log.Error("--bgp-asn without a usable --bgp-peer: BGP is off on this host; give ADDR,ASN of an upstream router")
		return 0, nil
	}
	return uint32(n), out
}
