// Package cli is the user-facing `perch` command: logging in, launching and
// deploying apps, and looking at their machines and logs. It speaks to the
// control plane only through internal/api's client and reads perch.toml
// through internal/config. cmd/perch builds its root with NewRoot and adds
// the server-side commands (server, agent, dev) to it.
package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

// globals holds the flags every command shares.
type globals struct {
	app        string
	configPath string
}

// NewRoot returns the `perch` command with the user commands. Errors are
// returned from Execute, not printed: main prints them once.
func NewRoot(version string) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "perch",
		Short:         "Run OCI images as machines in many regions, close to their users",
		Version:       version,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.PersistentFlags().StringVarP(&g.app, "app", "a", "", "app name (default: app in perch.toml)")
	root.PersistentFlags().StringVarP(&g.configPath, "config", "c", "perch.toml", "path of the app's perch.toml (default perch.toml, else fly.toml when only that is here)")
	// A directory moved over from Fly has a fly.toml and no perch.toml:
	// commands read it as flyctl would, without --config.
	root.PersistentPreRun = func(cmd *cobra.Command, _ []string) {
		if cmd.Flags().Changed("config") {
			return
		}
		if _, err := os.Stat("perch.toml"); errors.Is(err, fs.ErrNotExist) {
			if _, err := os.Stat("fly.toml"); err == nil {
				g.configPath = "fly.toml"
			}
		}
	}
	root.AddCommand(
		newAuthCmd(g),
		newLaunchCmd(g),
		newDeployCmd(g),
		newReleasesCmd(g),
		newStatusCmd(g),
		newLogsCmd(g),
		newScaleCmd(g),
		newAutoscaleCmd(g),
		newUsageCmd(g),
		newBudgetCmd(g),
		newAppsCmd(g),
		newMachineCmd(g),
		newRegionsCmd(g),
		newHostsCmd(g),
		newCertsCmd(g),
		newIPsCmd(g),
		newSecretsCmd(g),
		newVolumesCmd(g),
		newConfigCmd(g),
		newOrgsCmd(g),
		newTokensCmd(g),
	)
	addLoginHint(root)
	return root
}

// appClient is the app the command is about and a client for the API:
// what most commands start with.
func (g *globals) appClient() (string, *api.Client, error) {
	app, err := g.appName()
	if err != nil {
		return "", nil, err
	}
	c, err := g.client()
	return app, c, err
}

// client builds an API client from the stored login and the environment.
func (g *globals) client() (*api.Client, error) {
	creds, err := currentCredentials()
	if err != nil {
		return nil, err
	}
	return api.NewClient(creds.APIURL, creds.Token), nil
}

// addLoginHint makes every user command tell what to do on a 401, so each
// command need not. `perch auth` says it in its own words.
func addLoginHint(c *cobra.Command) {
	if c.Name() == "auth" {
		return
	}
	for _, sub := range c.Commands() {
		addLoginHint(sub)
	}
	run := c.RunE
	if run == nil {
		return
	}
	c.RunE = func(cmd *cobra.Command, args []string) error {
		err := run(cmd, args)
		if api.IsUnauthorized(err) {
			return fmt.Errorf("%w; log in again with `perch auth login` (or set PERCH_API_TOKEN)", err)
		}
		return err
	}
}
