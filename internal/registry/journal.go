package registry

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// record is one manifest write as the handler accepted it. Applying the
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

// Earlier versions kept blobs on the server's disk (blobs/sha256/<hex>)
// and manifests in a journal of one file per write (manifests/<seq>.json).
// importLocal moves both into the shared state at the first start: the
// blobs into the object store, the journal's records onto the stream in
// their order (the journal directory is then renamed manifests.imported).
func importLocal(ctx context.Context, dir string, sh Shared, log *slog.Logger) error {
	blobs := filepath.Join(dir, "blobs")
	files, _ := filepath.Glob(filepath.Join(blobs, "sha256", "*"))
	for _, p := range files {
		hx := filepath.Base(p)
		if b, err := hex.DecodeString(hx); err != nil || len(b) != 32 {
			continue // a temporary file
		}
		name := "sha256:" + hx
		if _, err := sh.Blobs.GetInfo(ctx, name); errors.Is(err, jetstream.ErrObjectNotFound) {
			f, err := os.Open(p)
			if err != nil {
				return fmt.Errorf("import blob %s: %w", p, err)
			}
			_, err = sh.Blobs.Put(ctx, jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: blobChunk}}, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("import blob %s into the object store: %w", p, err)
			}
		} else if err != nil {
			return fmt.Errorf("import blob %s: %w", p, err)
		}
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("import blob %s: %w", p, err)
		}
	}
	if len(files) > 0 {
		log.Info("moved the blobs on disk into the object store", "blobs", len(files))
	}
	if err := os.RemoveAll(blobs); err != nil {
		return fmt.Errorf("remove %s: %w", blobs, err)
	}

	jdir := filepath.Join(dir, "manifests")
	seqs, err := listRecords(jdir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, seq := range seqs {
		p := filepath.Join(jdir, fmt.Sprintf("%020d%s", seq, recordSuffix))
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("import manifest journal: %w", err)
		}
		var rec record
		if err := json.Unmarshal(b, &rec); err != nil {
			return fmt.Errorf("manifest journal record %s is corrupt (%w); move it away to start without it", p, err)
		}
		if _, err := sh.JS.Publish(ctx, sh.Subject, b); err != nil {
			return fmt.Errorf("import manifest journal record %s: %w", p, err)
		}
	}
	if err := os.Rename(jdir, jdir+".imported"); err != nil {
		return fmt.Errorf("import manifest journal: %w", err)
	}
	log.Info("moved the manifest journal onto the stream", "records", len(seqs), "stream", sh.Stream)
	return nil
}

const recordSuffix = ".json"

// listRecords returns the sequence numbers of the journal's records in
// dir, ascending.
func listRecords(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read manifest journal: %w", err)
	}
	var seqs []uint64
	for _, e := range ents {
		name := e.Name()
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, recordSuffix), 10, 64)
		if err != nil || !strings.HasSuffix(name, recordSuffix) {
			continue // a temporary file, or not ours
		}
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	return seqs, nil
}
