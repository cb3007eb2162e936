package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// printJSON writes v as indented JSON, the output of every --json flag.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// formatAge is a short human age: 45s, 12m, 3h, 2d.
func formatAge(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}

// table lays out rows in aligned columns. Unlike text/tabwriter it lets a
// row carry free lines printed under it (a failed machine's logs) without
// breaking the alignment of the rows around them.
type table struct {
	header []string
	rows   []tableRow
}

type tableRow struct {
	cells []string
	notes []string
}

func (t *table) add(cells []string, notes ...string) {
	t.rows = append(t.rows, tableRow{cells, notes})
}

func (t *table) write(w io.Writer) {
	widths := make([]int, len(t.header))
	all := append([]tableRow{{cells: t.header}}, t.rows...)
	for _, r := range all {
		for i, c := range r.cells {
			widths[i] = max(widths[i], len(c))
		}
	}
	for _, r := range all {
		var b strings.Builder
		for i, c := range r.cells {
			if i == len(r.cells)-1 {
				b.WriteString(c)
				break
			}
			b.WriteString(c)
			b.WriteString(strings.Repeat(" ", widths[i]-len(c)+2))
		}
		fmt.Fprintln(w, b.String())
		for _, n := range r.notes {
			fmt.Fprintln(w, "    "+n)
		}
	}
}

// interruptible is the command's context, cancelled by Ctrl-C or SIGTERM,
// for commands that must clean up (deploy removes a half-started machine)
// or end quietly (logs -f).
func interruptible(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
}

// isTerminal reports whether r is an interactive terminal. A variable so
// tests can pretend.
var isTerminal = func(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// confirm asks the user to type want to go on. Without a terminal it
// refuses, so scripts must say --yes.
func confirm(cmd *cobra.Command, prompt, want string) error {
	in := cmd.InOrStdin()
	if !isTerminal(in) {
		return errors.New("refusing without confirmation: not a terminal, pass --yes")
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s\nType %q to confirm: ", prompt, want)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading confirmation: %w", err)
	}
	if strings.TrimSpace(line) != want {
		return errors.New("not confirmed; nothing changed (pass --yes to skip the question)")
	}
	return nil
}
