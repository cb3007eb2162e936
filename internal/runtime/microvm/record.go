package microvm

import (
	"errors"
	"fmt"
	"os"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/imageuser"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// record is what Create leaves for Start, State and Destroy, including
// those of a later driver after an agent restart.
type record struct {
	Spec runtime.Spec   `json:"spec"`
	User imageuser.User `json:"user"`
	Base string         `json:"base"` // the image's disk under the machine's overlay
	Tap  string         `json:"tap,omitempty"`
}

func (d *Driver) readRecord(id string) (record, error) {
	var r record
	err := machinedir.ReadJSON(d.path(id, fileRecord), &r)
	if errors.Is(err, os.ErrNotExist) {
		return r, fmt.Errorf("microvm: %s: %w", id, runtime.ErrNotFound)
	}
	return r, err
}
