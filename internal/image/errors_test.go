package image

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/perchhq/perch/internal/registry"
)

func TestPullNotFound(t *testing.T) {
	reg := startCountingRegistry(t)
	reg.push(t, "app:v1", oneFileImage(t, "f", "x"))
	s := New(t.TempDir(), testLogger(t))
	for _, tt := range []struct{ ref, want string }{
		{reg.Host + "/app:v2", `tag "v2" of repository "app" does not exist in registry ` + reg.Host},
		{reg.Host + "/nope:v1", `tag "v1" of repository "nope" does not exist`},
		{reg.Host + "/app@sha256:" + strings.Repeat("ab", 32), "digest sha256:abab"},
	} {
		_, err := s.Pull(context.Background(), tt.ref, Options{})
		if !errors.Is(err, ErrImageNotFound) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("pull %s: %v; want ErrImageNotFound saying %q", tt.ref, err, tt.want)
		}
	}
}

// TestPullFromPerchRegistry pulls from the control plane's own registry,
// which takes the Perch token and refuses anything else.
func TestPullFromPerchRegistry(t *testing.T) {
	const token = "perch_tok"
	r, err := registry.NewStandalone(t.TempDir(), registry.TokenFunc(func(tok string) bool { return tok == token }), registry.Options{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	reg := serveCounting(t, r)
	ref := reg.push(t, "app:v1", oneFileImage(t, "hello", "world"),
		remote.WithAuth(&authn.Basic{Username: "x", Password: token}))
	s := New(t.TempDir(), testLogger(t))

	for _, tok := range []string{"", "wrong"} {
		_, err := s.Pull(context.Background(), ref, Options{Tokens: map[string]string{reg.Host: tok}})
		if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "perch auth login") {
			t.Errorf("pull with token %q: %v; want ErrUnauthorized pointing at perch auth login", tok, err)
		}
	}
	// A token for another registry is not sent here.
	_, err = s.Pull(context.Background(), ref, Options{Tokens: map[string]string{"elsewhere.example:5000": token}})
	if !errors.Is(err, ErrUnauthorized) {
		t.Errorf("pull with a token for another host: %v; want ErrUnauthorized", err)
	}

	img, err := s.Pull(context.Background(), ref, Options{Tokens: map[string]string{reg.Host: token}})
	if err != nil {
		t.Fatalf("pull with the token: %v", err)
	}
	if got := imageTree(t, img)["hello"]; got != "file 0644 world" {
		t.Errorf("hello = %q", got)
	}
}

func TestPullUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	s := New(t.TempDir(), testLogger(t))
	_, err = s.Pull(context.Background(), addr+"/app:v1", Options{})
	if !errors.Is(err, ErrRegistryUnreachable) || !strings.Contains(err.Error(), "cannot reach registry "+addr) {
		t.Errorf("pull from a closed port: %v; want ErrRegistryUnreachable naming %s", err, addr)
	}
}

func TestPullBadReference(t *testing.T) {
	s := New(t.TempDir(), testLogger(t))
	_, err := s.Pull(context.Background(), "UPPER/Case::tag", Options{})
	if err == nil || !strings.Contains(err.Error(), "not an image reference") {
		t.Errorf("Pull of a malformed reference: %v", err)
	}
}

func TestPullMissingLayer(t *testing.T) {
	reg := startCountingRegistry(t)
	img := oneFileImage(t, "f", "x")
	ref := reg.push(t, "app:v1", img)
	layers, _ := img.Layers()
	dg, _ := layers[0].Digest()
	req, _ := http.NewRequest(http.MethodDelete, reg.URL+"/v2/app/blobs/"+dg.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete blob: status %d", resp.StatusCode)
	}

	_, err = New(t.TempDir(), testLogger(t)).Pull(context.Background(), ref, Options{})
	if err == nil || !strings.Contains(err.Error(), "lacks part of the image") {
		t.Errorf("pull with a layer missing from the registry: %v; want an error saying so", err)
	}
}
