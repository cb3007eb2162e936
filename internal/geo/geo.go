// Package geo is Perch's model of the world: the regions machines run in and
// the cities they stand for, read from a regions.tsv file (a copy is embedded
// as the default). It answers how far apart two regions are, which regions
// are nearest to a given one, and how long light in fiber takes between them,
// so a one-machine world can still have real geography. It imports nothing
// else from Perch; the scheduler, the edge, the mesh and the CLI import it.
package geo

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
)

//go:embed regions.tsv
var defaultTSV []byte

// Region is one region and the city its hosts stand for.
type Region struct {
	Code string
	City string
	Lat  float64 // degrees north
	Lon  float64 // degrees east
}

// World is a set of regions, keyed by code. It is read-only once built, so it
// is safe for concurrent use.
type World struct {
	regions map[string]Region
	codes   []string // sorted
}

// defaultWorld parses the embedded file once; its test keeps it valid.
var defaultWorld = sync.OnceValue(func() *World {
	w, err := Parse("regions.tsv", defaultTSV)
	if err != nil {
		panic("geo: embedded regions.tsv: " + err.Error())
	}
	return w
})

// Default returns the world of the embedded regions.tsv.
func Default() *World { return defaultWorld() }

// Load reads a regions file in the format of Parse.
func Load(path string) (*World, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("geo: %w", err)
	}
	return Parse(path, data)
}

// Parse reads regions, one per line as "code\tcity\tlat\tlon". Blank lines
// and lines starting with '#' are skipped. name is used in error messages,
// which carry the line number of the bad line.
func Parse(name string, data []byte) (*World, error) {
	w := &World{regions: make(map[string]Region)}
	defined := make(map[string]int) // code -> line, to report duplicates
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		line = strings.TrimRight(line, "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", name, n, err)
		}
		if prev, ok := defined[r.Code]; ok {
			return nil, fmt.Errorf("%s line %d: region %q is already defined on line %d", name, n, r.Code, prev)
		}
		defined[r.Code] = n
		w.regions[r.Code] = r
		w.codes = append(w.codes, r.Code)
	}
	if len(w.regions) == 0 {
		return nil, fmt.Errorf("%s: no regions; write one per line as code<TAB>city<TAB>lat<TAB>lon", name)
	}
	slices.Sort(w.codes)
	return w, nil
}

func parseLine(line string) (Region, error) {
	f := strings.Split(line, "\t")
	if len(f) != 4 {
		return Region{}, fmt.Errorf("want 4 tab-separated fields (code, city, lat, lon), got %d", len(f))
	}
	for i := range f {
		f[i] = strings.TrimSpace(f[i])
	}
	r := Region{Code: f[0], City: f[1]}
	if !validCode(r.Code) {
		return Region{}, fmt.Errorf("region code %q must be lowercase letters and digits, e.g. \"iad\"", r.Code)
	}
	if r.City == "" {
		return Region{}, fmt.Errorf("region %q has no city", r.Code)
	}
	var err error
	if r.Lat, err = parseDegrees("latitude", f[2], 90); err != nil {
		return Region{}, err
	}
	if r.Lon, err = parseDegrees("longitude", f[3], 180); err != nil {
		return Region{}, err
	}
	return r, nil
}

func parseDegrees(what, s string, limit float64) (float64, error) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("%s %q is not a number of degrees, e.g. 52.37", what, s)
	}
	// The comparison is written so that NaN fails it too.
	if !(v >= -limit && v <= limit) {
		return 0, fmt.Errorf("%s %s is out of range -%g to %g", what, s, limit, limit)
	}
	return v, nil
}

func validCode(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// Lookup returns the region with the given code.
func (w *World) Lookup(code string) (Region, bool) {
	r, ok := w.regions[code]
	return r, ok
}

// Codes returns every region code, sorted. The slice is the caller's.
func (w *World) Codes() []string { return slices.Clone(w.codes) }

// ErrUnknownRegion is wrapped by the errors of Check.
var ErrUnknownRegion = errors.New("unknown region")

// Check returns an error naming the first code that is not a region of w,
// with the list of valid codes, or nil if every code is known.
func (w *World) Check(codes ...string) error {
	for _, c := range codes {
		if _, ok := w.regions[c]; !ok {
			return fmt.Errorf("%w %q; valid regions: %s", ErrUnknownRegion, c, strings.Join(w.codes, ", "))
		}
	}
	return nil
}
