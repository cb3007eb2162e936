package runc

import (
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/perchhq/perch/internal/runtime"
)

// writeFiles writes the machine's config.files into its mounted root
// (the overlay's upper layer, or the copy). Paths resolve inside the root
// (os.Root): a symlink in the image cannot send a write to the host.
func writeFiles(rootfs string, files []runtime.File) error {
	if len(files) == 0 {
		return nil
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("write files: %w", err)
	}
	defer root.Close()
	for _, f := range files {
		rel := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if rel == "" {
			return fmt.Errorf("write file %q: not a file path", f.Path)
		}
		if dir := path.Dir(rel); dir != "." {
			if err := root.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("write file %s: %w", f.Path, err)
			}
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		_ = root.Remove(rel) // a file of the image's: replace, not truncate through a hard link
		if err := root.WriteFile(rel, f.Data, mode); err != nil {
			return fmt.Errorf("write file %s: %w", f.Path, err)
		}
		if err := root.Chmod(rel, mode); err != nil { // WriteFile's mode is masked by the umask
			return fmt.Errorf("write file %s: %w", f.Path, err)
		}
		if err := root.Lchown(rel, 0, 0); err != nil {
			return fmt.Errorf("write file %s: %w", f.Path, err)
		}
	}
	return nil
}
