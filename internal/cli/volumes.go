package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newVolumesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "volumes",
		Aliases: []string{"volume", "vol"},
		Short:   "Manage an app's volumes (persistent disks, one host each)",
		Long: "A volume is an ext4 disk of a fixed size on one host of a region. A machine\n" +
			"that mounts it ([[mounts]] in perch.toml, or config.mounts) runs on that host;\n" +
			"one machine mounts a volume at a time. Its data outlives machines: only\n" +
			"`perch volumes destroy` deletes it. docs/volumes.md.",
	}
	cmd.AddCommand(newVolumesCreateCmd(g), newVolumesListCmd(g), newVolumesShowCmd(g), newVolumesExtendCmd(g),
		newVolumesDestroyCmd(g), newVolumesForkCmd(g), newVolumesSnapshotsCmd(g))
	return cmd
}

func newVolumesCreateCmd(g *globals) *cobra.Command {
	var req api.CreateVolumeRequest
	var retention int
	var scheduled, asJSON bool
	cmd := &cobra.Command{
		Use:   "create NAME --region R [--size GB]",
		Short: "Create a volume (empty, or from a snapshot with --snapshot-id)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			req.Name = args[0]
			if req.Region == "" {
				return fmt.Errorf("volumes create: --region is required: a volume lives on one host of one region")
			}
			if cmd.Flags().Changed("snapshot-retention") {
				req.SnapshotRetention = &retention
			}
			req.AutoBackupEnabled = &scheduled
			v, err := c.CreateVolume(cmd.Context(), app, req)
			if err != nil {
				return fmt.Errorf("volumes create: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			renderVolume(cmd.OutOrStdout(), *v)
			return nil
		},
	}
	cmd.Flags().StringVarP(&req.Region, "region", "r", "", "region of the volume")
	cmd.Flags().IntVarP(&req.SizeGB, "size", "s", 0, "size in GB (default 1, or the snapshot's size)")
	cmd.Flags().StringVar(&req.SnapshotID, "snapshot-id", "", "restore this snapshot into the new volume")
	cmd.Flags().IntVar(&retention, "snapshot-retention", api.DefaultSnapshotDays, "days snapshots are kept")
	cmd.Flags().BoolVar(&scheduled, "scheduled-snapshots", true, "take a snapshot every day")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newVolumesForkCmd(g *globals) *cobra.Command {
	var name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "fork VOLUME_ID",
		Short: "Create a volume holding a copy of another's data (same host)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			src, err := c.GetVolume(cmd.Context(), app, args[0])
			if err != nil {
				return fmt.Errorf("volumes fork: %w", err)
			}
			v, err := c.CreateVolume(cmd.Context(), app, api.CreateVolumeRequest{
				Name: cmp.Or(name, src.Name), Region: src.Region, SourceVolumeID: src.ID,
			})
			if err != nil {
				return fmt.Errorf("volumes fork: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			renderVolume(cmd.OutOrStdout(), *v)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the new volume (default: the source's)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newVolumesListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the app's volumes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			vs, err := c.ListVolumes(cmd.Context(), app)
			if err != nil {
				return fmt.Errorf("volumes list: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), vs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tNAME\tSIZE\tREGION\tHOST\tATTACHED MACHINE\tCREATED")
			for _, v := range vs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%dGB\t%s\t%s\t%s\t%s\n", v.ID, v.State, v.Name, v.SizeGB, v.Region, v.Zone,
					attachedTo(v), v.CreatedAt.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func attachedTo(v api.Volume) string {
	if v.AttachedMachineID == nil {
		return "-"
	}
	return *v.AttachedMachineID
}

func renderVolume(w io.Writer, v api.Volume) {
	fmt.Fprintf(w, "ID:                 %s\n", v.ID)
	fmt.Fprintf(w, "Name:               %s\n", v.Name)
	fmt.Fprintf(w, "State:              %s\n", v.State)
	fmt.Fprintf(w, "Size:               %d GB\n", v.SizeGB)
	fmt.Fprintf(w, "Region:             %s\n", v.Region)
	fmt.Fprintf(w, "Host:               %s (%s)\n", v.Zone, v.HostStatus)
	fmt.Fprintf(w, "Attached machine:   %s\n", attachedTo(v))
	fmt.Fprintf(w, "Snapshots:          daily %v, kept %d days\n", v.AutoBackupEnabled, v.SnapshotRetention)
	fmt.Fprintf(w, "Created:            %s\n", v.CreatedAt.Local().Format(time.DateTime))
}

func newVolumesShowCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show VOLUME_ID",
		Short: "Show one volume",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			v, err := c.GetVolume(cmd.Context(), app, args[0])
			if err != nil {
				return fmt.Errorf("volumes show: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			renderVolume(cmd.OutOrStdout(), *v)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newVolumesExtendCmd(g *globals) *cobra.Command {
	var size int
	cmd := &cobra.Command{
		Use:   "extend VOLUME_ID --size GB",
		Short: "Grow a volume (volumes never shrink)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			if size <= 0 {
				return fmt.Errorf("volumes extend: --size GB is required, larger than the volume's size")
			}
			rep, err := c.ExtendVolume(cmd.Context(), app, args[0], size)
			if err != nil {
				return fmt.Errorf("volumes extend: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Volume %s is now %d GB\n", rep.Volume.ID, rep.Volume.SizeGB)
			if rep.NeedsRestart {
				fmt.Fprintf(cmd.OutOrStdout(), "Restart machine %s to see the new size: perch machine restart %s\n", attachedTo(rep.Volume), attachedTo(rep.Volume))
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&size, "size", "s", 0, "new size in GB")
	return cmd
}

func newVolumesDestroyCmd(g *globals) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "destroy VOLUME_ID",
		Short: "Destroy a volume and its data (its snapshots stay until they expire)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			if !yes {
				return fmt.Errorf("volumes destroy: this deletes the volume's data for good; run again with --yes to do it")
			}
			if _, err := c.DestroyVolume(cmd.Context(), app, args[0]); err != nil {
				return fmt.Errorf("volumes destroy: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Destroyed volume %s\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "destroy without asking")
	return cmd
}

func newVolumesSnapshotsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshots",
		Short: "Take and list a volume's snapshots (restore with volumes create --snapshot-id)",
	}
	var asJSON bool
	list := &cobra.Command{
		Use:   "list VOLUME_ID",
		Short: "List a volume's snapshots",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			ss, err := c.ListVolumeSnapshots(cmd.Context(), app, args[0])
			if err != nil {
				return fmt.Errorf("volumes snapshots list: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), ss)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATUS\tSIZE\tVOLUME SIZE\tKEPT\tTAKEN\tCREATED")
			for _, s := range ss {
				how := "on demand"
				if s.Scheduled {
					how = "daily"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%dd\t%s\t%s\n", s.ID, s.Status, bytesText(s.Size), bytesText(s.VolumeSize), s.RetentionDays, how, s.CreatedAt.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	create := &cobra.Command{
		Use:   "create VOLUME_ID",
		Short: "Take a snapshot of a volume now (consistent: its filesystem is frozen for the copy)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			s, err := c.CreateVolumeSnapshot(cmd.Context(), app, args[0])
			if err != nil {
				return fmt.Errorf("volumes snapshots create: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Snapshot %s of volume %s taken (%s on disk); restore it with perch volumes create NAME --region R --snapshot-id %s\n", s.ID, args[0], bytesText(s.Size), s.ID)
			return nil
		},
	}
	cmd.AddCommand(list, create)
	return cmd
}

func bytesText(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1fGB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1fMB", float64(b)/(1<<20))
	}
	return fmt.Sprintf("%dKB", (b+1023)/1024)
}

// mountsVolumes says whether the release's machines, of any process
// group, mount a volume.
func (r *rollout) mountsVolumes() bool {
	if len(r.mc.Mounts) > 0 {
		return true
	}
	for _, mc := range r.mcs {
		if len(mc.Mounts) > 0 {
			return true
		}
	}
	return false
}

// inPlace deploys machines that mount a volume the way Fly does: each
// existing machine is updated in place, on its own volume, one machine
// at a time (its host drains and stops the old process before the new
// one starts on the same volume: a volume is mounted by one machine at a
// time); a region with no machine gets one on a free volume of the
// mount's name, made if there is none. Each updated machine must become
// ready and pass the smoke window; undo puts the previous config back.
// A process group that mounts nothing ([[mounts]] processes names other
// groups) rolls by the deploy's strategy.
func (r *rollout) inPlace(ctx context.Context, gs []regionOld) error {
	for _, g := range gs {
		if mc := r.configFor(g.Group); len(mc.Mounts) > 0 {
			m0 := mc.Mounts[0]
			fmt.Fprintf(r.d.out, "machines mount volume %q at %s: replacing them in place, one at a time\n", m0.Name, m0.Path)
			break
		}
	}
	for _, g := range gs {
		base := r.configFor(g.Group)
		if len(base.Mounts) == 0 {
			if err := r.byStrategy(ctx, []regionOld{g}); err != nil {
				return err
			}
			continue
		}
		if len(g.Old) == 0 {
			mc, err := r.withVolume(ctx, g.Region, base, nil)
			if err != nil {
				return err
			}
			m, err := r.d.c.CreateMachine(ctx, r.d.app, api.CreateMachineRequest{Region: g.Region, Config: mc})
			if err != nil {
				return fmt.Errorf("creating a machine in %s: %w", g.Region, err)
			}
			r.mu.Lock()
			r.created = append(r.created, *m)
			r.mu.Unlock()
			fmt.Fprintf(r.d.out, "%s: machine %s created on volume %s\n", g.label(), m.ID, mc.Mounts[0].Volume)
			if err := r.await(ctx, []api.Machine{*m}, r.d.opts.Smoke); err != nil {
				return err
			}
			fmt.Fprintf(r.d.out, "%s: %s\n", g.label(), summary(0, 1))
			continue
		}
		for _, old := range g.Old {
			mc, err := r.withVolume(ctx, g.Region, base, &old)
			if err != nil {
				return err
			}
			r.mu.Lock()
			r.updated = append(r.updated, old)
			r.mu.Unlock()
			m, err := r.d.c.UpdateMachine(ctx, r.d.app, old.ID, api.CreateMachineRequest{Config: mc})
			if err != nil {
				return fmt.Errorf("updating machine %s in place: %w", old.ID, err)
			}
			fmt.Fprintf(r.d.out, "%s: machine %s updating in place on volume %s (old process drained and stopped first)\n", g.label(), m.ID, mc.Mounts[0].Volume)
			// Until its host answers the new version, the machine shows
			// the old one's state.
			_ = r.d.c.WaitMachine(ctx, r.d.app, m.ID, api.StateStarted, r.d.opts.WaitTimeout)
			if err := r.await(ctx, []api.Machine{*m}, r.d.opts.Smoke); err != nil {
				return err
			}
		}
		fmt.Fprintf(r.d.out, "%s: %s\n", g.label(), summary(len(g.Old), len(g.Old)))
	}
	return nil
}

// withVolume is the release's config for a machine of region: mounting
// the volume old mounts (a machine keeps its volume), else a free volume
// of the mount's name there, else a new one of the mount's initial size.
func (r *rollout) withVolume(ctx context.Context, region string, base api.MachineConfig, old *api.Machine) (api.MachineConfig, error) {
	mc := base
	if len(mc.Mounts) == 0 {
		return mc, nil // a process group without a mount
	}
	mc.Mounts = append([]api.Mount(nil), base.Mounts...)
	m := &mc.Mounts[0]
	if old != nil {
		for _, om := range old.Config.Mounts {
			if om.Volume != "" {
				m.Volume = om.Volume
				return mc, nil
			}
		}
	}
	if m.Volume != "" {
		return mc, nil // named by id (a rollback of a resolved config)
	}
	vs, err := r.d.c.ListVolumes(ctx, r.d.app)
	if err != nil {
		return mc, fmt.Errorf("listing volumes: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.claimed == nil {
		r.claimed = map[string]bool{}
	}
	for _, v := range vs {
		if v.Name == m.Name && v.Region == region && v.AttachedMachineID == nil && v.State == api.VolumeCreated && !r.claimed[v.ID] {
			r.claimed[v.ID] = true
			m.Volume = v.ID
			return mc, nil
		}
	}
	req := api.CreateVolumeRequest{Name: m.Name, Region: region, SizeGB: max(m.SizeGB, 1)}
	if cm, ok := r.d.mounts[m.Name]; ok {
		if cm.SnapshotRetention > 0 {
			req.SnapshotRetention = &cm.SnapshotRetention
		}
		req.AutoBackupEnabled = cm.ScheduledSnapshots
	}
	v, err := r.d.c.CreateVolume(ctx, r.d.app, req)
	if err != nil {
		return mc, fmt.Errorf("creating volume %s in %s: %w", m.Name, region, err)
	}
	fmt.Fprintf(r.d.out, "%s: volume %s (%s, %d GB) created on host %s\n", region, v.ID, v.Name, v.SizeGB, v.Zone)
	r.claimed[v.ID] = true
	m.Volume = v.ID
	return mc, nil
}

// undoInPlace puts the previous config back on machines updated in
// place (their host replaces the process again, on the same volume).
func (r *rollout) undoInPlace(ctx context.Context) {
	_ = parallel(r.updated, func(m api.Machine) error {
		req := api.CreateMachineRequest{Config: m.Config, SkipLaunch: m.State != api.StateStarted && m.State != api.StateStarting}
		if _, err := r.d.c.UpdateMachine(ctx, r.d.app, m.ID, req); err != nil {
			fmt.Fprintf(r.d.out, "%s: could not put machine %s back on its previous release: %v\n", m.Region, m.ID, err)
			return nil
		}
		fmt.Fprintf(r.d.out, "%s: machine %s put back on its previous release\n", m.Region, m.ID)
		return nil
	})
}
