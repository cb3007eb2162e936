package config

import (
	"fmt"
	pathpkg "path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/perchhq/perch/internal/api"
)

// Mount is [[mounts]] (also [mounts] and [mount], as flyctl reads them):
// the app's volume named Source at Destination in each machine of the
// process groups it applies to. Each machine gets its own volume of that
// name in its region; perch deploy creates one of InitialSizeGB (1 when
// 0) where there is none free.
type Mount struct {
	Source        string
	Destination   string
	InitialSizeGB int
	// Processes are the process groups whose machines mount it (Fly's
	// processes = [...]); empty: every group.
	Processes []string
	// SnapshotRetention is days (0: the default); ScheduledSnapshots nil
	// keeps the default (on).
	SnapshotRetention  int
	ScheduledSnapshots *bool
}

var volumeNameRE = regexp.MustCompile(`^[a-z0-9_]{1,30}$`)

// mounts reads the mounts; groups are the app's process groups.
func (d *decoder) mounts(top *section, groups []string) []Mount {
	var out []Mount
	for _, k := range []string{"mounts", "mount"} {
		for _, s := range top.subs(k) {
			if m, ok := d.mount(s); ok {
				out = append(out, m)
			}
		}
	}
	// As flyctl checks: a machine mounts one volume, so each process
	// group may be named by one mount at most (a mount without processes
	// names them all).
	for _, g := range groups {
		var srcs []string
		for _, m := range out {
			if m.appliesTo(g) {
				srcs = append(srcs, m.Source)
			}
		}
		if len(srcs) > 1 {
			d.errorf(path{"mounts"}, "process group %s gets %d mounts (%s); a machine mounts one volume (as on Fly): give each [[mounts]] its own processes = [...], or keep one", g, len(srcs), strings.Join(srcs, ", "))
			return nil
		}
	}
	return out
}

// appliesTo says whether machines of group mount m.
func (m Mount) appliesTo(group string) bool {
	return len(m.Processes) == 0 || slices.Contains(m.Processes, group)
}

func (d *decoder) mount(s *section) (Mount, bool) {
	var m Mount
	ok := true
	src, p, has := s.str("source")
	switch {
	case !has:
		d.errorf(s.p, "%s needs source, the volume's name, e.g. source = \"data\"", s.p.section())
		ok = false
	case !volumeNameRE.MatchString(src):
		d.errorf(p, "source %q is not a volume name: use 1-30 lowercase letters, digits and underscores", src)
		ok = false
	}
	m.Source = src
	dst, p, has := s.str("destination")
	switch {
	case !has:
		d.errorf(s.p, "%s needs destination, where machines see the volume, e.g. destination = \"/data\"", s.p.section())
		ok = false
	case !pathpkg.IsAbs(dst) || pathpkg.Clean(dst) == "/":
		d.errorf(p, "destination %q must be an absolute path other than /, e.g. \"/data\"", dst)
		ok = false
	}
	m.Destination = pathpkg.Clean(dst)
	if v, p, has := s.get("initial_size"); has {
		gb, err := sizeGB(v)
		if err != nil {
			d.errorf(p, "initial_size %s; write a size in GB, e.g. initial_size = \"10gb\"", err)
			ok = false
		}
		m.InitialSizeGB = gb
	}
	if n, _, has := s.count("snapshot_retention", 1); has {
		m.SnapshotRetention = n
	}
	if b, _, has := s.boolean("scheduled_snapshots"); has {
		m.ScheduledSnapshots = &b
	}
	for _, k := range []string{"auto_extend_size_threshold", "auto_extend_size_increment", "auto_extend_size_limit"} {
		s.ignore(k, "volumes are not extended automatically yet; extend with perch volumes extend")
	}
	// Names that [processes] lacks are refused by checkProcessNames.
	m.Processes, _, _ = s.strs("processes", `["app"]`)
	s.ignore("encrypted", "Perch does not encrypt volumes at rest; use the host's disk encryption")
	s.done()
	return m, ok
}

// sizeGB reads Fly's initial_size: a number of GB, or a string with a
// unit ("10gb", "10 GB", "500mb", rounded up to whole GB).
func sizeGB(v any) (int, error) {
	if n, ok := wholeNumber(v); ok {
		if n < 1 || n > 500 {
			return 0, fmt.Errorf("%d is not 1-500 GB", n)
		}
		return int(n), nil
	}
	str, isStr := v.(string)
	if !isStr {
		return 0, fmt.Errorf("is %s", describe(v))
	}
	s := strings.ToLower(strings.ReplaceAll(str, " ", ""))
	mult := 1.0
	for _, u := range []struct {
		suffix string
		gb     float64
	}{{"gib", 1}, {"gb", 1}, {"g", 1}, {"mib", 1.0 / 1024}, {"mb", 1.0 / 1024}, {"m", 1.0 / 1024}, {"tib", 1024}, {"tb", 1024}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.gb
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("%q is not a size", str)
	}
	gb := int(f*mult + 0.999999)
	if gb < 1 || gb > 500 {
		return 0, fmt.Errorf("%q is not 1-500 GB", str)
	}
	return gb, nil
}

// apiMounts is the machine config's mounts for a machine of group: the
// volume to be resolved by name (Mount.Name) in the machine's region by
// perch deploy.
func (c *Config) apiMounts(group string) []api.Mount {
	var out []api.Mount
	for _, m := range c.Mounts {
		if !m.appliesTo(group) {
			continue
		}
		// SizeGB carries initial_size to perch deploy, which makes the
		// volume; the server sets it to the volume's own size.
		out = append(out, api.Mount{Name: m.Source, Path: m.Destination, SizeGB: m.InitialSizeGB})
	}
	return out
}
