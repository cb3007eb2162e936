package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/perchhq/perch/internal/store"
)

// NewStandalone is a registry on its own, outside a control plane (tests,
// benchmarks, tools): its state in a JetStream it runs in dir/nats,
// listening on loopback only. Close stops it.
func NewStandalone(dir string, auth Authorizer, opts Options, log *slog.Logger) (*Registry, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := make([]byte, 16)
	rand.Read(b)
	pw := hex.EncodeToString(b)
	e, err := store.RunEmbedded(filepath.Join(dir, "nats"), "127.0.0.1:0", pw, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	ctx := context.Background()
	st, err := store.OpenAs(ctx, e.URL(), store.Auth{User: store.ServerUser, Password: pw}, "perch-registry")
	if err != nil {
		e.Shutdown()
		return nil, fmt.Errorf("registry: %w", err)
	}
	r, err := New(ctx, dir, Shared{JS: st.JetStream(), Blobs: st.Registry, Stream: store.StreamRegistry, Subject: store.SubjectRegistry}, auth, opts, log)
	if err != nil {
		st.Close()
		e.Shutdown()
		return nil, err
	}
	r.onClose = func() { st.Close(); e.Shutdown() }
	return r, nil
}
