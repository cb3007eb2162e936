package billing

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/perchhq/perch/internal/api"
)

// PriceMonth is the month length prices per month are divided by, as
// Fly's per-second prices are (30 days).
const PriceMonth = 30 * 24 * time.Hour

// Prices is the price table, in US dollars. Monthly prices are charged per
// second (monthly / 30 days).
type Prices struct {
	// Sizes by name ("shared-cpu-1x"): the monthly price of the size with
	// its included memory.
	Sizes map[string]SizePrice `toml:"sizes" json:"sizes"`
	// MemoryPerGB is the monthly price of each GB above a size's own.
	MemoryPerGB float64 `toml:"memory_per_gb" json:"memory_per_gb"`
	// StoppedRootfsPerGB is the monthly price of a stopped or suspended
	// machine's root filesystem per GB; VolumePerGB of volumes.
	StoppedRootfsPerGB float64 `toml:"stopped_rootfs_per_gb" json:"stopped_rootfs_per_gb"`
	VolumePerGB        float64 `toml:"volume_per_gb" json:"volume_per_gb"`
	// Regions by code; "*" is the default for regions not listed.
	Regions map[string]RegionPrice `toml:"regions" json:"regions"`
}

// SizePrice is one guest size's monthly price.
type SizePrice struct {
	Monthly  float64 `toml:"monthly" json:"monthly"`
	MemoryMB int     `toml:"memory_mb" json:"memory_mb"`
}

// RegionPrice is a region's compute multiplier and egress price.
type RegionPrice struct {
	Multiplier  float64 `toml:"multiplier" json:"multiplier"`
	EgressPerGB float64 `toml:"egress_per_gb" json:"egress_per_gb"`
}

// DefaultPrices follow Fly.io's published prices (docs/budgets.md has the
// source): shared-cpu-1x with 256 MB $1.94 a month, extra memory $5/GB,
// stopped root filesystems and volumes $0.15/GB, egress $0.02/GB in North
// America and Europe, $0.04 in Asia Pacific, Oceania and South America,
// $0.12 in Africa and India.
func DefaultPrices() Prices {
	p := Prices{
		Sizes: map[string]SizePrice{
			"shared-cpu-1x": {1.94, 256}, "shared-cpu-2x": {3.89, 512},
			"shared-cpu-4x": {7.78, 1024}, "shared-cpu-8x": {15.55, 2048},
			"performance-1x": {31.00, 2048}, "performance-2x": {62.00, 4096},
			"performance-4x": {124.00, 8192}, "performance-8x": {248.00, 16384},
			"performance-16x": {496.00, 32768},
		},
		MemoryPerGB: 5.00, StoppedRootfsPerGB: 0.15, VolumePerGB: 0.15,
		Regions: map[string]RegionPrice{"*": {1, 0.04}},
	}
	for _, r := range []string{"iad", "ord", "dfw", "sjc", "lax", "sea", "ewr", "yyz", "mia", "atl", "bos", "den", "phx", "qro", "yul",
		"ams", "fra", "lhr", "cdg", "arn", "mad", "waw", "otp", "ams"} {
		p.Regions[r] = RegionPrice{1, 0.02}
	}
	for _, r := range []string{"bom", "jnb"} {
		p.Regions[r] = RegionPrice{1, 0.12}
	}
	return p
}

var sizeName = regexp.MustCompile(`^(shared-cpu|performance)-(1|2|4|8|16)x$`)

// SizeName is a guest's size name: "shared-cpu-1x", "performance-2x".
func SizeName(g api.Guest) string {
	kind := "shared-cpu"
	if g.CPUKind == "performance" {
		kind = "performance"
	}
	return fmt.Sprintf("%s-%dx", kind, max(1, g.CPUs))
}

// LoadPrices reads a TOML price file and checks it against the regions
// that must be priced. Sizes it leaves out keep their default price.
func LoadPrices(path string, regions []string) (Prices, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Prices{}, fmt.Errorf("prices: %w", err)
	}
	p, err := ParsePrices(b, regions)
	if err != nil {
		return Prices{}, fmt.Errorf("prices %s: %w", path, err)
	}
	return p, nil
}

// ParsePrices parses a price file over the defaults and validates it.
func ParsePrices(b []byte, regions []string) (Prices, error) {
	var f Prices
	dec := toml.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) && len(sm.Errors) > 0 {
			row, _ := sm.Errors[0].Position()
			return Prices{}, fmt.Errorf("line %d: unknown key %q: keys are sizes, memory_per_gb, stopped_rootfs_per_gb, volume_per_gb, regions",
				row, strings.Join(sm.Errors[0].Key(), "."))
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return Prices{}, fmt.Errorf("line %d column %d: %s", row, col, de.Error())
		}
		return Prices{}, fmt.Errorf("%w", err)
	}
	p := DefaultPrices()
	for name, s := range f.Sizes {
		if !sizeName.MatchString(name) {
			return Prices{}, fmt.Errorf("unknown size %q: sizes are shared-cpu-Nx or performance-Nx with N 1, 2, 4, 8 or 16", name)
		}
		if s.Monthly < 0 || s.MemoryMB <= 0 {
			return Prices{}, fmt.Errorf("size %q: monthly must be >= 0 and memory_mb > 0, got %g and %d", name, s.Monthly, s.MemoryMB)
		}
		p.Sizes[name] = s
	}
	if f.MemoryPerGB != 0 {
		p.MemoryPerGB = f.MemoryPerGB
	}
	if f.StoppedRootfsPerGB != 0 {
		p.StoppedRootfsPerGB = f.StoppedRootfsPerGB
	}
	if f.VolumePerGB != 0 {
		p.VolumePerGB = f.VolumePerGB
	}
	if len(f.Regions) > 0 {
		p.Regions = f.Regions // a file that prices regions prices them all
	}
	for code, r := range p.Regions {
		if code != "*" && len(f.Regions) > 0 && !slices.Contains(regions, code) {
			return Prices{}, fmt.Errorf("unknown region %q: perch regions lists the region codes", code)
		}
		if r.Multiplier <= 0 || r.EgressPerGB < 0 {
			return Prices{}, fmt.Errorf("region %q: multiplier must be > 0 and egress_per_gb >= 0, got %g and %g", code, r.Multiplier, r.EgressPerGB)
		}
	}
	if err := p.Covers(regions); err != nil {
		return Prices{}, err
	}
	return p, nil
}

// Covers checks that every region has a price (its own or "*").
func (p Prices) Covers(regions []string) error {
	if _, ok := p.Regions["*"]; ok {
		return nil
	}
	var missing []string
	for _, r := range regions {
		if _, ok := p.Regions[r]; !ok {
			missing = append(missing, r)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("no price for region(s) %s: add [regions.%s] (multiplier, egress_per_gb) or a default [regions.\"*\"]",
			strings.Join(missing, ", "), missing[0])
	}
	return nil
}

func (p Prices) region(code string) RegionPrice {
	if r, ok := p.Regions[code]; ok {
		return r
	}
	return cmp.Or(p.Regions["*"], RegionPrice{Multiplier: 1})
}

// perSecond turns a monthly price into a per-second one.
func perSecond(monthly float64) float64 { return monthly / PriceMonth.Seconds() }

// RunningPerSecond is what a started machine of guest g costs a second in
// region.
func (p Prices) RunningPerSecond(g api.Guest, region string) float64 {
	s, ok := p.Sizes[SizeName(g)]
	if !ok {
		s = p.Sizes["shared-cpu-1x"]
	}
	monthly := s.Monthly
	if extra := g.MemoryMB - s.MemoryMB; extra > 0 {
		monthly += float64(extra) / 1024 * p.MemoryPerGB
	}
	return perSecond(monthly) * p.region(region).Multiplier
}

// Cost is the price of one record.
func (p Prices) Cost(r Record) float64 {
	secs := r.End.Sub(r.Start).Seconds()
	switch r.Kind {
	case KindEgress:
		return float64(r.Bytes) / 1e9 * p.region(r.Region).EgressPerGB
	case KindMachine:
		storage := secs * (perSecond(p.VolumePerGB) * r.VolumeGB)
		if r.State == api.StateStarted {
			g := api.Guest{CPUKind: r.CPUKind, CPUs: r.CPUs, MemoryMB: r.MemoryMB}
			return secs*p.RunningPerSecond(g, r.Region) + storage
		}
		return storage + secs*perSecond(p.StoppedRootfsPerGB)*r.RootfsGB
	}
	return 0
}
