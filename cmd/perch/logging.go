package main

import (
	"log/slog"
	"os"
	"strings"
)

// newLogger logs text to stderr at the level named by PERCH_LOG (info by
// default; debug, warn, error).
func newLogger() *slog.Logger {
	lvl := slog.LevelInfo
	switch strings.ToLower(os.Getenv("PERCH_LOG")) {
	case "debug":
		lvl = slog.LevelDebug
	case "warn":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}
