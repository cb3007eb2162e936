package registry

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// record is one manifest write as the handler accepted it. Replaying the
// records in order rebuilds the handler's manifest table exactly, quirks
// included, and puts every index after the children it was checked against.
type record struct {
	Op          string `json:"op"` // opPut or opDelete
	Name        string `json:"name"`
	Reference   string `json:"reference"` // tag or digest
	ContentType string `json:"content_type,omitempty"`
	Body        []byte `json:"body,omitempty"`
}

const (
	opPut    = "put"
	opDelete = "delete"
)

// journal stores records as one file each, named by sequence number, so a
// write is a single atomic rename and a crash leaves no torn record.
type journal struct {
	dir  string
	next uint64
}

const recordSuffix = ".json"

func openJournal(dir string) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	seqs, err := listRecords(dir)
	if err != nil {
		return nil, err
	}
	j := &journal{dir: dir, next: 1}
	if len(seqs) > 0 {
		j.next = seqs[len(seqs)-1] + 1
	}
	return j, nil
}

// listRecords returns the sequence numbers of the records in dir, ascending,
// and removes temporary files left by a crash mid-write.
func listRecords(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read manifest journal: %w", err)
	}
	var seqs []uint64
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".tmp-") {
			os.Remove(filepath.Join(dir, name))
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, recordSuffix), 10, 64)
		if err != nil || !strings.HasSuffix(name, recordSuffix) {
			continue // not ours; leave it alone
		}
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	return seqs, nil
}

func (j *journal) path(seq uint64) string {
	return filepath.Join(j.dir, fmt.Sprintf("%020d%s", seq, recordSuffix))
}

func (j *journal) read(seq uint64) (record, error) {
	var rec record
	b, err := os.ReadFile(j.path(seq))
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("manifest journal record %s is corrupt (%w); move it away to start without it", j.path(seq), err)
	}
	return rec, nil
}

// append writes rec durably: temp file, fsync, rename, fsync of the directory.
func (j *journal) append(rec record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(j.dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op once renamed
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), j.path(j.next)); err != nil {
		return err
	}
	j.next++
	return syncDir(j.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
