package anycast

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/store"
)

// A drained region (perch regions drain R) is a record in perch_ips,
// drain.<region>, beside the addresses: every host reads that bucket
// already. The region's hosts withdraw their announcements and keep
// serving what still arrives; every other host hands the region's
// connections back to it (Handoff) while the routers move its clients.

// RegionDrain is a drained region's record.
type RegionDrain struct {
	Region    string    `json:"region"`
	DrainedAt time.Time `json:"drained_at"`
}

// drainPrefix starts a drained region's key.
const drainPrefix = "drain."

// DrainKey is region's key in perch_ips.
func DrainKey(region string) string { return drainPrefix + region }

// DrainedRegion says whether key is a drained region's, and which.
func DrainedRegion(key string) (string, bool) { return strings.CutPrefix(key, drainPrefix) }

// DrainRegion marks region drained (again: a no-op answering the record).
func (a *Allocator) DrainRegion(ctx context.Context, region string) (RegionDrain, error) {
	if region == "" {
		return RegionDrain{}, fmt.Errorf("%w: no region named", ErrInvalid)
	}
	d := RegionDrain{Region: region, DrainedAt: a.now()}
	if _, err := store.Create(ctx, a.KV, DrainKey(region), d); err != nil {
		if errors.Is(err, store.ErrExists) {
			old, _, gerr := store.Get[RegionDrain](ctx, a.KV, DrainKey(region))
			if gerr == nil {
				return old, nil
			}
		}
		return RegionDrain{}, fmt.Errorf("anycast: drain %s: %w", region, err)
	}
	return d, nil
}

// UndrainRegion takes region's drain back; it says whether it was drained.
func (a *Allocator) UndrainRegion(ctx context.Context, region string) (bool, error) {
	if _, _, err := store.Get[RegionDrain](ctx, a.KV, DrainKey(region)); errors.Is(err, store.ErrNotFound) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("anycast: undrain %s: %w", region, err)
	}
	if err := a.KV.Delete(ctx, DrainKey(region)); err != nil {
		return false, fmt.Errorf("anycast: undrain %s: %w", region, err)
	}
	return true, nil
}

// Drained lists the drained regions, sorted.
func (a *Allocator) Drained(ctx context.Context) ([]string, error) {
	all, err := store.List[RegionDrain](ctx, a.KV, drainPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("anycast: list drained regions: %w", err)
	}
	var out []string
	for _, d := range all {
		out = append(out, d.Region)
	}
	slices.Sort(out)
	return out, nil
}
