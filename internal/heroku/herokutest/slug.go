package herokutest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"maps"
	"slices"
	"strings"
)

// MakeSlug is a slug made "from scratch" as Heroku documents it
// (https://devcenter.heroku.com/articles/platform-api-deploying-slugs): a
// tar.gz of ./app holding files (paths relative to ./app; a name ending in
// ".sh" or under bin/ is executable).
func MakeSlug(files map[string]string) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	dirs := map[string]bool{"./app/": true}
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "./app/", Mode: 0o755})
	for _, name := range slices.Sorted(maps.Keys(files)) {
		parts := strings.Split(name, "/")
		for i := 1; i < len(parts); i++ {
			d := "./app/" + strings.Join(parts[:i], "/") + "/"
			if !dirs[d] {
				dirs[d] = true
				tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755})
			}
		}
		mode := int64(0o644)
		if strings.HasSuffix(name, ".sh") || strings.HasPrefix(name, "bin/") {
			mode = 0o755
		}
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "./app/" + name, Mode: mode, Size: int64(len(files[name]))})
		tw.Write([]byte(files[name]))
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}
