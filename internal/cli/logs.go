package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newLogsCmd(g *globals) *cobra.Command {
	var opts api.LogOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "logs",
		Short: "Show the app's log lines; -f follows new ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			w := cmd.OutOrStdout()
			enc := json.NewEncoder(w)
			err = c.Logs(ctx, app, opts, func(l api.LogLine) error {
				if asJSON {
					return enc.Encode(l)
				}
				_, err := fmt.Fprintln(w, formatLogLine(l))
				return err
			})
			if err != nil {
				return fmt.Errorf("logs: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&opts.Follow, "follow", "f", false, "keep printing new lines until interrupted")
	cmd.Flags().StringVarP(&opts.Region, "region", "r", "", "only this region's machines")
	cmd.Flags().StringVar(&opts.Machine, "machine", "", "only this machine")
	cmd.Flags().IntVarP(&opts.Lines, "lines", "n", 100, "how many past lines to show")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return cmd
}

// formatLogLine is "2026-11-26T10:00:00Z app[machine] iad [info] message".
// Both stdout and stderr are [info]: programs log to stderr routinely.
func formatLogLine(l api.LogLine) string {
	level := "info"
	if l.Stream != "" && l.Stream != "stdout" && l.Stream != "stderr" {
		level = l.Stream
	}
	return fmt.Sprintf("%s %s[%s] %s [%s] %s",
		l.Timestamp.UTC().Format(time.RFC3339), l.App, l.MachineID, l.Region, level, l.Message)
}
