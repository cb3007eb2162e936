package agent

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"github.com/perchhq/perch/internal/mesh"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/store"
)

// The control plane seals a machine's secrets to this host's mesh key
// (server/secrets.go); only here are they opened, and only for the
// runtime spec: never logged, never written to the store.

var hostKeys sync.Map // state dir → mesh.Key

func (a *Agent) hostKey() (mesh.Key, error) {
	if k, ok := hostKeys.Load(a.cfg.StateDir); ok {
		return k.(mesh.Key), nil
	}
	k, err := mesh.LoadOrCreateKey(a.cfg.StateDir)
	if err != nil {
		return k, err
	}
	hostKeys.Store(a.cfg.StateDir, k)
	return k, nil
}

// machineSecrets opens the secrets sealed into spec for this host.
func (a *Agent) machineSecrets(spec store.MachineSpec) (map[string]string, error) {
	if len(spec.Secrets) == 0 {
		return nil, nil
	}
	k, err := a.hostKey()
	if err != nil {
		return nil, fmt.Errorf("open secrets of machine %s: %w", spec.ID, err)
	}
	b, err := k.Open(spec.Secrets)
	if err != nil {
		return nil, fmt.Errorf("open secrets of machine %s: %w (was it placed on another host?)", spec.ID, err)
	}
	var ss store.SealedSecrets
	if err := json.Unmarshal(b, &ss); err != nil {
		return nil, fmt.Errorf("open secrets of machine %s: %w", spec.ID, err)
	}
	return ss.Values, nil
}

// machineFiles resolves config.files into the files the driver writes.
func machineFiles(spec store.MachineSpec, secrets map[string]string) ([]perchrt.File, error) {
	var out []perchrt.File
	for i, f := range spec.Config.Files {
		rf := perchrt.File{Path: f.GuestPath, Mode: os.FileMode(f.Mode)}
		switch {
		case f.RawValue != nil:
			b, err := base64.StdEncoding.DecodeString(*f.RawValue)
			if err != nil {
				return nil, fmt.Errorf("config.files[%d].raw_value (%s) is not base64: %w", i, f.GuestPath, err)
			}
			rf.Data = b
		case f.SecretName != nil:
			v, ok := secrets[*f.SecretName]
			if !ok {
				return nil, fmt.Errorf("config.files[%d] (%s): the app has no secret %s", i, f.GuestPath, *f.SecretName)
			}
			rf.Data = []byte(v)
		}
		out = append(out, rf)
	}
	return out, nil
}
