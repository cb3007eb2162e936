package image

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// sampleLayers exercises what real images do across layers: whiteouts of
// files and directories, opaque directories (marker before and after the
// layer's own entries), writes through a symlinked directory, hard links,
// replaced types, setuid bits and owners.
func sampleLayers(t testing.TB) [][]byte {
	return [][]byte{
		layerTar(t,
			dir("./", 0o755),
			dir("etc/", 0o755),
			file("etc/passwd", "root:x:0:0", 0o644),
			file("etc/hosts", "127.0.0.1 localhost", 0o644),
			dir("app/", 0o755),
			dir("app/old/", 0o700),
			file("app/old/a", "a", 0o644),
			file("app/keep", "k", 0o644),
			dir("data/", 0o755),
			file("data/x", "x", 0o600),
			dir("data/sub/", 0o755),
			file("data/sub/y", "y", 0o644),
			file("bin/sh", "shell", 0o755), // parent not listed
			hardlink("bin/ls", "bin/sh"),
			file("bin/su", "su", 0o4755),
			symlink("lib", "usr/lib"),
			file("usr/lib/libc.so", "c", 0o644),
			owned(file("home/user/notes", "hi", 0o640), 1000, 1000),
			file("srv/a/x", "x", 0o644),
			file("srv/b", "b", 0o644),
		),
		layerTar(t,
			whiteout("etc", "hosts"),
			whiteout("app", "old"),
			dir("data/", 0o750),
			opaque("data"), // marker first, then this layer's content
			file("data/new", "n", 0o644),
			file("lib/libextra.so", "e", 0o644), // through the symlink
			dir("app/keep/", 0o755),             // a directory replaces a file
			file("app/keep/inner", "i", 0o644),
		),
		layerTar(t,
			dir("usr/", 0o755),
			file("usr/lib/fresh.so", "f", 0o644),
			opaque("usr"),                        // marker after this layer's content in usr
			symlink("etc/passwd", "/run/passwd"), // a symlink replaces a file
			opaque("srv/a"),                      // no entry for srv/a: the marker implies it
			opaque("srv"),                        // keeps srv/a, which this layer made opaque
			opaque("fresh"),                      // makes the directory
		),
	}
}

func sampleTree() map[string]string {
	return map[string]string{
		"etc":              "dir 0755",
		"etc/passwd":       "symlink -> /run/passwd",
		"app":              "dir 0755",
		"app/keep":         "dir 0755",
		"app/keep/inner":   "file 0644 i",
		"data":             "dir 0750",
		"data/new":         "file 0644 n",
		"bin":              "dir 0755",
		"bin/sh":           "file 0755 shell",
		"bin/ls":           "file 0755 shell",
		"bin/su":           "file 4755 su",
		"lib":              "symlink -> usr/lib",
		"usr":              "dir 0755",
		"usr/lib":          "dir 0755",
		"usr/lib/fresh.so": "file 0644 f",
		"home":             "dir 0755",
		"home/user":        "dir 0755",
		"home/user/notes":  "file 0640 hi 1000:1000",
		"srv":              "dir 0755",
		"srv/a":            "dir 0755",
		"fresh":            "dir 0755",
	}
}

func TestApplyLayers(t *testing.T) {
	root := t.TempDir()
	if err := applyAll(t, root, sampleLayers(t)...); err != nil {
		t.Fatal(err)
	}
	want := sampleTree()
	if os.Geteuid() != 0 {
		want["home/user/notes"] = "file 0640 hi"
	}
	if diff := cmp.Diff(want, tree(t, root)); diff != "" {
		t.Errorf("tree (-want +got):\n%s", diff)
	}
	sh, _ := os.Stat(filepath.Join(root, "bin/sh"))
	ls, _ := os.Stat(filepath.Join(root, "bin/ls"))
	if !os.SameFile(sh, ls) {
		t.Errorf("bin/ls is not a hard link to bin/sh")
	}
}

// TestApplyStaysInRoot feeds layers that try to reach outside the root,
// directly or through symlinks, and checks nothing outside changed.
func TestApplyStaysInRoot(t *testing.T) {
	tests := []struct {
		name    string
		layers  func(outside string) []ent // outside: absolute path of the directory around the root
		wantErr string                     // "" for layers that are legal but must stay inside
		inRoot  string                     // a path that must exist inside the root afterwards
	}{
		{name: "dot-dot file", layers: func(string) []ent { return []ent{file("../escape", "x", 0o644)} }, wantErr: "outside the root"},
		{name: "dot-dot inside path", layers: func(string) []ent { return []ent{file("a/../../escape", "x", 0o644)} }, wantErr: "outside the root"},
		{name: "absolute name", layers: func(string) []ent { return []ent{file("/abs/file", "x", 0o644)} }, inRoot: "abs/file"},
		{name: "write through absolute symlink", layers: func(o string) []ent {
			return []ent{symlink("evil", o), file("evil/escape", "x", 0o644)}
		}, inRoot: "{outside}/escape"},
		{name: "write through relative symlink", layers: func(string) []ent {
			return []ent{symlink("up", "../../../../.."), file("up/escape", "x", 0o644)}
		}, inRoot: "escape"},
		{name: "symlink chain", layers: func(o string) []ent {
			return []ent{symlink("a", "b/.."), symlink("b", "/.."), symlink("c", "a/../.."), file("c/escape", "x", 0o644)}
		}, inRoot: "escape"},
		{name: "hard link to outside", layers: func(string) []ent { return []ent{hardlink("stolen", "../secret")} }, wantErr: "outside the root"},
		{name: "hard link through symlink", layers: func(o string) []ent {
			return []ent{symlink("evil", o), hardlink("stolen", "evil/secret")}
		}, wantErr: "no such file"},
		{name: "hard link to symlink", layers: func(o string) []ent {
			return []ent{symlink("evil", o+"/secret"), hardlink("stolen", "evil")}
		}, inRoot: "stolen"},
		{name: "overwrite symlink to outside file", layers: func(o string) []ent {
			return []ent{symlink("evil", o+"/secret"), file("evil", "x", 0o644)}
		}, inRoot: "evil"},
		{name: "directory over symlink", layers: func(o string) []ent {
			return []ent{symlink("evil", o), dir("evil", 0o777)}
		}, inRoot: "evil"},
		{name: "whiteout through symlink", layers: func(o string) []ent {
			return []ent{symlink("evil", o), whiteout("evil", "secret")}
		}},
		{name: "opaque through symlink", layers: func(o string) []ent {
			return []ent{symlink("evil", o), opaque("evil")}
		}},
		{name: "whiteout of parent", layers: func(string) []ent { return []ent{file("a/.wh..", "", 0o600)} }, wantErr: "names no file"},
		{name: "symlink loop", layers: func(string) []ent {
			return []ent{symlink("loop", "loop"), file("loop/x", "x", 0o644)}
		}, wantErr: "symbolic links"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			outside := t.TempDir()
			secret := filepath.Join(outside, "secret")
			if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
				t.Fatal(err)
			}
			root := filepath.Join(outside, "root")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			before := outsideTree(t, outside)

			err := applyAll(t, root, layerTar(t, tt.layers(outside)...))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
			if diff := cmp.Diff(before, outsideTree(t, outside)); diff != "" {
				t.Errorf("the layer changed files outside the root (-before +after):\n%s", diff)
			}
			if tt.inRoot != "" {
				p := filepath.Join(root, strings.ReplaceAll(tt.inRoot, "{outside}", outside))
				if _, err := os.Lstat(p); err != nil {
					t.Errorf("want %s inside the root: %v", p, err)
				}
			}
		})
	}
}

// outsideTree describes dir except its root/ subdirectory, including link
// counts so a hard link made to an outside file shows.
func outsideTree(t testing.TB, dir string) map[string]string {
	t.Helper()
	all := tree(t, dir)
	out := map[string]string{}
	for p, d := range all {
		if p == "root" || strings.HasPrefix(p, "root/") {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, p), &st); err == nil {
			d += " nlink=" + strconv.FormatUint(uint64(st.Nlink), 10)
		}
		out[p] = d
	}
	return out
}
