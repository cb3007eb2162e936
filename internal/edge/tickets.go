package edge

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TLS session tickets. A ticket is the session state sealed with a key
// the server holds: any edge holding the key resumes the session, so all
// edges of a region share their keys (bucket perch_tls_tickets, key
// "<region>", which only that region's hosts may read and write) and a
// client moved to another host of the region resumes instead of doing a
// full handshake. crypto/tls encrypts new tickets with the first key of
// SetSessionTicketKeys and decrypts with any of them.
//
// Rotation without coordination: the region's list always holds the key in
// use and the next one, which starts ticketRotation after the current one.
// Every edge syncs each ticketSync, so each knows the next key long
// before it starts; a key stays for decryption ticketKeep after it stopped
// encrypting. Whichever edge first sees that a key started writes the
// following one (compare-and-set on the entry's revision).
//
// TLS 1.3 0-RTT (early data) is off: crypto/tls has no server-side
// support for it, so requests are never replayable at the TLS layer.
const (
	ticketRotation = 12 * time.Hour
	ticketKeep     = 12 * time.Hour
	ticketSync     = time.Minute
)

// ticketKey is one session ticket key of a region.
type ticketKey struct {
	Secret []byte    `json:"secret"` // 32 bytes
	From   time.Time `json:"from"`   // when it starts encrypting
}

// ticketKeys is the value of a region's key in perch_tls_tickets.
type ticketKeys struct {
	Keys []ticketKey `json:"keys"` // oldest first
}

func newTicketKey(from time.Time) ticketKey {
	k := ticketKey{Secret: make([]byte, 32), From: from.UTC()}
	_, _ = rand.Read(k.Secret)
	return k
}

// rotate brings st to now: a next key pending, keys that stopped
// encrypting more than ticketKeep ago gone. It says whether st changed.
func (st *ticketKeys) rotate(now time.Time) bool {
	changed := false
	if len(st.Keys) == 0 {
		st.Keys = append(st.Keys, newTicketKey(now))
		changed = true
	}
	if last := st.Keys[len(st.Keys)-1].From; !last.After(now) {
		st.Keys = append(st.Keys, newTicketKey(maxTime(last.Add(ticketRotation), now.Add(time.Minute))))
		changed = true
	}
	// Key i stopped encrypting when key i+1 started.
	for len(st.Keys) > 2 && st.Keys[1].From.Add(ticketKeep).Before(now) {
		st.Keys = st.Keys[1:]
		changed = true
	}
	return changed
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// active is the list for tls.Config.SetSessionTicketKeys: the key in use
// at now first, then every other (older ones to decrypt tickets still
// valid; the next one, which an edge with a faster clock may already use).
func (st *ticketKeys) active(now time.Time) [][32]byte {
	cur := 0
	for i, k := range st.Keys {
		if !k.From.After(now) {
			cur = i
		}
	}
	var out [][32]byte
	add := func(k ticketKey) {
		var b [32]byte
		copy(b[:], k.Secret)
		out = append(out, b)
	}
	add(st.Keys[cur])
	for i, k := range st.Keys {
		if i != cur && len(k.Secret) == 32 {
			add(k)
		}
	}
	return out
}

// syncTickets reads the region's ticket keys from kv, rotates them if due
// and gives them to every TLS config of the edge.
func (e *Edge) syncTickets(ctx context.Context, kv jetstream.KeyValue, now time.Time) error {
	for range 3 {
		var st ticketKeys
		var rev uint64
		entry, err := kv.Get(ctx, e.cfg.Region)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return fmt.Errorf("read the region's session ticket keys: %w", err)
		default:
			rev = entry.Revision()
			if err := json.Unmarshal(entry.Value(), &st); err != nil {
				return fmt.Errorf("session ticket keys of region %s: %w", e.cfg.Region, err)
			}
		}
		if st.rotate(now) {
			b, _ := json.Marshal(st)
			if rev == 0 {
				_, err = kv.Create(ctx, e.cfg.Region, b)
			} else {
				_, err = kv.Update(ctx, e.cfg.Region, b, rev)
			}
			if err != nil {
				continue // another edge of the region rotated first: read again
			}
		}
		e.tls.setTicketKeys(st.active(now))
		return nil
	}
	return errors.New("session ticket keys: the region's entry kept changing; will retry")
}

// runTickets keeps the edge's ticket keys in sync with its region's until
// ctx ends. Until the first sync the edge uses a key of its own.
func (e *Edge) runTickets(ctx context.Context, kv jetstream.KeyValue) {
	t := time.NewTicker(ticketSync)
	defer t.Stop()
	for {
		if err := e.syncTickets(ctx, kv, time.Now()); err != nil && ctx.Err() == nil {
			e.log.Warn("could not sync TLS session ticket keys; sessions resume only on this edge", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// setTicketKeys gives keys (the encrypting one first) to every config.
func (t *tlsConfigs) setTicketKeys(keys [][32]byte) {
	if len(keys) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.keys = slices.Clone(keys)
	for _, c := range t.cfg {
		c.SetSessionTicketKeys(t.keys)
	}
	for _, c := range t.acme {
		c.SetSessionTicketKeys(t.keys)
	}
}
