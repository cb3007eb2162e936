package microvm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/imageuser"
)

// record is what Create leaves for Start, State and Destroy, including
// those of a later driver after an agent restart.
type record struct {
	Spec runtime.Spec   `json:"spec"`
	User imageuser.User `json:"user"`
	Base string         `json:"base"` // the image's disk under the machine's overlay
	Tap  string         `json:"tap,omitempty"`
}

// shimRecord is the shim of the machine's current (or last) run.
type shimRecord struct {
	Pid       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
}

// exitRecord is written by the shim once qemu has exited.
type exitRecord struct {
	ExitCode int       `json:"exit_code"`
	ExitedAt time.Time `json:"exited_at"`
}

func (d *Driver) readRecord(id string) (record, error) {
	var r record
	err := readJSON(d.path(id, fileRecord), &r)
	if errors.Is(err, os.ErrNotExist) {
		return r, fmt.Errorf("microvm: %s: %w", id, runtime.ErrNotFound)
	}
	return r, err
}

// readJSON decodes the file at path into v; os.ErrNotExist if it is missing.
func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("microvm: %s: %w", path, err)
	}
	return nil
}

// writeJSON replaces the file at path so readers never see half of it.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "\t")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
