// Package anycast gives apps addresses from the operator's anycast pools
// and announces them over BGP. The control plane allocates (Allocator:
// records in the perch_ips bucket, one key per address, created only if
// absent, so two servers never hand out one address); every host's BGP
// speaker (Speaker, GoBGP as a library) announces each allocated /32 and
// /128 to its upstream routers while its edge is healthy, and withdraws
// them before it stops serving. Addresses go on a dummy device
// (LinkDevice) so the host's edge can bind them. docs/anycast.md.
package anycast

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/store"
)

// Kind is an assignment's type, as Fly's API names them.
type Kind string

const (
	// KindV4 is a dedicated IPv4 address: the app's alone, any port.
	KindV4 Kind = "v4"
	// KindSharedV4 is the pool's shared IPv4 address: many apps, routed by
	// SNI or Host, HTTP and TLS only.
	KindSharedV4 Kind = "shared_v4"
	// KindV6 is a dedicated IPv6 address.
	KindV6 Kind = "v6"
)

// Errors an allocation or release can end in; each is wrapped with a
// message saying what to do.
var (
	ErrNoPool       = errors.New("no anycast pool")
	ErrOutsidePools = errors.New("address outside the anycast pools")
	ErrExhausted    = errors.New("anycast pool exhausted")
	ErrInUse        = errors.New("address in use")
	ErrNotAssigned  = errors.New("address not assigned to this app")
	ErrInvalid      = errors.New("invalid input")
)

// Assignment is one address of one app (the record in perch_ips).
type Assignment struct {
	IP        netip.Addr `json:"ip"`
	App       string     `json:"app"`
	Org       string     `json:"org,omitempty"`
	Kind      Kind       `json:"type"`
	CreatedAt time.Time  `json:"created_at"`
}

// Shared says whether the address is shared between apps.
func (a Assignment) Shared() bool { return a.Kind == KindSharedV4 }

// Pools are the operator's anycast ranges (perch server --anycast-v4,
// --anycast-v6). Either may be unset.
type Pools struct {
	V4, V6 netip.Prefix
}

// ParsePools reads the two flags' values; an empty one leaves that pool
// unset.
func ParsePools(v4, v6 string) (Pools, error) {
	var p Pools
	if v4 != "" {
		pr, err := netip.ParsePrefix(v4)
		if err != nil || !pr.Addr().Is4() {
			return p, fmt.Errorf("%w: --anycast-v4 %q is not an IPv4 CIDR such as 192.0.2.0/24", ErrInvalid, v4)
		}
		if pr.Bits() > 30 {
			return p, fmt.Errorf("%w: --anycast-v4 %s is too small: give at least a /30 (the first usable address is the shared one)", ErrInvalid, v4)
		}
		p.V4 = pr.Masked()
	}
	if v6 != "" {
		pr, err := netip.ParsePrefix(v6)
		if err != nil || !pr.Addr().Is6() || pr.Addr().Is4In6() {
			return p, fmt.Errorf("%w: --anycast-v6 %q is not an IPv6 CIDR such as 2001:db8:1::/48", ErrInvalid, v6)
		}
		if pr.Bits() > 126 {
			return p, fmt.Errorf("%w: --anycast-v6 %s is too small: give at least a /126", ErrInvalid, v6)
		}
		p.V6 = pr.Masked()
	}
	return p, nil
}

// Enabled says whether any pool is configured.
func (p Pools) Enabled() bool { return p.V4.IsValid() || p.V6.IsValid() }

// Contains says whether addr is in one of the pools.
func (p Pools) Contains(addr netip.Addr) bool {
	return (p.V4.IsValid() && p.V4.Contains(addr)) || (p.V6.IsValid() && p.V6.Contains(addr))
}

// String names the pools for messages.
func (p Pools) String() string {
	var s []string
	if p.V4.IsValid() {
		s = append(s, p.V4.String())
	}
	if p.V6.IsValid() {
		s = append(s, p.V6.String())
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// SharedV4 is the shared IPv4 address: the v4 pool's first usable one.
func (p Pools) SharedV4() netip.Addr {
	if !p.V4.IsValid() {
		return netip.Addr{}
	}
	return p.V4.Addr().Next()
}

// first is the first address a dedicated allocation may take: past the
// network address (and in v4 past the shared one).
func (p Pools) first(pool netip.Prefix) netip.Addr {
	a := pool.Addr().Next()
	if pool.Addr().Is4() {
		a = a.Next()
	}
	return a
}

// usable says whether a is a dedicated address of pool (not the network,
// shared or v4 broadcast address).
func (p Pools) usable(pool netip.Prefix, a netip.Addr) bool {
	if !pool.Contains(a) || a.Less(p.first(pool)) {
		return false
	}
	if a.Is4() {
		last := lastAddr(pool)
		return a != last
	}
	return true
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	n := new(big.Int).SetBytes(b)
	host := len(b)*8 - p.Bits()
	n.Or(n, new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), uint(host)), big.NewInt(1)))
	out := n.FillBytes(make([]byte, len(b)))
	a, _ := netip.AddrFromSlice(out)
	return a
}

// Key is an address's key in perch_ips.
func Key(a netip.Addr) string {
	b := a.As16()
	return "ip." + hex.EncodeToString(b[:])
}

// sharedKey is the key of app's shared IPv4 assignment.
func sharedKey(app string) string { return "shared." + app }

// Allocator hands out and takes back addresses. Every decision is one
// compare-and-set on one key, so any number of control planes may share
// a store.
type Allocator struct {
	KV    jetstream.KeyValue
	Pools Pools
	Now   func() time.Time
}

func (a *Allocator) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now().UTC()
}

// List returns app's assignments (every app's with app ""), dedicated
// addresses first, in address order.
func (a *Allocator) List(ctx context.Context, app string) ([]Assignment, error) {
	all, err := store.List[Assignment](ctx, a.KV, ">")
	if err != nil {
		return nil, fmt.Errorf("anycast: list: %w", err)
	}
	out := all[:0]
	for _, as := range all {
		if !as.IP.IsValid() {
			continue // a drained region's record (drain.go)
		}
		if app == "" || as.App == app {
			out = append(out, as)
		}
	}
	slices.SortFunc(out, func(x, y Assignment) int {
		if x.Shared() != y.Shared() {
			if x.Shared() {
				return 1
			}
			return -1
		}
		if c := x.IP.Compare(y.IP); c != 0 {
			return c
		}
		return strings.Compare(x.App, y.App)
	})
	return out, nil
}

// Allocate gives app an address of kind. A shared IPv4 is the pool's one
// shared address, once per app (a second is a no-op answering the same).
func (a *Allocator) Allocate(ctx context.Context, app, org string, kind Kind) (Assignment, error) {
	if app == "" {
		return Assignment{}, fmt.Errorf("%w: no app named", ErrInvalid)
	}
	var pool netip.Prefix
	switch kind {
	case KindV4, KindSharedV4:
		pool = a.Pools.V4
		if !pool.IsValid() {
			return Assignment{}, fmt.Errorf("%w: this Perch has no IPv4 anycast pool; start perch server with --anycast-v4 CIDR", ErrNoPool)
		}
	case KindV6:
		pool = a.Pools.V6
		if !pool.IsValid() {
			return Assignment{}, fmt.Errorf("%w: this Perch has no IPv6 anycast pool; start perch server with --anycast-v6 CIDR", ErrNoPool)
		}
	default:
		return Assignment{}, fmt.Errorf("%w: address type %q is not one of v4, shared_v4, v6", ErrInvalid, kind)
	}
	as := Assignment{App: app, Org: org, Kind: kind, CreatedAt: a.now()}
	if kind == KindSharedV4 {
		as.IP = a.Pools.SharedV4()
		if _, err := store.Create(ctx, a.KV, sharedKey(app), as); err != nil {
			if errors.Is(err, store.ErrExists) {
				old, _, gerr := store.Get[Assignment](ctx, a.KV, sharedKey(app))
				if gerr == nil {
					return old, nil
				}
			}
			return Assignment{}, fmt.Errorf("anycast: allocate shared v4 for %s: %w", app, err)
		}
		return as, nil
	}
	for tries := 0; tries < 8; tries++ {
		used, err := a.usedIn(ctx, pool)
		if err != nil {
			return Assignment{}, err
		}
		addr, ok := a.firstFree(pool, used)
		if !ok {
			return Assignment{}, fmt.Errorf("%w: every address of %s is allocated (%d); release one with perch ips release, or give the server a larger pool", ErrExhausted, pool, len(used))
		}
		as.IP = addr
		if _, err := store.Create(ctx, a.KV, Key(addr), as); err != nil {
			if errors.Is(err, store.ErrExists) {
				continue // another server took it: look again
			}
			return Assignment{}, fmt.Errorf("anycast: allocate %s: %w", addr, err)
		}
		return as, nil
	}
	return Assignment{}, fmt.Errorf("anycast: allocate %s for %s: lost the race for a free address 8 times; try again", kind, app)
}

func (a *Allocator) usedIn(ctx context.Context, pool netip.Prefix) (map[netip.Addr]bool, error) {
	all, err := store.List[Assignment](ctx, a.KV, "ip.*")
	if err != nil {
		return nil, fmt.Errorf("anycast: list: %w", err)
	}
	used := map[netip.Addr]bool{}
	for _, as := range all {
		if pool.Contains(as.IP) {
			used[as.IP] = true
		}
	}
	return used, nil
}

// firstFree walks pool from its first dedicated address: the first free
// one is at most len(used) steps in.
func (a *Allocator) firstFree(pool netip.Prefix, used map[netip.Addr]bool) (netip.Addr, bool) {
	addr := a.Pools.first(pool)
	for i := 0; i <= len(used); i++ {
		if !a.Pools.usable(pool, addr) {
			return netip.Addr{}, false
		}
		if !used[addr] {
			return addr, true
		}
		addr = addr.Next()
		if !addr.IsValid() {
			return netip.Addr{}, false
		}
	}
	return netip.Addr{}, false
}

// Release takes addr back from app. inUse is how many of app's machines
// serve public services: an app still serving on its address keeps it
// unless force is set (clients on the address then lose the app).
func (a *Allocator) Release(ctx context.Context, app string, addr netip.Addr, inUse int, force bool) (Assignment, error) {
	if !addr.IsValid() {
		return Assignment{}, fmt.Errorf("%w: no address given", ErrInvalid)
	}
	addr = addr.Unmap()
	if !a.Pools.Contains(addr) {
		return Assignment{}, fmt.Errorf("%w: %s is not in the anycast pools (%s); see the app's addresses with perch ips list", ErrOutsidePools, addr, a.Pools)
	}
	key := Key(addr)
	if addr == a.Pools.SharedV4() {
		key = sharedKey(app)
	}
	as, rev, err := store.Get[Assignment](ctx, a.KV, key)
	if errors.Is(err, store.ErrNotFound) || (err == nil && as.App != app) {
		return Assignment{}, fmt.Errorf("%w: %s is not an address of app %s; see its addresses with perch ips list", ErrNotAssigned, addr, app)
	}
	if err != nil {
		return Assignment{}, fmt.Errorf("anycast: release %s: %w", addr, err)
	}
	if inUse > 0 && !force {
		return Assignment{}, fmt.Errorf("%w: app %s has %d machine(s) with public services answering on %s; release it with --force (its clients on that address lose the app), or destroy the machines first", ErrInUse, app, inUse, addr)
	}
	if err := a.KV.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		return Assignment{}, fmt.Errorf("anycast: release %s: %w (it changed meanwhile; try again)", addr, err)
	}
	return as, nil
}

// EnsureDefaults gives an app with public services what Fly gives one at
// its first deploy: a dedicated IPv6 (with a v6 pool) and the shared IPv4
// (with a v4 pool), unless it has them. It returns the assignments made.
func (a *Allocator) EnsureDefaults(ctx context.Context, app, org string) ([]Assignment, error) {
	have, err := a.List(ctx, app)
	if err != nil {
		return nil, err
	}
	var v4, v6 bool
	for _, as := range have {
		v4 = v4 || as.IP.Is4()
		v6 = v6 || as.IP.Is6()
	}
	var made []Assignment
	if !v6 && a.Pools.V6.IsValid() {
		as, err := a.Allocate(ctx, app, org, KindV6)
		if err != nil {
			return made, err
		}
		made = append(made, as)
	}
	if !v4 && a.Pools.V4.IsValid() {
		as, err := a.Allocate(ctx, app, org, KindSharedV4)
		if err != nil {
			return made, err
		}
		made = append(made, as)
	}
	return made, nil
}

// Prefix is the host prefix announced for an address: /32 or /128.
func Prefix(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, a.BitLen())
}
