package registry

import (
	"net/http/httptest"
	"testing"
)

// TestAccessOf: the repository a request touches is read from its path,
// names with slashes included, so that the Authorizer checks the right one.
func TestAccessOf(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		want         Access
	}{
		{"GET", "/v2/", Access{}},
		{"GET", "/v2/_catalog", Access{Catalog: true}},
		{"GET", "/v2/web/manifests/v1", Access{Repo: "web"}},
		{"HEAD", "/v2/acme/web/blobs/sha256:ab", Access{Repo: "acme/web", Blob: true}},
		{"PUT", "/v2/web/manifests/v1", Access{Repo: "web", Push: true}},
		{"POST", "/v2/a/b/c/blobs/uploads/", Access{Repo: "a/b/c", Push: true, Blob: true}},
		{"PATCH", "/v2/web/blobs/uploads/0f3c", Access{Repo: "web", Push: true, Blob: true}},
		{"GET", "/v2/web/tags/list", Access{Repo: "web"}},
		{"GET", "/v2/x/manifests/y/manifests/latest", Access{Repo: "x/manifests/y"}},
		{"DELETE", "/v2/web/manifests/sha256:ab", Access{Repo: "web", Push: true}},
	} {
		if got := accessOf(httptest.NewRequest(tc.method, tc.path, nil)); got != tc.want {
			t.Errorf("%s %s: %+v; want %+v", tc.method, tc.path, got, tc.want)
		}
	}
}
