package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The JSON shapes below are Fly's Machines API's (superfly/fly-go
// machine_types.go), so that Fly's own clients decode our answers and
// their requests decode here.

// ImageRef is an image reference split into its parts, as Fly shows a
// machine's image_ref.
type ImageRef struct {
	Registry   string            `json:"registry,omitempty"`
	Repository string            `json:"repository,omitempty"`
	Tag        string            `json:"tag,omitempty"`
	Digest     string            `json:"digest,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
}

// ParseImageRef splits ref ("registry/repo:tag@sha256:…"); the registry is
// the first path element when it looks like a host (has a dot or a port,
// or is localhost), as Docker reads it.
func ParseImageRef(ref string) ImageRef {
	var r ImageRef
	if name, dg, ok := strings.Cut(ref, "@"); ok {
		ref, r.Digest = name, dg
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref, r.Tag = ref[:i], ref[i+1:]
	}
	if first, rest, ok := strings.Cut(ref, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		r.Registry, ref = first, rest
	}
	r.Repository = ref
	return r
}

// IsZero reports whether no image is named.
func (r ImageRef) IsZero() bool { return r.Repository == "" }

// Ref is the reference that names exactly this image: by digest when
// there is one (what a rollback deploys), else by tag.
func (r ImageRef) Ref() string {
	if r.IsZero() {
		return ""
	}
	s := r.Repository
	if r.Registry != "" {
		s = r.Registry + "/" + s
	}
	if r.Digest != "" {
		return s + "@" + r.Digest
	}
	if r.Tag != "" {
		return s + ":" + r.Tag
	}
	return s
}

// Time is the event's time.
func (e Event) Time() time.Time { return time.UnixMilli(e.Timestamp) }

// UnmarshalJSON also reads the RFC 3339 timestamps that hosts before the
// change to Fly's milliseconds wrote into stored statuses.
func (e *Event) UnmarshalJSON(b []byte) error {
	type plain Event
	var v struct {
		plain
		Timestamp json.RawMessage `json:"timestamp"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*e = Event(v.plain)
	ts := bytes.TrimSpace(v.Timestamp)
	switch {
	case len(ts) == 0 || bytes.Equal(ts, []byte("null")):
	case ts[0] == '"':
		var t time.Time
		if err := json.Unmarshal(ts, &t); err != nil {
			return fmt.Errorf("event timestamp: %w", err)
		}
		e.Timestamp = t.UnixMilli()
	default:
		if err := json.Unmarshal(ts, &e.Timestamp); err != nil {
			return fmt.Errorf("event timestamp: %w", err)
		}
	}
	return nil
}

// CheckHeaders are an HTTP check's request headers. Fly writes them as a
// list of {name, values}; Perch's first API took an object of name to
// values, which is still read.
type CheckHeaders map[string][]string

type checkHeader struct {
	Name   string   `json:"name"`
	Values []string `json:"values"`
}

// MarshalJSON writes Fly's list, sorted by name.
func (h CheckHeaders) MarshalJSON() ([]byte, error) {
	if h == nil {
		return []byte("null"), nil
	}
	out := make([]checkHeader, 0, len(h))
	for name, vals := range h {
		out = append(out, checkHeader{name, vals})
	}
	slices.SortFunc(out, func(a, b checkHeader) int { return strings.Compare(a.Name, b.Name) })
	return json.Marshal(out)
}

// UnmarshalJSON reads Fly's list or an object of name to values.
func (h *CheckHeaders) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		*h = nil
		return nil
	}
	if len(b) > 0 && b[0] == '{' {
		var m map[string][]string
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		*h = m
		return nil
	}
	var list []checkHeader
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("headers: want a list of {\"name\", \"values\"}: %w", err)
	}
	m := make(CheckHeaders, len(list))
	for _, x := range list {
		m[x.Name] = append(m[x.Name], x.Values...)
	}
	*h = m
	return nil
}
