// Package storetest reads a store's buckets the way an attacker with the
// NATS credentials would: raw entries, through the NATS client, not
// through Perch's records. Only tests import it.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/store"
)

// Holds names the first raw entry ("bucket/key") of any bucket whose
// key or value contains b, or "".
func Holds(t testing.TB, st *store.Store, b []byte) string {
	t.Helper()
	ctx := context.Background()
	js := st.JetStream()
	for name := range js.KeyValueStoreNames(ctx).Name() {
		kv, err := js.KeyValue(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := kv.ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for k := range keys.Keys() {
			e, err := kv.Get(ctx, k)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(e.Value(), b) || strings.Contains(k, string(b)) {
				return name + "/" + k
			}
		}
	}
	return ""
}
