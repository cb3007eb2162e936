package certs

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Edges serve certificates from perch_edge_tls, a copy of only the
// certificate files (certificates/<issuer>/<site>/<site>.crt and .key) of
// perch_tls: hosts may read it, while perch_tls, which also holds the dev
// CA's key and the ACME accounts' keys, is the control plane's alone. An
// edge still holds every app's certificate key: it terminates their TLS.

// copyToEdge mirrors one perch_tls key (value nil: deleted) into the edge
// copy if it is a certificate file.
func (s *Storage) copyToEdge(ctx context.Context, kvk string, value []byte) error {
	if s.edge == nil {
		return nil
	}
	if _, ok := siteOf(kvk); !ok {
		return nil
	}
	var err error
	if value == nil {
		err = s.edge.Delete(ctx, kvk)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			err = nil
		}
	} else {
		_, err = s.edge.Put(ctx, kvk, value)
	}
	if err != nil {
		return fmt.Errorf("certs: edge copy of %s: %w", kvk, err)
	}
	return nil
}

// SyncEdge makes the edge copy match perch_tls's certificate files (a
// store written before the copy existed, or a copy write that failed).
func (s *Storage) SyncEdge(ctx context.Context) error {
	if s.edge == nil {
		return nil
	}
	all, err := readAll(ctx, s.kv)
	if err != nil {
		return err
	}
	have, err := readAll(ctx, s.edge)
	if err != nil {
		return err
	}
	for k, v := range all {
		if _, ok := siteOf(k); ok && !bytes.Equal(have[k], v) {
			if err := s.copyToEdge(ctx, k, v); err != nil {
				return err
			}
		}
	}
	for k := range have {
		if _, ok := all[k]; !ok {
			if err := s.copyToEdge(ctx, k, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// readAll is kv's content by key.
func readAll(ctx context.Context, kv jetstream.KeyValue) (map[string][]byte, error) {
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("certs: read %s: %w", kv.Bucket(), err)
	}
	defer w.Stop()
	out := map[string][]byte{}
	for e := range w.Updates() {
		if e == nil {
			return out, nil
		}
		out[e.Key()] = e.Value()
	}
	return nil, fmt.Errorf("certs: read %s: %w", kv.Bucket(), ctx.Err())
}
