package main

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOnePackageDocPerPackage keeps the habit STYLE.md asks for: every
// package says what it is for in exactly one doc comment.
func TestOnePackageDocPerPackage(t *testing.T) {
	root := filepath.Join("..", "..")
	dirs := map[string]bool{}
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") && p != root {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			dirs[filepath.Dir(p)] = true
		}
		return nil
	})
	if len(dirs) < 10 {
		t.Fatalf("found only %d packages under %s", len(dirs), root)
	}
	for dir := range dirs {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		var docs []string
		for _, fname := range files {
			if strings.HasSuffix(fname, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), fname, nil, parser.ParseComments|parser.PackageClauseOnly)
			if err != nil {
				t.Fatal(err)
			}
			if f.Doc != nil {
				docs = append(docs, filepath.Base(fname))
			}
		}
		if len(docs) != 1 {
			t.Errorf("package in %s has %d package doc comments (%v), want exactly one", dir, len(docs), docs)
		}
	}
}
