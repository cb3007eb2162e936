package geo

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDefaultHasSharedRegions(t *testing.T) {
	w := Default()
	codes := w.Codes()
	if len(codes) != 22 {
		t.Errorf("Default() has %d regions, want the 22 of regions.tsv: %v", len(codes), codes)
	}
	r, ok := w.Lookup("iad")
	want := Region{Code: "iad", City: "Ashburn VA", Lat: 39.04, Lon: -77.49}
	if !ok || r != want {
		t.Errorf("Lookup(iad) = %+v, %v; want %+v, true", r, ok, want)
	}
}

// The embedded copy must not drift from the file the rest of the project
// (demo scripts, docs) reads.
func TestEmbeddedMatchesShared(t *testing.T) {
	shared, err := os.ReadFile("../../../shared/regions.tsv")
	if err != nil {
		t.Skipf("shared regions.tsv not beside the repo: %v", err)
	}
	if string(shared) != string(defaultTSV) {
		t.Error("internal/geo/regions.tsv differs from ../shared/regions.tsv; copy it again")
	}
}

func TestDistanceKnownPairs(t *testing.T) {
	w := Default()
	for _, tc := range []struct {
		a, b string
		km   float64
	}{
		{"iad", "ams", 6200},
		{"lhr", "cdg", 344},
		{"sin", "syd", 6300},
	} {
		got := w.Distance(tc.a, tc.b)
		if math.Abs(got-tc.km)/tc.km > 0.02 {
			t.Errorf("Distance(%s, %s) = %.0f km, want %.0f km ±2%%", tc.a, tc.b, got, tc.km)
		}
		if back := w.Distance(tc.b, tc.a); math.Abs(back-got) > 1e-9 {
			t.Errorf("Distance(%s, %s) = %v but Distance(%s, %s) = %v", tc.a, tc.b, got, tc.b, tc.a, back)
		}
	}
	if d := w.Distance("ams", "ams"); d != 0 {
		t.Errorf("Distance(ams, ams) = %v, want 0", d)
	}
}

func TestDistanceAntipodesIsHalfCircumference(t *testing.T) {
	w, err := Parse("t.tsv", []byte("a\tA\t10\t20\nb\tB\t-10\t-160\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := w.Distance("a", "b"), math.Pi*EarthRadiusKm; math.Abs(got-want) > 1 {
		t.Errorf("antipodes are %v km apart, want %v", got, want)
	}
}

func TestNearest(t *testing.T) {
	w := Default()
	got := w.Nearest("ams", []string{"sin", "iad", "cdg", "ams", "fra", "syd"})
	want := []string{"ams", "fra", "cdg", "iad", "sin", "syd"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Nearest(ams) order (-want +got):\n%s", diff)
	}
	// The edge in sin with its own region down falls back to the next nearest.
	got = w.Nearest("sin", []string{"iad", "ams"})
	if diff := cmp.Diff([]string{"ams", "iad"}, got); diff != "" {
		t.Errorf("Nearest(sin) (-want +got):\n%s", diff)
	}
}

func TestNearestTiesAndUnknown(t *testing.T) {
	// b and c stand at the same place, so they are equally far from a.
	w, err := Parse("t.tsv", []byte("a\tA\t0\t0\nc\tC\t0\t10\nb\tB\t0\t10\nd\tD\t0\t1\n"))
	if err != nil {
		t.Fatal(err)
	}
	in := []string{"zzz", "c", "b", "a", "d"}
	got := w.Nearest("a", in)
	if diff := cmp.Diff([]string{"a", "d", "b", "c", "zzz"}, got); diff != "" {
		t.Errorf("Nearest (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"zzz", "c", "b", "a", "d"}, in); diff != "" {
		t.Errorf("Nearest changed its input (-want +got):\n%s", diff)
	}
	// From an unknown region everything is equally (infinitely) far: by code,
	// the region itself first.
	got = w.Nearest("zzz", []string{"c", "zzz", "a"})
	if diff := cmp.Diff([]string{"zzz", "a", "c"}, got); diff != "" {
		t.Errorf("Nearest from unknown (-want +got):\n%s", diff)
	}
}

func TestUnknownCodes(t *testing.T) {
	w := Default()
	if _, ok := w.Lookup("xyz"); ok {
		t.Error("Lookup(xyz) found a region")
	}
	if d := w.Distance("iad", "xyz"); !math.IsInf(d, 1) {
		t.Errorf("Distance(iad, xyz) = %v, want +Inf", d)
	}
	if d := w.Distance("xyz", "xyz"); !math.IsInf(d, 1) {
		t.Errorf("Distance(xyz, xyz) = %v, want +Inf", d)
	}
	if rtt := w.FiberRTT("xyz", "iad", 1); rtt != Unreachable {
		t.Errorf("FiberRTT(xyz, iad) = %v, want Unreachable", rtt)
	}
	err := w.Check("iad", "xyz", "ams")
	if !errors.Is(err, ErrUnknownRegion) {
		t.Fatalf("Check = %v, want ErrUnknownRegion", err)
	}
	// The list comes from the file, so the test reads it from there.
	if got, want := err.Error(), `unknown region "xyz"; valid regions: `+strings.Join(w.Codes(), ", "); got != want {
		t.Errorf("Check error\n got %q\nwant %q", got, want)
	}
	if err := w.Check("iad", "ams"); err != nil {
		t.Errorf("Check(iad, ams) = %v", err)
	}
}

func TestFiberRTT(t *testing.T) {
	w := Default()
	d := w.Distance("iad", "ams")
	got := w.FiberRTT("iad", "ams", 1.5)
	want := time.Duration(2 * d / 200 * 1.5 * float64(time.Millisecond))
	if got != want {
		t.Errorf("FiberRTT(iad, ams, 1.5) = %v, want %v", got, want)
	}
	// About 93 ms: the well-known transatlantic round trip.
	if got < 85*time.Millisecond || got > 100*time.Millisecond {
		t.Errorf("FiberRTT(iad, ams, 1.5) = %v, want about 93ms", got)
	}
	if rtt := w.FiberRTT("lhr", "cdg", 1); rtt < 3300*time.Microsecond || rtt > 3550*time.Microsecond {
		t.Errorf("FiberRTT(lhr, cdg, 1) = %v, want about 3.44ms", rtt)
	}
	if rtt := w.FiberRTT("iad", "iad", 1.5); rtt != 0 {
		t.Errorf("FiberRTT(iad, iad) = %v, want 0", rtt)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
	}{
		{"too few fields", "# header\niad\tAshburn\t39.04\n", "r.tsv line 2: want 4 tab-separated fields (code, city, lat, lon), got 3"},
		{"spaces not tabs", "iad Ashburn 39.04 -77.49\n", "r.tsv line 1: want 4 tab-separated fields (code, city, lat, lon), got 1"},
		{"bad latitude", "ams\tAmsterdam\t52.37\t4.90\n\niad\tAshburn\tnorth\t-77.49\n", `r.tsv line 3: latitude "north" is not a number of degrees, e.g. 52.37`},
		{"latitude out of range", "iad\tAshburn\t139.04\t-77.49\n", "r.tsv line 1: latitude 139.04 is out of range -90 to 90"},
		{"longitude NaN", "iad\tAshburn\t39.04\tNaN\n", "r.tsv line 1: longitude NaN is out of range -180 to 180"},
		{"bad code", "IAD\tAshburn\t39.04\t-77.49\n", `r.tsv line 1: region code "IAD" must be lowercase letters and digits, e.g. "iad"`},
		{"no city", "iad\t\t39.04\t-77.49\n", `r.tsv line 1: region "iad" has no city`},
		{"duplicate", "iad\tAshburn\t39.04\t-77.49\r\nams\tAmsterdam\t52.37\t4.90\r\niad\tAshburn\t39.04\t-77.49\r\n", `r.tsv line 3: region "iad" is already defined on line 1`},
		{"empty", "# only a comment\n\n", "r.tsv: no regions; write one per line as code<TAB>city<TAB>lat<TAB>lon"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("r.tsv", []byte(tc.data))
			if err == nil || err.Error() != tc.want {
				t.Errorf("Parse error\n got %v\nwant %s", err, tc.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "world.tsv")
	if err := os.WriteFile(path, []byte("# code\tcity\tlat\tlon\r\nhome\tMy Town\t1.5\t-2.25\r\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"home"}, w.Codes()); diff != "" {
		t.Errorf("Codes (-want +got):\n%s", diff)
	}
	if r, _ := w.Lookup("home"); r != (Region{"home", "My Town", 1.5, -2.25}) {
		t.Errorf("Lookup(home) = %+v", r)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.tsv")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want ErrNotExist", err)
	}
}
