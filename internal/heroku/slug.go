package heroku

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

// ChecksumError is a slug whose bytes do not match the checksum Heroku
// gave for it.
type ChecksumError struct {
	SlugID     string
	Want, Got  string
	Downloaded int64
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("slug %s: checksum mismatch: Heroku says %s, the %d bytes downloaded are SHA256:%s; the download was corrupted or the slug changed: run the command again, and if it persists rebuild the slug on Heroku (heroku builds:create, or push again)", e.SlugID, e.Want, e.Downloaded, e.Got)
}

// ErrNoChecksum is a slug Heroku gave no checksum for: it is used
// unverified (DownloadSlug returns it beside the path).
var ErrNoChecksum = errors.New("heroku gave no checksum for the slug")

// DownloadSlug fetches the slug's blob into a new file in dir, checking
// its SHA-256 against the slug's checksum before anything uses it. A
// mismatch removes the file and is a *ChecksumError. A slug without a
// checksum is downloaded and returned with ErrNoChecksum.
func DownloadSlug(ctx context.Context, hc *http.Client, s *Slug, dir string) (string, error) {
	if s.Blob.URL == "" {
		return "", fmt.Errorf("slug %s has no blob URL: it was never uploaded; rebuild the app on Heroku", s.ID)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Blob.URL, nil)
	if err != nil {
		return "", fmt.Errorf("slug %s: %w", s.ID, err)
	}
	// The blob URL is pre-signed (S3): no Heroku token goes with it.
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("slug %s: download: %w", s.ID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("slug %s: download: %s (the blob URL may have expired: run the command again)", s.ID, resp.Status)
	}
	f, err := os.CreateTemp(dir, "slug-*.tgz")
	if err != nil {
		return "", fmt.Errorf("slug %s: %w", s.ID, err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("slug %s: download: %w", s.ID, err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if s.Checksum == nil || *s.Checksum == "" {
		return f.Name(), ErrNoChecksum
	}
	want := *s.Checksum
	algo, sum, ok := strings.Cut(want, ":")
	if !ok || !strings.EqualFold(algo, "SHA256") {
		os.Remove(f.Name())
		return "", fmt.Errorf("slug %s: checksum %q is not SHA256:<hex>, the only form Heroku documents", s.ID, want)
	}
	if !strings.EqualFold(sum, got) {
		os.Remove(f.Name())
		return "", &ChecksumError{SlugID: s.ID, Want: want, Got: got, Downloaded: n}
	}
	return f.Name(), nil
}
