package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newCertsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Manage the TLS certificates of an app's hostnames",
		Long: "Every app has a certificate for its own name; in a dev world it comes from the\n" +
			"world's dev CA. Custom hostnames get theirs from the control plane's ACME CA\n" +
			"(Let's Encrypt or another), once, and every region's edge serves it.",
	}
	cmd.AddCommand(newCertsAddCmd(g), newCertsListCmd(g), newCertsShowCmd(g), newCertsRemoveCmd(g))
	return cmd
}

func newCertsAddCmd(g *globals) *cobra.Command {
	var detach, asJSON bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "add HOSTNAME",
		Short: "Get a certificate for a hostname and route it to the app",
		Long: "Asks the ACME CA for a certificate for HOSTNAME and routes HOSTNAME to the app.\n" +
			"The CA checks that HOSTNAME reaches Perch's edges, so point its DNS records at\n" +
			"them first, and serve port 80 (handler http) or 443 (handler tls).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			cert, err := c.AddCertificate(ctx, app, args[0])
			if err != nil {
				return fmt.Errorf("certs add: %w", err)
			}
			if !detach && cert.Status == "pending" {
				fmt.Fprintf(cmd.ErrOrStderr(), "Asking the CA for a certificate for %s ...\n", cert.Hostname)
				if cert, err = waitCert(ctx, c, app, cert.Hostname, wait); err != nil {
					return err
				}
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return printJSON(w, cert)
			}
			switch cert.Status {
			case "issued":
				fmt.Fprintf(w, "Certificate for %s issued by %s, valid until %s.\nEvery region's edge serves it; %s routes to app %s.\n",
					cert.Hostname, cert.Issuer, cert.NotAfter.Format(time.DateOnly), cert.Hostname, app)
			case "failed":
				return fmt.Errorf("no certificate for %s: %s", cert.Hostname, cert.Error)
			default:
				fmt.Fprintf(w, "Certificate for %s is %s; see where it stands with `perch certs show %s`.\n", cert.Hostname, cert.Status, cert.Hostname)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&detach, "detach", false, "return at once instead of waiting for the certificate")
	f.DurationVar(&wait, "wait", 3*time.Minute, "how long to wait for the certificate")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// waitCert polls the certificate until it is no longer pending.
func waitCert(ctx context.Context, c *api.Client, app, host string, wait time.Duration) (*api.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the certificate for %s is still pending after %s; see where it stands with `perch certs show %s`", host, wait, host)
		case <-t.C:
		}
		cert, err := c.GetCertificate(ctx, app, host)
		if err != nil {
			if ctx.Err() != nil {
				continue // report the timeout, not the cancelled request
			}
			return nil, fmt.Errorf("certs add: %w", err)
		}
		if cert.Status != "pending" {
			return cert, nil
		}
	}
}

func newCertsListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the app's certificates",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			certs, err := c.ListCertificates(cmd.Context(), app)
			if err != nil {
				return fmt.Errorf("certs list: %w", err)
			}
			if certs == nil {
				certs = []api.Certificate{}
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return printJSON(w, certs)
			}
			if len(certs) == 0 {
				fmt.Fprintf(w, "App %s has no certificates. Add one with `perch certs add HOSTNAME`.\n", app)
				return nil
			}
			t := &table{header: []string{"HOSTNAME", "SOURCE", "STATUS", "ISSUER", "EXPIRES"}}
			for _, ce := range certs {
				issuer, expires := dash(ce.Issuer), "-"
				if !ce.NotAfter.IsZero() {
					expires = ce.NotAfter.Format(time.DateOnly)
				}
				var notes []string
				if ce.Error != "" {
					notes = append(notes, ce.Error)
				}
				t.add([]string{ce.Hostname, ce.Source, ce.Status, issuer, expires}, notes...)
			}
			t.write(w)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newCertsShowCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show HOSTNAME",
		Short: "Show one certificate: status, issuer, validity, and why it failed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			cert, err := c.GetCertificate(cmd.Context(), app, args[0])
			if err != nil {
				return fmt.Errorf("certs show: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), cert)
			}
			printCert(cmd.OutOrStdout(), cert)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printCert(w io.Writer, c *api.Certificate) {
	row := func(k, v string) { fmt.Fprintf(w, "%-12s %s\n", k+":", v) }
	row("Hostname", c.Hostname)
	row("App", c.App)
	row("Source", c.Source)
	row("Status", c.Status)
	if c.Issuer != "" {
		row("Issuer", c.Issuer)
	}
	if !c.NotAfter.IsZero() {
		row("Valid from", c.NotBefore.Format(time.RFC3339))
		row("Valid until", fmt.Sprintf("%s (in %s)", c.NotAfter.Format(time.RFC3339), formatAge(time.Until(c.NotAfter))))
	}
	if c.Error != "" {
		row("Error", c.Error)
	}
	row("Added", c.CreatedAt.Format(time.RFC3339))
}

func newCertsRemoveCmd(g *globals) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "remove HOSTNAME",
		Short: "Delete a hostname's certificate and stop routing the hostname to the app",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := g.appName()
			if err != nil {
				return err
			}
			host := args[0]
			if !yes {
				prompt := fmt.Sprintf("This deletes the certificate of %s and stops routing %s to app %s.", host, host, app)
				if err := confirm(cmd, prompt, host); err != nil {
					return err
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.RemoveCertificate(cmd.Context(), app, host); err != nil {
				return fmt.Errorf("certs remove: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Removed the certificate of %s; it no longer routes to %s.\n", host, app)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
