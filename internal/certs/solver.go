package certs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// challenge is an ACME challenge as the edges need it, stored in the
// challenges bucket under "c.<id>". Each edge that has loaded it into
// memory confirms under "ack.<id>.<host>".
type challenge struct {
	Type    string `json:"type"`
	Domain  string `json:"domain"`
	Token   string `json:"token"`
	KeyAuth string `json:"key_auth"`
}

func (c challenge) id() string {
	h := sha256.Sum256([]byte(c.Type + "\x00" + c.Domain + "\x00" + c.Token))
	return hex.EncodeToString(h[:12])
}

func (c challenge) acme() acme.Challenge {
	return acme.Challenge{
		Type: c.Type, Token: c.Token, KeyAuthorization: c.KeyAuth,
		Identifier: acme.Identifier{Type: "dns", Value: c.Domain},
	}
}

func challengeOf(chal acme.Challenge) challenge {
	return challenge{Type: chal.Type, Domain: strings.ToLower(chal.Identifier.Value), Token: chal.Token, KeyAuth: chal.KeyAuthorization}
}

func challengeKey(id string) string              { return "c." + id }
func ackPrefix(id string) string                 { return "ack." + id + "." }
func ackKey(id, hostID string) string            { return ackPrefix(id) + kvKey(hostID) }
func challengeIDFromKey(k string) (string, bool) { return strings.CutPrefix(k, "c.") }

// kvSolver solves HTTP-01 and TLS-ALPN-01 challenges by publishing them to
// the edges, which the CA reaches at the hostname, and waiting until every
// edge that is up confirms it can answer.
type kvSolver struct {
	st   *store.Store
	wait time.Duration
	log  *slog.Logger
}

var _ acmez.Waiter = (*kvSolver)(nil)

// Present publishes the challenge.
func (s *kvSolver) Present(ctx context.Context, chal acme.Challenge) error {
	c := challengeOf(chal)
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("certs: encode challenge: %w", err)
	}
	if _, err := s.st.Challenges.Put(ctx, challengeKey(c.id()), b); err != nil {
		return fmt.Errorf("certs: publish %s challenge for %s: %w", c.Type, c.Domain, err)
	}
	return nil
}

// Wait returns once every edge that is up has the challenge in memory, so
// the CA's check cannot outrun the watches. Edges that do not confirm
// within s.wait are logged and not waited for: a dead edge must not block
// issuance, and the CA may well reach another one.
func (s *kvSolver) Wait(ctx context.Context, chal acme.Challenge) error {
	c := challengeOf(chal)
	hosts, err := store.List[api.Host](ctx, s.st.Hosts, ">")
	if err != nil {
		return fmt.Errorf("certs: list edges: %w", err)
	}
	want := map[string]bool{}
	for _, h := range hosts {
		if h.Status == api.HostUp && h.Role != api.HostRoleControl { // the control plane runs no edge
			want[h.ID] = true
		}
	}
	if len(want) == 0 {
		s.log.Warn("no edge is up to answer the challenge", "domain", c.Domain, "type", c.Type)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.wait)
	defer cancel()
	prefix := ackPrefix(c.id())
	w, err := s.st.Challenges.Watch(ctx, prefix+">", jetstream.MetaOnly())
	if err != nil {
		return fmt.Errorf("certs: watch challenge confirmations: %w", err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				missing := slices.Sorted(maps.Keys(want))
				s.log.Warn("edges did not confirm the challenge in time; asking the CA anyway", "domain", c.Domain, "type", c.Type, "edges", missing)
				return nil
			}
			return ctx.Err()
		case e := <-w.Updates():
			if e == nil || store.IsDelete(e) {
				continue
			}
			if host, ok := keyFromKV(strings.TrimPrefix(e.Key(), prefix)); ok {
				delete(want, host)
			}
			if len(want) == 0 {
				return nil
			}
		}
	}
}

// CleanUp withdraws the challenge and its confirmations.
func (s *kvSolver) CleanUp(ctx context.Context, chal acme.Challenge) error {
	id := challengeOf(chal).id()
	if err := store.Delete(ctx, s.st.Challenges, challengeKey(id)); err != nil {
		return fmt.Errorf("certs: withdraw challenge: %w", err)
	}
	w, err := s.st.Challenges.Watch(ctx, ackPrefix(id)+">", jetstream.MetaOnly(), jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("certs: list challenge confirmations: %w", err)
	}
	defer w.Stop()
	for e := range w.Updates() {
		if e == nil {
			break
		}
		if err := s.st.Challenges.Purge(ctx, e.Key()); err != nil {
			return fmt.Errorf("certs: withdraw challenge confirmation: %w", err)
		}
	}
	return nil
}
