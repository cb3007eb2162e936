package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

func TestAuth(t *testing.T) {
	srv := startRegistry(t, t.TempDir())
	tests := []struct {
		name string
		set  func(*http.Request)
		want int
	}{
		{"no credentials", func(*http.Request) {}, http.StatusUnauthorized},
		{"wrong bearer", func(r *http.Request) { r.Header.Set("Authorization", "Bearer nope") }, http.StatusUnauthorized},
		{"empty bearer", func(r *http.Request) { r.Header.Set("Authorization", "Bearer ") }, http.StatusUnauthorized},
		{"wrong basic password", func(r *http.Request) { r.SetBasicAuth("x", "nope") }, http.StatusUnauthorized},
		{"token as basic user", func(r *http.Request) { r.SetBasicAuth(testToken, "") }, http.StatusUnauthorized},
		{"bearer", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testToken) }, http.StatusOK},
		{"basic, any user", func(r *http.Request) { r.SetBasicAuth("anyone", testToken) }, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/", nil)
			tt.set(req)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.want)
			}
			if tt.want != http.StatusUnauthorized {
				return
			}
			if got := resp.Header.Get("WWW-Authenticate"); got != `Basic realm="perch"` {
				t.Errorf("WWW-Authenticate = %q", got)
			}
			var body struct {
				Errors []struct{ Code, Message string }
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || len(body.Errors) != 1 || body.Errors[0].Code != "UNAUTHORIZED" {
				t.Errorf("body = %+v (%v), want one UNAUTHORIZED error", body, err)
			}
		})
	}
}

func TestPushWithWrongTokenRefused(t *testing.T) {
	srv := startRegistry(t, t.TempDir())
	img, _ := random.Image(512, 1)
	err := remote.Write(srv.ref(t, "app:v1"), img, withToken("wrong"))
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
		t.Fatalf("push with wrong token: err = %v, want HTTP 401", err)
	}
}

func TestImageSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	srv := startRegistry(t, dir)
	img, _ := random.Image(4096, 3)
	if err := remote.Write(srv.ref(t, "team/app:v1"), img, withToken(testToken)); err != nil {
		t.Fatalf("push: %v", err)
	}
	dg, _ := img.Digest()
	srv.Close()

	srv = startRegistry(t, dir)
	for _, ref := range []string{"team/app:v1", "team/app@" + dg.String()} {
		got, err := remote.Image(srv.ref(t, ref), withToken(testToken))
		if err != nil {
			t.Fatalf("after restart, %s: %v", ref, err)
		}
		if gd, _ := got.Digest(); gd != dg {
			t.Errorf("after restart, %s has digest %s, want %s", ref, gd, dg)
		}
		if err := validate.Image(got); err != nil {
			t.Errorf("after restart, %s: %v", ref, err)
		}
	}
}

func TestIndexSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	srv := startRegistry(t, dir)
	idx, _ := random.Index(1024, 2, 3)
	if err := remote.WriteIndex(srv.ref(t, "multi:latest"), idx, withToken(testToken)); err != nil {
		t.Fatalf("push index: %v", err)
	}
	want, _ := idx.Digest()

	// Two restarts: the second replays a journal the first run did not add to.
	for range 2 {
		srv.Close()
		srv = startRegistry(t, dir)
	}
	got, err := remote.Index(srv.ref(t, "multi:latest"), withToken(testToken))
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if gd, _ := got.Digest(); gd != want {
		t.Errorf("index digest %s, want %s", gd, want)
	}
	if err := validate.Index(got); err != nil {
		t.Errorf("after restart the index or a child is broken: %v", err)
	}
}

func TestTagDeleteSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	srv := startRegistry(t, dir)
	img, _ := random.Image(256, 1)
	if err := remote.Write(srv.ref(t, "app:old"), img, withToken(testToken)); err != nil {
		t.Fatal(err)
	}
	if err := remote.Delete(srv.ref(t, "app:old"), withToken(testToken)); err != nil {
		t.Fatalf("delete tag: %v", err)
	}
	srv.Close()

	srv = startRegistry(t, dir)
	_, err := remote.Head(srv.ref(t, "app:old"), withToken(testToken))
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusNotFound {
		t.Errorf("deleted tag after restart: err = %v, want 404", err)
	}
	dg, _ := img.Digest()
	if _, err := remote.Head(srv.ref(t, "app@"+dg.String()), withToken(testToken)); err != nil {
		t.Errorf("digest of the deleted tag after restart: %v", err)
	}
}

func TestManifestPutChecksDigest(t *testing.T) {
	srv := startRegistry(t, t.TempDir())
	img, _ := random.Image(256, 1)
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	other, _ := random.Image(256, 1)
	wrong, _ := other.Digest()

	req, _ := http.NewRequest(http.MethodPut, srv.URL+"/v2/app/manifests/"+wrong.String(), bytes.NewReader(raw))
	req.Header.Set("Content-Type", string(mt))
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("PUT under a digest that is not the body's: status %d, want 400", resp.StatusCode)
	}
}

func TestRepushDoesNotGrowJournal(t *testing.T) {
	dir := t.TempDir()
	srv := startRegistry(t, dir)
	img, _ := random.Image(256, 1)
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	for range 3 {
		req, _ := http.NewRequest(http.MethodPut, srv.URL+"/v2/app/manifests/v1", bytes.NewReader(raw))
		req.Header.Set("Content-Type", string(mt))
		req.SetBasicAuth("x", testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT manifest: status %d", resp.StatusCode)
		}
	}
	if n := streamMsgs(t); n != 1 {
		t.Errorf("the manifest stream has %d records after pushing one manifest three times, want 1", n)
	}
}

// streamMsgs counts the records on the test's manifest stream.
func streamMsgs(t *testing.T) uint64 {
	t.Helper()
	sh := testShared(t)
	s, err := sh.JS.Stream(context.Background(), sh.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}
