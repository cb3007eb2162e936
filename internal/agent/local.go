package agent

import (
	"encoding/json"
	"github.com/perchhq/perch/internal/api"
	"os"
	"path/filepath"
)

// localRecord is what this host remembers of a machine across agent
// restarts: which config generation its runtime instance was made from,
// and how far its logs have been shipped.
type localRecord struct {
	ConfigGeneration int64            `json:"config_generation"`
	ImageRef         string           `json:"image_ref"`
	InstanceID       string           `json:"instance_id"`
	Runtime          string           `json:"runtime,omitempty"` // the driver it was created in; "" is runc
	Offsets          map[string]int64 `json:"offsets,omitempty"`
	// Stop is the stop_config the instance was created with: an update
	// in place stops the old process as its own config says.
	Stop *api.StopConfig `json:"stop,omitempty"`
	// SignalSeq is the spec's SignalSeq last acted on (POST .../signal).
	SignalSeq int64 `json:"signal_seq,omitempty"`
	// Volumes are the volumes mounted on the host for the machine
	// (volumes.go), unmounted when it stops or goes.
	Volumes []string `json:"volumes,omitempty"`
}

func localPath(stateDir, id string) string {
	return filepath.Join(stateDir, "machines", id+".json")
}

func loadLocal(stateDir, id string) localRecord {
	var r localRecord
	if b, err := os.ReadFile(localPath(stateDir, id)); err == nil {
		_ = json.Unmarshal(b, &r)
	}
	if r.Offsets == nil {
		r.Offsets = map[string]int64{}
	}
	return r
}

func saveLocal(stateDir, id string, r localRecord) error {
	p := localPath(stateDir, id)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func removeLocal(stateDir, id string) {
	_ = os.Remove(localPath(stateDir, id))
}
