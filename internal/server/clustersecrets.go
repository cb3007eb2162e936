package server

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/perchhq/perch/internal/secrets"
)

// InitClusterSecrets makes, in dir, the secrets every server of a
// cluster must share before any of them starts (perch server
// init-cluster; docs/servers.md): the control plane's NATS password
// (also the routes'), the admin token, the key organisations' tokens are
// signed with, the dashboard's session key and the secrets master key.
// Files already there are kept. It returns the files' names, to copy
// into every server's --data-dir.
func InitClusterSecrets(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster secrets: %w", err)
	}
	names := []string{"nats-token", "admin-token", "token-key", "ui-key"}
	for _, n := range names {
		path := filepath.Join(dir, n)
		if _, err := os.Stat(path); err == nil {
			continue
		}
		v := randHex(24)
		switch n {
		case "admin-token":
			v = "perch_" + v
		case "token-key":
			v = randHex(32)
		}
		if err := writeFileAtomic(path, []byte(v+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("cluster secrets: %s: %w", n, err)
		}
	}
	if _, err := secrets.LoadKeyring(dir); err != nil {
		return nil, fmt.Errorf("cluster secrets: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("cluster secrets: %w", err)
	}
	names = names[:0]
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
