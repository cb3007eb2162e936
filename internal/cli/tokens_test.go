package cli

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/auth"
)

// printedFirst is what a command printed first: the token, before the
// message on stderr.
func printedFirst(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}

// TestOrgsAndTokens drives perch orgs and perch tokens against a real
// control plane: the operator makes an organisation and invites a member;
// the member launches into it, makes a deploy token, narrows it offline to
// read-only, revokes it; removing the member revokes theirs.
func TestOrgsAndTokens(t *testing.T) {
	loggedOut(t)
	url, admin := startServer(t)
	ctx := context.Background()
	t.Setenv(envAPIURL, url)
	t.Setenv(envAPIToken, admin)

	for _, org := range []string{"acme", "beta"} {
		if _, err := run(t, "", "", "orgs", "create", org); err != nil {
			t.Fatal(err)
		}
	}
	_, err := run(t, "", "", "orgs", "invite", "ada@example.com")
	wantErr(t, err, "belongs to no organisation", "--org")
	out, err := run(t, "", "", "orgs", "invite", "ada@example.com", "--org", "acme")
	if err != nil {
		t.Fatal(err)
	}
	member := printedFirst(out)
	if !strings.HasPrefix(member, auth.Prefix) {
		t.Fatalf("invite printed %q; want a token first", out)
	}

	t.Setenv(envAPIToken, member)
	dir := t.TempDir()
	// Another organisation's name is refused ("personal" would mean the
	// token's own, as on Fly).
	_, err = run(t, "", "", "launch", "--image", "x", "--name", "elsewhere", "--org", "beta", "--regions", "iad", "--dir", t.TempDir())
	wantErr(t, err, "403", `organisation "acme"`)
	out, err = run(t, "", "", "launch", "--image", "x", "--name", "web", "--regions", "iad", "--dir", dir)
	if err != nil || !strings.Contains(out, "in organisation acme") {
		t.Fatalf("launch as a member: %q, %v", out, err)
	}
	out, err = run(t, "", "", "orgs", "list")
	if err != nil || !strings.Contains(out, "acme") || !strings.Contains(out, "ada@example.com") || strings.Contains(out, "personal") {
		t.Errorf("orgs list as a member of acme: %q, %v; want acme (with ada) alone", out, err)
	}

	out, err = run(t, "", "", "tokens", "create", "deploy", "--app", "web", "--expiry", "30d", "--name", "ci")
	if err != nil {
		t.Fatal(err)
	}
	deploy := printedFirst(out)
	out, err = run(t, "", "", "tokens", "list")
	if err != nil || !strings.Contains(out, "deploy") || !strings.Contains(out, "ci") || strings.Contains(out, deploy) {
		t.Fatalf("tokens list: %q, %v; want the deploy token named ci, without its secret", out, err)
	}
	_, err = run(t, "", "", "tokens", "create", "deploy", "--app", "web", "--expiry", "soon")
	wantErr(t, err, `--expiry "soon"`, "30d")

	// Offline: no server is needed to narrow.
	t.Setenv(envAPIURL, "http://127.0.0.1:1")
	out, err = run(t, "", deploy+"\n", "tokens", "attenuate", "--from", "-", "--readonly")
	if err != nil {
		t.Fatal(err)
	}
	readonly := printedFirst(out)
	if !strings.Contains(out, "app=web, readonly") {
		t.Errorf("attenuate said %q; want it to list app=web, readonly", out)
	}
	_, err = run(t, "", "", "tokens", "attenuate", "--from", admin, "--readonly")
	wantErr(t, err, "cannot be narrowed")
	t.Setenv(envAPIURL, url)

	ro := api.NewClient(url, readonly)
	if _, err := ro.GetApp(ctx, "web"); err != nil {
		t.Errorf("the read-only token cannot read web: %v", err)
	}
	one := "1"
	if _, err := ro.UpdateSecrets(ctx, "web", map[string]*string{"A": &one}); !hasCode(err, 403) {
		t.Errorf("the read-only token set a secret: %v; want 403", err)
	}
	if _, err := api.NewClient(url, deploy).UpdateSecrets(ctx, "web", map[string]*string{"A": &one}); err != nil {
		t.Errorf("the deploy token cannot set web's secret: %v", err)
	}

	id := tokenID(t, deploy)
	if out, err := run(t, "", "", "tokens", "revoke", id); err != nil || !strings.Contains(out, "Revoked") {
		t.Fatalf("revoke: %q, %v", out, err)
	}
	for _, tok := range []string{deploy, readonly} {
		if _, err := api.NewClient(url, tok).GetApp(ctx, "web"); !api.IsUnauthorized(err) {
			t.Errorf("after revoke: %v; want 401", err)
		}
	}

	t.Setenv(envAPIToken, admin)
	if _, err := run(t, "", "", "orgs", "remove", "ada@example.com", "--org", "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := api.NewClient(url, member).GetApp(ctx, "web"); !api.IsUnauthorized(err) {
		t.Errorf("a removed member's token: %v; want 401", err)
	}
}

func tokenID(t *testing.T, tok string) string {
	t.Helper()
	id, err := auth.ID(tok)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func hasCode(err error, code int) bool {
	var he *api.HTTPError
	return errors.As(err, &he) && he.StatusCode == code
}
