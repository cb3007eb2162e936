package cli

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/config"
	"github.com/spf13/cobra"
)

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Check perch.toml (or a fly.toml) without deploying",
	}
	cmd.AddCommand(newConfigValidateCmd(g))
	return cmd
}

// validatedConfig is what perch config validate --json prints.
type validatedConfig struct {
	File          string            `json:"file"`
	App           string            `json:"app,omitempty"`
	PrimaryRegion string            `json:"primary_region,omitempty"`
	Regions       []string          `json:"regions,omitempty"`
	ProcessGroup  string            `json:"process_group"`
	Machine       api.MachineConfig `json:"machine"`
	// Processes is every group's machine when there are several.
	Processes map[string]api.MachineConfig `json:"processes,omitempty"`
	Warnings  []string                     `json:"warnings"`
}

func newConfigValidateCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Parse perch.toml and print the effective config and every warning",
		Long: `Parse perch.toml (or the file --config names, e.g. a fly.toml) as perch
deploy does, without contacting the control plane, and print what each
machine would get: services, ports, checks, concurrency and stop signal
with Fly's defaults filled in, its size, command and environment. Every
key Perch does not act on is listed with what happens instead. Exits
non-zero when the file has an error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			path := g.configPath
			if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("no %s here: point to the file with --config, e.g. perch config validate --config fly.toml", path)
			}
			cfg, warns, err := config.Load(path, config.LoadOptions{})
			out := cmd.OutOrStdout()
			msgs := make([]string, 0, len(warns))
			for _, w := range warns {
				msgs = append(msgs, w.String())
			}
			if err != nil {
				for _, m := range msgs {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", m)
				}
				return err
			}
			v := validatedConfig{
				File: path, App: cmp.Or(g.app, cfg.App), PrimaryRegion: cfg.PrimaryRegion, Regions: cfg.Regions,
				ProcessGroup: cfg.ProcessGroup(), Machine: cfg.MachineConfig(""), Warnings: msgs,
			}
			if len(cfg.ProcessGroups()) > 1 {
				v.Processes = cfg.MachineConfigs("")
			}
			if asJSON {
				return printJSON(out, v)
			}
			printValidated(out, cfg, v)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printValidated(w io.Writer, cfg *config.Config, v validatedConfig) {
	fmt.Fprintf(w, "%s is valid", v.File)
	if n := len(v.Warnings); n > 0 {
		fmt.Fprintf(w, ", with %s", plural(n, "warning"))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "\napp:            %s\n", cmp.Or(v.App, "(none: pass --app)"))
	switch {
	case len(v.Regions) > 0:
		fmt.Fprintf(w, "regions:        %s (primary %s)\n", strings.Join(v.Regions, ", "), cmp.Or(v.PrimaryRegion, v.Regions[0]))
	case v.PrimaryRegion != "":
		fmt.Fprintf(w, "regions:        the regions the app already runs in, else %s (primary %s)\n", v.PrimaryRegion, v.PrimaryRegion)
	default:
		fmt.Fprintln(w, "regions:        the regions the app already runs in, else pass perch deploy --region (no primary_region)")
	}
	machines := v.Processes
	if len(machines) == 0 {
		machines = map[string]api.MachineConfig{v.ProcessGroup: v.Machine}
	}
	for i, group := range slices.Sorted(maps.Keys(machines)) {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "process group:  %s\n", group)
		printMachine(w, machines[group])
	}
	for _, st := range cfg.Statics {
		fmt.Fprintf(w, "static:         %s -> %s of the image (served by the edges)\n", st.URLPrefix, st.GuestPath)
	}
	if len(v.Warnings) > 0 {
		fmt.Fprintln(w, "\nwarnings (what Perch does instead):")
		for _, m := range v.Warnings {
			fmt.Fprintf(w, "  %s\n", m)
		}
	}
}

// printMachine describes the machine config of one process group.
func printMachine(w io.Writer, mc api.MachineConfig) {
	fmt.Fprintf(w, "image:          %s\n", cmp.Or(mc.Image, "(none: set [build] image or pass --image to perch deploy)"))
	g := mc.Guest
	fmt.Fprintf(w, "size:           %s, %d CPU, %d MB, runtime %s\n", g.CPUKind, g.CPUs, g.MemoryMB, g.Runtime)
	if len(mc.Init.Entrypoint) > 0 {
		fmt.Fprintf(w, "entrypoint:     %q\n", mc.Init.Entrypoint)
	}
	if len(mc.Init.Cmd) > 0 {
		fmt.Fprintf(w, "command:        %q\n", mc.Init.Cmd)
	}
	if len(mc.Init.Entrypoint)+len(mc.Init.Cmd) == 0 {
		fmt.Fprintln(w, "command:        the image's own")
	}
	stop := api.StopConfig{Signal: api.DefaultStopSignal, Timeout: api.DefaultStopTimeout.String()}
	if sc := mc.StopConfig; sc != nil {
		stop.Signal, stop.Timeout = cmp.Or(sc.Signal, stop.Signal), cmp.Or(sc.Timeout, stop.Timeout)
	}
	fmt.Fprintf(w, "stop:           %s, then SIGKILL after %s\n", stop.Signal, stop.Timeout)
	fmt.Fprintf(w, "restart:        %s\n", cmp.Or(mc.Restart.Policy, api.RestartOnFailure))
	for _, m := range mc.Mounts {
		fmt.Fprintf(w, "volume:         %s at %s (one per machine, made by perch deploy if missing)\n", m.Name, m.Path)
	}
	for _, k := range slices.Sorted(maps.Keys(mc.Env)) {
		fmt.Fprintf(w, "env:            %s=%s\n", k, mc.Env[k])
	}
	if len(mc.Services) == 0 {
		fmt.Fprintln(w, "services:       none (no public ports)")
	}
	for _, s := range mc.Services {
		var ports []string
		for _, p := range s.Ports {
			h := "raw " + s.Protocol
			if len(p.Handlers) > 0 {
				h = strings.Join(p.Handlers, "+")
			}
			ports = append(ports, fmt.Sprintf("%d (%s)", p.Port, h))
		}
		if len(ports) == 0 {
			ports = []string{"no public port"}
		}
		fmt.Fprintf(w, "service:        %s %s -> internal port %d\n", s.Protocol, strings.Join(ports, ", "), s.InternalPort)
		if c := s.Concurrency; c != nil {
			hard := "no hard limit"
			if c.HardLimit > 0 {
				hard = fmt.Sprintf("hard limit %d", c.HardLimit)
			}
			fmt.Fprintf(w, "  concurrency:  %s, soft limit %d, %s\n", c.Type, c.SoftLimit, hard)
		}
		if s.Autostop.On() || s.AutostartOn() {
			fmt.Fprintf(w, "  scale to zero: %s\n", scaleToZero(s))
		}
		for _, k := range s.Checks {
			desc := fmt.Sprintf("%s every %s, timeout %s, grace %s", k.Type, cmp.Or(k.Interval, "15s"), cmp.Or(k.Timeout, "2s"), cmp.Or(k.GracePeriod, "1s"))
			if k.Type == "http" {
				desc += fmt.Sprintf(", %s %s", cmp.Or(k.Method, "GET"), cmp.Or(k.Path, "/"))
			}
			fmt.Fprintf(w, "  check:        %s\n", desc)
		}
	}
}

// scaleToZero describes a service's autostop and autostart (docs/autostop.md).
func scaleToZero(s api.Service) string {
	least := 0
	if s.MinMachinesRunning != nil {
		least = *s.MinMachinesRunning
	}
	stop := "no autostop"
	if s.Autostop.On() {
		stop = fmt.Sprintf("%s after %s idle, at least %d running per region", s.Autostop, cmp.Or(s.IdleTimeout, api.DefaultIdleTimeout.String()), least)
	}
	start := "autostart off"
	if s.AutostartOn() {
		start = "autostart on"
	}
	return stop + "; " + start
}
