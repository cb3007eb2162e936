package image

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzUnpack applies fuzzed layers and checks that nothing outside the root
// ever changes. Inputs are a small script so mutations stay valid tars:
// one entry per line, "f NAME CONTENT", "d NAME", "l NAME TARGET",
// "h NAME TARGET", "p NAME" (a FIFO); "---" starts the next layer; "$O"
// stands for the absolute path of the directory around the root. An input
// starting with "TAR:" is one raw layer tar instead.
//
//	go test ./internal/image -run '^$' -fuzz FuzzUnpack -fuzztime 1m
func FuzzUnpack(f *testing.F) {
	for _, seed := range []string{
		"f ../escape x",
		"l evil $O\nf evil/escape x",
		"l evil $O\n---\nf evil/escape x\nh evil/h evil/escape",
		"l up ../../..\nd up/d\nf up/d/x y",
		"l a b/..\nl b /..\nl c a/../..\nf c/escape x",
		"l evil $O/secret\nf evil x",
		"l evil $O\nf evil/.wh.secret\nf evil/.wh..wh..opq",
		"d data\nf data/x 1\n---\nf data/.wh..wh..opq\nf data/y 2",
		"f bin/sh sh\nh bin/ls bin/sh\n---\nf bin/.wh.sh",
		"h stolen ../secret",
		"l loop loop\nf loop/x x",
		"p fifo\nl evil $O/dir\np evil/fifo",
		"l deep a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a\nl d2 deep/deep/deep/deep\nf d2/x x",
	} {
		f.Add([]byte(seed))
	}
	f.Add(append([]byte("TAR:"), sampleLayers(f)[1]...))

	f.Fuzz(func(t *testing.T, data []byte) {
		outside := t.TempDir()
		root := filepath.Join(outside, "root")
		for _, err := range []error{
			os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600),
			os.Mkdir(filepath.Join(outside, "dir"), 0o755),
			os.WriteFile(filepath.Join(outside, "dir", "file"), []byte("file"), 0o644),
			os.Symlink("../secret", filepath.Join(outside, "dir", "link")),
			os.Mkdir(root, 0o755),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
		before := outsideTree(t, outside)

		var layers [][]byte
		if raw, ok := bytes.CutPrefix(data, []byte("TAR:")); ok {
			layers = [][]byte{raw}
		} else if layers = scriptLayers(string(data), outside); layers == nil {
			return
		}
		_ = applyAll(t, root, layers...) // errors are fine; escapes are not

		if diff := cmp.Diff(before, outsideTree(t, outside)); diff != "" {
			t.Fatalf("layers changed files outside the root (-before +after):\n%s", diff)
		}
		if fi, err := os.Lstat(root); err != nil || !fi.IsDir() {
			t.Fatalf("the root is no longer a directory: %v", err)
		}
	})
}

// scriptLayers builds layer tars from a fuzz script, or nil if the tar
// writer refuses an entry.
func scriptLayers(script, outside string) [][]byte {
	script = strings.ReplaceAll(script, "$O", outside)
	var layers [][]byte
	for _, layer := range strings.Split(script, "\n---\n") {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, line := range strings.Split(layer, "\n") {
			op, rest, _ := strings.Cut(line, " ")
			name, arg, _ := strings.Cut(rest, " ")
			h := &tar.Header{Name: name, Mode: 0o755, ModTime: epoch}
			switch op {
			case "f":
				h.Typeflag, h.Size, h.Mode = tar.TypeReg, int64(len(arg)), 0o644
			case "d":
				h.Typeflag = tar.TypeDir
			case "l":
				h.Typeflag, h.Linkname = tar.TypeSymlink, arg
			case "h":
				h.Typeflag, h.Linkname = tar.TypeLink, arg
			case "p":
				h.Typeflag = tar.TypeFifo
			default:
				continue
			}
			if tw.WriteHeader(h) != nil {
				return nil
			}
			if h.Typeflag == tar.TypeReg {
				if _, err := tw.Write([]byte(arg)); err != nil {
					return nil
				}
			}
		}
		if tw.Close() != nil {
			return nil
		}
		layers = append(layers, buf.Bytes())
	}
	return layers
}
