package certs

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestStorage checks the certmagic.Storage contract on NATS: values,
// "directories", listing and deletion.
func TestStorage(t *testing.T) {
	ctx := context.Background()
	s := NewStorage(newStore(t), nil)
	files := map[string]string{
		"certificates/ca-1/www.example.test/www.example.test.crt":             "crt",
		"certificates/ca-1/www.example.test/www.example.test.key":             "key",
		"certificates/ca-1/wildcard_.example.test/wildcard_.example.test.crt": "wild",
		"acme/ca-1/users/a@b.test/a.json":                                     "user",
		"odd/..key with spaces and =signs.":                                   "odd",
	}
	for k, v := range files {
		if err := s.Store(ctx, k, []byte(v)); err != nil {
			t.Fatalf("Store(%q): %v", k, err)
		}
	}
	for k, v := range files {
		b, err := s.Load(ctx, k)
		if err != nil || string(b) != v {
			t.Errorf("Load(%q) = %q, %v; want %q", k, b, err, v)
		}
	}
	if _, err := s.Load(ctx, "certificates/nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing key: %v; want fs.ErrNotExist", err)
	}
	if !s.Exists(ctx, "certificates/ca-1") || !s.Exists(ctx, "certificates/ca-1/www.example.test/www.example.test.crt") || s.Exists(ctx, "certificates/ca") {
		t.Errorf("Exists is wrong about files, directories or prefixes that are not path components")
	}
	if info, err := s.Stat(ctx, "certificates/ca-1/www.example.test"); err != nil || info.IsTerminal {
		t.Errorf("Stat of a directory: %+v %v", info, err)
	}
	if info, err := s.Stat(ctx, "acme/ca-1/users/a@b.test/a.json"); err != nil || !info.IsTerminal || info.Size != 4 || time.Since(info.Modified) > time.Minute {
		t.Errorf("Stat of a file: %+v %v", info, err)
	}

	got, err := s.List(ctx, "certificates/ca-1", false)
	slices.Sort(got)
	if diff := cmp.Diff([]string{"certificates/ca-1/wildcard_.example.test", "certificates/ca-1/www.example.test"}, got); err != nil || diff != "" {
		t.Errorf("List non-recursive (-want +got): %s %v", diff, err)
	}
	got, _ = s.List(ctx, "certificates", true)
	if len(got) != 3 {
		t.Errorf("List recursive: %v; want the 3 certificate files", got)
	}
	if _, err := s.List(ctx, "nothing", true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List of an empty dir: %v; want fs.ErrNotExist", err)
	}

	if err := s.Delete(ctx, "certificates/ca-1/www.example.test"); err != nil {
		t.Fatal(err)
	}
	if s.Exists(ctx, "certificates/ca-1/www.example.test/www.example.test.key") {
		t.Errorf("Delete of a directory left a file under it")
	}
	if !s.Exists(ctx, "certificates/ca-1/wildcard_.example.test/wildcard_.example.test.crt") {
		t.Errorf("Delete removed a sibling")
	}
	if err := s.Delete(ctx, "certificates/ca-1/www.example.test"); err != nil {
		t.Errorf("Delete of a missing key: %v; want no error", err)
	}
}

func TestKVKeyRoundTrip(t *testing.T) {
	for _, k := range []string{"a/b.c", ".x", "x.", "a..b", "=", "é/ü", "issue_cert_www.example.test", "a b*c"} {
		enc := kvKey(k)
		if dec, ok := keyFromKV(enc); !ok || dec != k {
			t.Errorf("kvKey(%q) = %q decodes to %q, %v", k, enc, dec, ok)
		}
		if !validKVKey(enc) {
			t.Errorf("kvKey(%q) = %q is not a valid KV key", k, enc)
		}
	}
}

// TestLockIsExclusive: a second holder waits for the first to unlock,
// even past the TTL while the first keeps it fresh.
func TestLockIsExclusive(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	a, b := NewStorage(st, nil), NewStorage(st, nil)
	a.lockTTL, b.lockTTL = 300*time.Millisecond, 300*time.Millisecond
	if err := a.Lock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := b.Lock(short, "issue_cert_x"); err == nil {
		t.Fatal("second holder got a lock that is held and refreshed")
	}
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx, "issue_cert_x") }()
	select {
	case err := <-got:
		t.Fatalf("second holder got the lock before it was released: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := a.Unlock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second holder did not get the released lock")
	}
	if err := b.Unlock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
}

// TestLockOfDeadHolderIsTakenOver: a holder that stops refreshing (a
// crashed control plane) loses its lock after the TTL.
func TestLockOfDeadHolderIsTakenOver(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	dead, b := NewStorage(st, nil), NewStorage(st, nil)
	dead.lockTTL, b.lockTTL = 300*time.Millisecond, 300*time.Millisecond
	if err := dead.Lock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	h := dead.held["issue_cert_x"]
	close(h.stop) // the holder dies: no more refreshes, no unlock
	<-h.done
	start := time.Now()
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := b.Lock(short, "issue_cert_x"); err != nil {
		t.Fatalf("lock of a dead holder was not taken over: %v", err)
	}
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Errorf("lock taken over after %s, before its TTL", waited)
	}
	if err := b.Unlock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
}
