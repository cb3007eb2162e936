package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// credentials is what `perch auth login` stores.
type credentials struct {
	APIURL string `json:"api_url"`
	Token  string `json:"token"`
}

// Environment variables that override the stored login (tests use them).
const (
	envAPIURL   = "PERCH_API_URL"
	envAPIToken = "PERCH_API_TOKEN"
	envDevDir   = "PERCH_DEV_DIR"
)

// credentialsPath is $XDG_CONFIG_HOME/perch/config.json, or
// ~/.config/perch/config.json.
func credentialsPath() (string, error) {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("finding the config directory: %w (set XDG_CONFIG_HOME)", err)
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "perch", "config.json"), nil
}

// loadCredentials reads the stored login; a missing file is not an error
// and gives empty credentials.
func loadCredentials(path string) (credentials, error) {
	var c credentials
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("reading login: %w", err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("reading login: %s is not valid JSON (%w); run `perch auth login` again", path, err)
	}
	return c, nil
}

// saveCredentials writes the login readable by its owner only, since the
// token is a secret; the rename makes the write all-or-nothing.
func saveCredentials(path string, c credentials) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("saving login: %w", err)
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("saving login: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".config-*.json")
	if err != nil {
		return fmt.Errorf("saving login: %w", err)
	}
	defer os.Remove(f.Name())
	// CreateTemp makes the file 0600 already; Chmod says so and survives a
	// change of that default.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("saving login: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("saving login: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("saving login: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("saving login: %w", err)
	}
	return nil
}

// currentCredentials is the stored login with PERCH_API_URL and
// PERCH_API_TOKEN taking precedence, each on its own.
func currentCredentials() (credentials, error) {
	path, err := credentialsPath()
	if err != nil {
		return credentials{}, err
	}
	c, err := loadCredentials(path)
	if err != nil {
		return c, err
	}
	if v := os.Getenv(envAPIURL); v != "" {
		c.APIURL = v
	}
	if v := os.Getenv(envAPIToken); v != "" {
		c.Token = v
	}
	if c.APIURL == "" {
		return c, errors.New("not logged in: run `perch auth login` (or set PERCH_API_URL and PERCH_API_TOKEN)")
	}
	return c, nil
}

// devWorld is the part of a dev world's world.json (written by `perch dev
// up`) that the CLI uses.
type devWorld struct {
	APIURL string `json:"api_url"`
	// Servers are the world's servers (perch dev up --servers 3): the
	// CLI fails over between their API URLs.
	Servers  []devWorldServer `json:"servers"`
	Token    string           `json:"token"`
	Registry string           `json:"registry"`
	Regions  []devWorldRegion `json:"regions"`
}

type devWorldServer struct {
	APIURL string `json:"api_url"`
}

// apiURLs is every server's API URL, comma-separated (the first, api_url,
// alone in a world.json without servers).
func (w *devWorld) apiURLs() string {
	var urls []string
	for _, s := range w.Servers {
		if s.APIURL != "" {
			urls = append(urls, s.APIURL)
		}
	}
	if len(urls) == 0 {
		return w.APIURL
	}
	return strings.Join(urls, ",")
}

type devWorldRegion struct {
	Code     string `json:"code"`
	EdgeAddr string `json:"edge_addr"`
}

// defaultDevDir is where `perch dev up` puts its world by default:
// $PERCH_DEV_DIR, $XDG_STATE_HOME/perch/dev or ~/.local/state/perch/dev.
func defaultDevDir() (string, error) {
	if d := os.Getenv(envDevDir); d != "" {
		return d, nil
	}
	dir := os.Getenv("XDG_STATE_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("finding the dev world: %w (set PERCH_DEV_DIR)", err)
		}
		dir = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(dir, "perch", "dev"), nil
}

// readDevWorld reads dir/world.json.
func readDevWorld(dir string) (*devWorld, error) {
	path := filepath.Join(dir, "world.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no dev world at %s: start one with `perch dev up`, or log in to a server with `perch auth login --api URL --token TOKEN`", path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading dev world: %w", err)
	}
	var w devWorld
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("reading dev world: %s is not valid JSON: %w", path, err)
	}
	if w.APIURL == "" || w.Token == "" {
		return nil, fmt.Errorf("reading dev world: %s has no api_url or token; restart it with `perch dev up`", path)
	}
	return &w, nil
}
