package api

import (
	"encoding/json"
	"testing"
	"time"
)

func TestParseImageRef(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ImageRef
		ref  string
	}{
		{"nginx", ImageRef{Repository: "nginx"}, "nginx"},
		{"nginx:1.25", ImageRef{Repository: "nginx", Tag: "1.25"}, "nginx:1.25"},
		{"localhost:5000/acme/web:v1@sha256:ab", ImageRef{Registry: "localhost:5000", Repository: "acme/web", Tag: "v1", Digest: "sha256:ab"}, "localhost:5000/acme/web@sha256:ab"},
		{"127.0.0.1:4280/web@sha256:cd", ImageRef{Registry: "127.0.0.1:4280", Repository: "web", Digest: "sha256:cd"}, "127.0.0.1:4280/web@sha256:cd"},
		{"acme/web:v2", ImageRef{Repository: "acme/web", Tag: "v2"}, "acme/web:v2"},
		{"registry.fly.io/app:deployment-1", ImageRef{Registry: "registry.fly.io", Repository: "app", Tag: "deployment-1"}, "registry.fly.io/app:deployment-1"},
	} {
		got := ParseImageRef(tc.in)
		if got.Registry != tc.want.Registry || got.Repository != tc.want.Repository || got.Tag != tc.want.Tag || got.Digest != tc.want.Digest {
			t.Errorf("ParseImageRef(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if got.Ref() != tc.ref {
			t.Errorf("ParseImageRef(%q).Ref() = %q, want %q", tc.in, got.Ref(), tc.ref)
		}
	}
}

// TestEventReadsOldTimestamps: statuses stored by hosts before events
// used Fly's milliseconds still decode, to the same instant.
func TestEventReadsOldTimestamps(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 250e6, time.UTC)
	for _, in := range []string{
		`{"type":"start","status":"started","source":"host","timestamp":"2026-12-01T10:00:00.25Z"}`,
		`{"type":"start","status":"started","source":"host","timestamp":1796119200250}`,
	} {
		var e Event
		if err := json.Unmarshal([]byte(in), &e); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if !e.Time().Equal(at) || e.Type != "start" || e.Status != "started" {
			t.Errorf("%s decoded as %+v (%s), want %s", in, e, e.Time(), at)
		}
	}
	var e Event
	if err := json.Unmarshal([]byte(`{"timestamp":"yesterday"}`), &e); err == nil {
		t.Error("a timestamp that is no time decoded")
	}
}

// TestCheckHeaders: written as Fly's list; read from the list or from
// Perch's first shape, an object.
func TestCheckHeaders(t *testing.T) {
	b, err := json.Marshal(Check{Type: "http", Headers: CheckHeaders{"X-B": {"2"}, "X-A": {"1", "x"}}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"type":"http","headers":[{"name":"X-A","values":["1","x"]},{"name":"X-B","values":["2"]}]}`; string(b) != want {
		t.Errorf("marshalled %s, want %s", b, want)
	}
	for _, in := range []string{string(b), `{"type":"http","headers":{"X-A":["1","x"],"X-B":["2"]}}`} {
		var c Check
		if err := json.Unmarshal([]byte(in), &c); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if len(c.Headers) != 2 || c.Headers["X-A"][1] != "x" || c.Headers["X-B"][0] != "2" {
			t.Errorf("%s decoded headers %v", in, c.Headers)
		}
	}
}
