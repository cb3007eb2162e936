package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/perchhq/perch/internal/billing"
	"github.com/spf13/cobra"
)

// orgOfApp is --org's value when given without one: the app's own
// organisation.
const orgOfApp = "\x00app"

// budgetTarget resolves --org and --app to a scope and a name.
func budgetTarget(g *globals, cmd *cobra.Command, org string) (string, string, error) {
	if org != "" && org != orgOfApp {
		return "org", org, nil
	}
	app, err := autoscaleApp(g, cmd)
	if err != nil {
		return "", "", err
	}
	if org == "" {
		return "app", app, nil
	}
	c, err := g.client()
	if err != nil {
		return "", "", err
	}
	ctx, stop := interruptible(cmd)
	defer stop()
	a, err := c.GetApp(ctx, app)
	if err != nil {
		return "", "", err
	}
	if a.Org == "" {
		return "", "", fmt.Errorf("app %s belongs to no organisation: name one with --org NAME, or leave --org out for the app's own budget", app)
	}
	return "org", a.Org, nil
}

func addOrgFlag(cmd *cobra.Command, org *string) {
	cmd.Flags().StringVar(org, "org", "", "the organisation's budget (the app's organisation, or --org=NAME)")
	cmd.Flags().Lookup("org").NoOptDefVal = orgOfApp
}

func newBudgetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "budget",
		Short: "A maximum monthly spend: alerts on the way, the app suspended at the limit, resumed next month",
		Long: `A budget caps what an app (or an organisation's apps) may spend in a billing
month (UTC). Alerts go out at 50, 80 and 100 % (as events, a log line and an
optional signed webhook); at 100 % the app's machines are stopped and its
edges answer 503 until the month ends, when the machines come back. Raising
or removing the budget, or perch budget resume, brings them back at once.
See docs/budgets.md.`,
	}
	cmd.AddCommand(newBudgetSetCmd(g), newBudgetShowCmd(g), newBudgetUnsetCmd(g), newBudgetResumeCmd(g))
	return cmd
}

// parseMonthly reads --monthly: a positive number of dollars.
func parseMonthly(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimPrefix(strings.TrimSpace(s), "$"), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("budget set: --monthly must be a number of US dollars, like 50 or 12.5, got %q", s)
	}
	if v <= 0 {
		return 0, fmt.Errorf("budget set: --monthly must be above 0, got %s; to remove a budget run perch budget unset", s)
	}
	return v, nil
}

func newBudgetSetCmd(g *globals) *cobra.Command {
	var monthly, org string
	var req billing.BudgetRequest
	cmd := &cobra.Command{
		Use:   "set",
		Short: "Set the monthly budget",
		Example: `  perch budget set --monthly 50
  perch budget set --monthly 200 --org --webhook https://hooks.example.com/perch --alerts 50,90,100`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("monthly") {
				return errors.New("budget set: --monthly is required: the most the app may spend in a month, in US dollars, e.g. --monthly 50")
			}
			v, err := parseMonthly(monthly)
			if err != nil {
				return err
			}
			req.Monthly = v
			if req.Webhook != "" {
				if err := billing.ValidateWebhook(req.Webhook); err != nil {
					return err
				}
			}
			scope, name, err := budgetTarget(g, cmd, org)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			var b billing.Budget
			if err := c.PutBudget(ctx, scope, name, req, &b); err != nil {
				return fmt.Errorf("budget set: %w", err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "budget of %s %s: $%g a month; alerts at %s %%\n", scope, name, b.Monthly, joinInts(b.Alerts))
			if b.Webhook != "" {
				fmt.Fprintf(out, "webhook %s, signed with HMAC-SHA256 in the %s header; secret: %s\n", b.Webhook, billing.SignatureHeader, b.Secret)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&monthly, "monthly", "", "most to spend in a billing month, in US dollars (required)")
	f.IntSliceVar(&req.Alerts, "alerts", nil, "percentages of the budget that raise an alert (default 50,80,100)")
	f.StringVar(&req.Webhook, "webhook", "", "http(s) URL to POST each alert to, as signed JSON")
	f.IntVar(&req.AnchorDay, "anchor-day", 0, "day of the month (1-28, UTC) the billing period starts (default 1)")
	addOrgFlag(cmd, &org)
	return cmd
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

func newBudgetShowCmd(g *globals) *cobra.Command {
	var org string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the budget, the month's spend and its events",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			scope, name, err := budgetTarget(g, cmd, org)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			var b billing.Budget
			if err := c.GetBudget(ctx, scope, name, &b); err != nil {
				return fmt.Errorf("budget show: %w", err)
			}
			var u billing.Usage
			if err := c.Usage(ctx, scope, name, "", &u); err != nil {
				return fmt.Errorf("budget show: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), map[string]any{"budget": b, "usage": u})
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s %s: $%g a month; spent $%.2f in %s (%.0f %%), projected $%.2f; alerts at %s %%\n",
				scope, name, b.Monthly, u.Cost, u.Month, 100*u.Cost/b.Monthly, u.Projected, joinInts(b.Alerts))
			if b.Webhook != "" {
				fmt.Fprintf(out, "webhook: %s\n", b.Webhook)
			}
			if b.AnchorDay > 1 {
				fmt.Fprintf(out, "billing period from day %d of each month (spend above is the calendar month's)\n", b.AnchorDay)
			}
			if b.Suspended != nil {
				fmt.Fprintln(out, b.Suspended.Message())
			}
			for _, e := range b.Events {
				fmt.Fprintf(out, "  %s  %-16s %s\n", time.UnixMilli(e.Timestamp).UTC().Format("2006-01-02 15:04"), e.Type, e.Message)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addOrgFlag(cmd, &org)
	return cmd
}

func newBudgetUnsetCmd(g *globals) *cobra.Command {
	var org string
	cmd := &cobra.Command{
		Use:   "unset",
		Short: "Remove the budget (a suspended app resumes)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return budgetAction(g, cmd, org, "budget unset", "budget removed", func(c budgetClient, scope, name string) error {
				return c.DeleteBudget(cmd.Context(), scope, name)
			})
		},
	}
	addOrgFlag(cmd, &org)
	return cmd
}

func newBudgetResumeCmd(g *globals) *cobra.Command {
	var org string
	cmd := &cobra.Command{
		Use:   "resume",
		Short: "Resume a suspended app now; it is not suspended again this month",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return budgetAction(g, cmd, org, "budget resume", "resumed", func(c budgetClient, scope, name string) error {
				return c.ResumeBudget(cmd.Context(), scope, name)
			})
		},
	}
	addOrgFlag(cmd, &org)
	return cmd
}

type budgetClient interface {
	DeleteBudget(ctx context.Context, scope, name string) error
	ResumeBudget(ctx context.Context, scope, name string) error
}

func budgetAction(g *globals, cmd *cobra.Command, org, what, done string, fn func(c budgetClient, scope, name string) error) error {
	scope, name, err := budgetTarget(g, cmd, org)
	if err != nil {
		return err
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	if err := fn(c, scope, name); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s %s: %s\n", scope, name, done)
	return nil
}

func newUsageCmd(g *globals) *cobra.Command {
	var org, month string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "What the app (or organisation) used and spent this month: by region, by kind, projected",
		Example: `  perch usage
  perch usage --month 2026-12 --json
  perch usage --org=acme`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if month != "" {
				if _, err := billing.ParseMonth(month); err != nil {
					return fmt.Errorf("usage: --month: %w", err)
				}
			}
			scope, name, err := budgetTarget(g, cmd, org)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			var u billing.Usage
			if err := c.Usage(ctx, scope, name, month, &u); err != nil {
				return fmt.Errorf("usage: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), u)
			}
			printUsage(cmd.OutOrStdout(), scope, name, u)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&month, "month", "", "billing month, YYYY-MM (default: this month)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	addOrgFlag(cmd, &org)
	return cmd
}

func printUsage(w io.Writer, scope, name string, u billing.Usage) {
	fmt.Fprintf(w, "%s %s, %s: $%.4f month to date, $%.2f projected to month end\n", scope, name, u.Month, u.Cost, u.Projected)
	fmt.Fprintf(w, "machines: %.1f h started, %.1f h stopped; %.3f GB out\n", u.StartedSeconds/3600, u.StoppedSeconds/3600, float64(u.BytesOut)/1e9)
	t := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	section := func(title string, m map[string]float64) {
		fmt.Fprintf(t, "%s\tcost\n", title)
		for _, k := range slices.SortedFunc(maps.Keys(m), func(a, b string) int { return cmp.Compare(m[b], m[a]) }) {
			fmt.Fprintf(t, "  %s\t$%.4f\n", k, m[k])
		}
	}
	section("BY KIND", u.ByKind)
	section("BY REGION", u.ByRegion)
	if len(u.Apps) > 1 {
		apps := map[string]float64{}
		for a, au := range u.Apps {
			apps[a] = au.Cost
		}
		section("BY APP", apps)
	}
	t.Flush()
}
