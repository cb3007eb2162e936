package config

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// decoder walks the document go-toml decoded into maps and collects errors
// and warnings, each at the line of the key or value it is about.
type decoder struct {
	file  string
	lines *lineIndex
	opts  LoadOptions
	warns []Warning
	errs  []*Error
	ports map[string]path // "tcp/80" -> the service that claimed it
}

func (d *decoder) errorf(p path, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: d.lines.line(p), Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) warnf(p path, format string, args ...any) {
	d.warns = append(d.warns, Warning{File: d.file, Line: d.lines.line(p), Msg: fmt.Sprintf(format, args...)})
}

// section is one table of the document. Its getters record which keys the
// code knows, so done can warn about the others and suggest a known one.
type section struct {
	d     *decoder
	p     path
	m     map[string]any
	known []string
}

func (d *decoder) section(p path, m map[string]any) *section {
	return &section{d: d, p: p, m: m}
}

func (s *section) get(k string) (any, path, bool) {
	s.known = append(s.known, k)
	v, ok := s.m[k]
	return v, s.p.key(k), ok
}

// accept marks Fly keys Perch reads but does nothing with, without warning.
func (s *section) accept(keys ...string) { s.known = append(s.known, keys...) }

// ignore warns that a Fly key or table is not supported yet, if present.
func (s *section) ignore(k, why string) {
	v, p, ok := s.get(k)
	if !ok {
		return
	}
	what := s.describeKey(k)
	switch v := v.(type) {
	case map[string]any:
		what = p.section()
	case []any:
		if len(v) > 0 {
			if _, isTable := v[0].(map[string]any); isTable {
				what = p.index(0).section()
			}
		}
	}
	s.d.warnf(p, "%s ignored: %s", what, why)
}

func (s *section) describeKey(k string) string {
	if sec := s.p.section(); sec != "" {
		return fmt.Sprintf("%q in %s", k, sec)
	}
	return fmt.Sprintf("%q", k)
}

func (s *section) done() {
	keys := make([]string, 0, len(s.m))
	for k := range s.m {
		if !slices.Contains(s.known, k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		msg := fmt.Sprintf("unknown key %s, ignored", s.describeKey(k))
		if near := closest(k, s.known); near != "" {
			msg += fmt.Sprintf("; did you mean %q?", near)
		}
		s.d.warnf(s.p.key(k), "%s", msg)
	}
}

// closest is the known key within two edits of k, for typo hints.
func closest(k string, known []string) string {
	best, bestDist := "", 3
	for _, c := range known {
		if d := editDistance(k, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// sub is the table under key k, or nil if there is none.
func (s *section) sub(k string) *section {
	v, p, ok := s.get(k)
	if !ok {
		return nil
	}
	m, isTable := v.(map[string]any)
	if !isTable {
		s.d.errorf(p, "%s must be a table, e.g. %s, got %s", k, p.section(), describe(v))
		return nil
	}
	return s.d.section(p, m)
}

// subs are the tables of the array of tables under k. Fly accepts a single
// table where an array of tables is expected ([vm] for [[vm]]), so do we.
func (s *section) subs(k string) []*section {
	v, p, ok := s.get(k)
	if !ok {
		return nil
	}
	switch v := v.(type) {
	case map[string]any:
		return []*section{s.d.section(p, v)}
	case []any:
		var out []*section
		for i, el := range v {
			m, isTable := el.(map[string]any)
			if !isTable {
				s.d.errorf(p.index(i), "each entry of %s must be a table, got %s", k, describe(el))
				continue
			}
			out = append(out, s.d.section(p.index(i), m))
		}
		return out
	}
	s.d.errorf(p, "%s must be a list of tables, e.g. [[%s]], got %s", k, k, describe(v))
	return nil
}

func (s *section) str(k string) (string, path, bool) {
	v, p, ok := s.get(k)
	if !ok {
		return "", p, false
	}
	str, isStr := v.(string)
	if !isStr {
		s.d.errorf(p, "%s must be a string in quotes, got %s", k, describe(v))
		return "", p, false
	}
	return str, p, true
}

// integer reads a whole number. As flyctl does, it also takes one written
// as a string (port = "80") or as a whole decimal (soft_limit = 20.0).
func (s *section) integer(k string) (int, path, bool) {
	v, p, ok := s.get(k)
	if !ok {
		return 0, p, false
	}
	n, isInt := wholeNumber(v)
	if !isInt {
		s.d.errorf(p, "%s must be a whole number, got %s", k, describe(v))
		return 0, p, false
	}
	// Beyond this no limit Perch checks is meaningful, and int may be 32 bits.
	if n > math.MaxInt32 || n < math.MinInt32 {
		s.d.errorf(p, "%s %d is out of range", k, n)
		return 0, p, false
	}
	return int(n), p, true
}

// wholeNumber is v as an integer if it is one, or a string or decimal
// that is exactly one.
func wholeNumber(v any) (int64, bool) {
	switch v := v.(type) {
	case int64:
		return v, true
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
			return int64(v), true
		}
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		return n, err == nil
	}
	return 0, false
}

// port reads a port number, which must be 1-65535.
func (s *section) port(k string) (int, path, bool) {
	n, p, ok := s.integer(k)
	if ok && (n < 1 || n > 65535) {
		s.d.errorf(p, "%s must be 1-65535, got %d", k, n)
		return 0, p, false
	}
	return n, p, ok
}

// count reads a number that must be at least least.
func (s *section) count(k string, least int) (int, path, bool) {
	n, p, ok := s.integer(k)
	if ok && n < least {
		s.d.errorf(p, "%s must be at least %d, got %d", k, least, n)
		return 0, p, false
	}
	return n, p, ok
}

func (s *section) boolean(k string) (bool, path, bool) {
	v, p, ok := s.get(k)
	if !ok {
		return false, p, false
	}
	b, isBool := v.(bool)
	if !isBool {
		s.d.errorf(p, "%s must be true or false, got %s", k, describe(v))
		return false, p, false
	}
	return b, p, true
}

// strs reads a list of strings; example is shown when it is something else.
func (s *section) strs(k, example string) ([]string, path, bool) {
	v, p, ok := s.get(k)
	if !ok {
		return nil, p, false
	}
	list, isList := v.([]any)
	if !isList {
		s.d.errorf(p, "%s must be a list of strings, e.g. %s = %s, got %s", k, k, example, describe(v))
		return nil, p, false
	}
	var out []string // nil when empty, as when the key is left out
	for i, el := range list {
		str, isStr := el.(string)
		if !isStr {
			s.d.errorf(p.index(i), "%s must be a list of strings, e.g. %s = %s, got %s in it", k, k, example, describe(el))
			return nil, p, false
		}
		out = append(out, str)
	}
	return out, p, true
}

// oneOf reads a string that must be one of choices.
func (s *section) oneOf(k string, choices ...string) (string, path, bool) {
	str, p, ok := s.str(k)
	if ok && !slices.Contains(choices, str) {
		s.d.errorf(p, "%s %q is not one of %s", k, str, quoteList(choices))
		return "", p, false
	}
	return str, p, ok
}

func quoteList(choices []string) string {
	q := make([]string, len(choices))
	for i, c := range choices {
		q[i] = fmt.Sprintf("%q", c)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// describe shows a value the way a user would recognise it from the file.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("%q", v)
	case int64, bool:
		return fmt.Sprint(v)
	case float64:
		return fmt.Sprintf("%v (a decimal number)", v)
	case []any:
		return "a list"
	case map[string]any:
		return "a table"
	case time.Time, toml.LocalDate, toml.LocalTime, toml.LocalDateTime:
		return "a date or time"
	}
	return fmt.Sprintf("%v", v)
}
