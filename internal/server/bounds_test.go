package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/api"
)

// TestRequestBodyLimit: an API body over 1 MiB is answered 413 with a
// JSON error saying the limit, whether its length is declared or it is
// streamed; the registry's blob uploads are not held to it.
func TestRequestBodyLimit(t *testing.T) {
	s := startServer(t, t.TempDir())
	big := `{"app_name":"` + strings.Repeat("a", 2<<20) + `"}`
	for _, tc := range []struct {
		name string
		body io.Reader
	}{
		{"declared", strings.NewReader(big)},
		{"streamed", io.MultiReader(strings.NewReader(big))}, // no length: chunked
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := apiRequest(t, s, http.MethodPost, "/v1/apps", tc.body)
			msg := apiErrorOf(t, resp)
			if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "larger than 1048576 bytes (1 MiB)") {
				t.Errorf("POST /v1/apps with 2 MiB: %s %q, want 413 saying the limit", resp.Status, msg)
			}
		})
	}
	resp := apiRequest(t, s, http.MethodPost, "/v1/hosts", strings.NewReader(strings.Repeat(" ", 2<<20)))
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("POST /v1/hosts with 2 MiB: %s, want 413", resp.Status)
	}

	// A 2 MiB blob goes through the registry.
	resp = apiRequest(t, s, http.MethodPost, "/v2/app/blobs/uploads/", nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start an upload: %s", resp.Status)
	}
	resp = apiRequest(t, s, http.MethodPatch, resp.Header.Get("Location"), strings.NewReader(big))
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("PATCH of a 2 MiB blob chunk: %s, want 202", resp.Status)
	}
}

// TestIDsValidated: host and machine ids that are not lowercase letters,
// digits and hyphens are refused with 400 saying what is allowed, in
// registration and in API paths.
func TestIDsValidated(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	for _, id := range []string{"../etc", "iad-1.x", "a*", "A", "-x", strings.Repeat("a", 64), "a>b"} {
		_, err := s.c.RegisterHost(ctx, api.Host{ID: id, Region: "iad", CPUs: 2, MemoryMB: 1024})
		wantStatus(t, err, 400, "host id")
		wantStatus(t, err, 400, "lowercase letters, digits and hyphens")
	}
	if _, err := s.c.RegisterHost(ctx, api.Host{ID: "iad-0123abcd", Region: "iad", CPUs: 2, MemoryMB: 1024}); err != nil {
		t.Fatalf("a valid host id: %v", err)
	}
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"..%2Fetc", "a.b", "a%2A", "x%3E", "UP"} {
		resp := apiRequest(t, s, http.MethodGet, "/v1/apps/web/machines/"+id, nil)
		msg := apiErrorOf(t, resp)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(msg, "machine id") || !strings.Contains(msg, "lowercase letters") {
			t.Errorf("GET machine %s: %s %q, want 400 saying what a machine id may hold", id, resp.Status, msg)
		}
	}
	resp := apiRequest(t, s, http.MethodGet, "/v1/apps/web/machines/0123456789abcd", nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET a valid, missing machine id: %s, want 404", resp.Status)
	}
}

func apiRequest(t *testing.T, s *testServer, method, path string, body io.Reader) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, s.URL()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(path, "/v2/") {
		req.SetBasicAuth("x", s.AdminToken()) // as crane logs in
	} else {
		req.Header.Set("Authorization", "Bearer "+s.AdminToken())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// apiErrorOf reads the API's JSON error from resp.
func apiErrorOf(t *testing.T, resp *http.Response) string {
	t.Helper()
	var e api.Error
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &e); err != nil {
		t.Errorf("%s: body %q is not a JSON error: %v", resp.Status, b, err)
	}
	return e.Error
}
