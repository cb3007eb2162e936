package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/perchhq/perch/internal/config"
)

// loadProject reads perch.toml and prints its warnings to warn.
func loadProject(path string, warn io.Writer) (*config.Config, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no %s here: create one with `perch launch`, or point to it with --config", path)
	}
	cfg, warnings, err := config.Load(path, config.LoadOptions{})
	for _, w := range warnings {
		fmt.Fprintf(warn, "warning: %s\n", w)
	}
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// appName is --app, else the app of perch.toml.
func (g *globals) appName() (string, error) {
	if g.app != "" {
		return g.app, nil
	}
	if _, err := os.Stat(g.configPath); errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("which app? pass --app NAME, or run where the app's %s is (or point to it with --config)", g.configPath)
	}
	cfg, err := loadProject(g.configPath, io.Discard)
	if err != nil {
		return "", err
	}
	if cfg.App == "" {
		return "", fmt.Errorf("%s has no app name: add app = \"NAME\" or pass --app", g.configPath)
	}
	return cfg.App, nil
}
