package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// registrationFile keeps the host's last registration (the control
// plane's bootstrap answer and the host record), so that an agent
// restarted while its region is cut off from the control plane starts
// from it and serves from its leaf node's mirrors.
const registrationFile = "registration.json"

// LeafDir is where the host's leaf node keeps its JetStream (the
// mirrors), under the state dir.
const LeafDir = "leaf"

// registerTimeout bounds the control plane's answer at start when the
// host could start without it (a saved registration and a leaf node): in
// a cut, packets are dropped and a connection would wait for TCP to give
// up.
const registerTimeout = 5 * time.Second

type registration struct {
	Boot api.AgentBootstrap `json:"boot"`
	Host api.Host           `json:"host"`
}

func (a *Agent) saveRegistration(boot api.AgentBootstrap, h api.Host) error {
	if boot.NATSLeafURL == "" {
		return nil // nothing would be served from it
	}
	boot.NATSToken = "" // never on disk (an external NATS's shared token; a leaf has none)
	b, _ := json.Marshal(registration{Boot: boot, Host: h})
	if err := writeFile0600(filepath.Join(a.cfg.StateDir, registrationFile), b); err != nil {
		return fmt.Errorf("agent: save registration: %w", err)
	}
	return nil
}

// lastRegistration is the saved registration of host id, if it had a
// leaf node (without one, nothing would be served from it).
func (a *Agent) lastRegistration(id string) (registration, bool) {
	var r registration
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, registrationFile))
	if err != nil || json.Unmarshal(b, &r) != nil {
		return r, false
	}
	return r, r.Host.ID == id && r.Boot.NATSLeafURL != "" && !a.cfg.NoLeaf
}

// offline says whether err is the control plane being out of reach (no
// answer), not a refusal.
func offline(err error) bool {
	var he *api.HTTPError
	return err != nil && !errors.As(err, &he)
}

// openStore connects to NATS as this host: through a leaf node of its
// own when the control plane offers one (and --no-leaf is not given),
// else straight to the control plane's NATS.
func (a *Agent) openStore(ctx context.Context, boot api.AgentBootstrap, auth store.Auth, secret string) (*store.Store, error) {
	name := "perch-agent-" + a.host.ID
	if boot.NATSLeafURL == "" || a.cfg.NoLeaf || boot.NATSUser == "" {
		return store.OpenHost(ctx, boot.NATSURL, auth, name)
	}
	leaf, err := store.RunLeaf(ctx, store.LeafConfig{
		Dir: filepath.Join(a.cfg.StateDir, LeafDir), Remotes: strings.Split(boot.NATSLeafURL, ","),
		HostID: boot.NATSUser, Password: secret, Log: a.log.With("component", "leaf"),
	})
	if err != nil {
		return nil, err
	}
	st, err := store.OpenHostLeaf(ctx, boot.NATSURL, auth, name, leaf)
	if err != nil {
		leaf.Shutdown()
		return nil, err
	}
	a.leaf = leaf
	return st, nil
}
