package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/perchhq/perch/internal/api"
)

// CredentialFile is the host credential's file in the state dir (0600):
// written once, when the host joins with its join token, and read at
// every later start. The credential is never put on a command line or in
// an environment (docs/security.md, "Hosts and their credentials").
const CredentialFile = "host-credential.json"

// JoinTokenFile, in the state dir, is the join token for hosts whose
// token should not be in the agent's environment either (perch dev's):
// read when the host has no credential yet, removed once spent.
const JoinTokenFile = "join-token"

// credential is the host's credential: read from the state dir, or got
// for the join token (or, for a transition, a join token made with an
// operator token) and saved there first.
func (a *Agent) credential(ctx context.Context) (api.HostCredential, error) {
	path := filepath.Join(a.cfg.StateDir, CredentialFile)
	var c api.HostCredential
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &c); err != nil || c.HostID == "" || c.Secret == "" {
			return c, fmt.Errorf("agent: %s is not a host credential (%v): remove it and join again with a new join token", path, err)
		}
		if c.Region != a.cfg.Region {
			return c, fmt.Errorf("agent: this host joined region %s (%s), not --region %s: start it with --region %s, or remove the state dir and join again", c.Region, path, a.cfg.Region, c.Region)
		}
		return c, nil
	case !errors.Is(err, os.ErrNotExist):
		return c, fmt.Errorf("agent: read host credential: %w", err)
	}
	join := a.cfg.JoinToken
	joinFile := filepath.Join(a.cfg.StateDir, JoinTokenFile)
	if b, err := os.ReadFile(joinFile); join == "" && err == nil {
		join = strings.TrimSpace(string(b))
	}
	if join == "" && a.cfg.Token != "" {
		a.log.Warn("--token (an operator token on the agent) is deprecated: it is used only to make this host's join token; start agents with --join-token")
		jt, err := api.NewClient(a.cfg.ServerURL, a.cfg.Token).CreateJoinToken(ctx, api.JoinTokenRequest{Region: a.cfg.Region, Expiry: "5m"})
		if err != nil {
			return c, fmt.Errorf("agent: make a join token with --token: %w", err)
		}
		join = jt.Token
	}
	if join == "" {
		return c, fmt.Errorf("agent: this host has not joined (no %s in %s): start it once with --join-token (or $PERCH_JOIN_TOKEN) from perch hosts join-token create --region %s", CredentialFile, a.cfg.StateDir, a.cfg.Region)
	}
	got, err := api.NewClient(a.cfg.ServerURL, join).JoinHost(ctx)
	if err != nil {
		return c, fmt.Errorf("agent: join with the join token: %w", err)
	}
	if got.Region != a.cfg.Region {
		return c, fmt.Errorf("agent: the join token is for region %s, not --region %s", got.Region, a.cfg.Region)
	}
	b, _ = json.Marshal(got)
	if err := writeFile0600(path, b); err != nil {
		return c, fmt.Errorf("agent: save host credential: %w", err)
	}
	_ = os.Remove(joinFile) // spent
	a.log.Info("joined", "host", got.HostID, "credential", path)
	return *got, nil
}

func writeFile0600(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
