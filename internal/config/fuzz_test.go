package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var errLine = regexp.MustCompile(`^fuzz\.toml line ([0-9]+)(, column [0-9]+)?: `)

// FuzzParse checks that Parse never panics, that every error and warning
// points at a line of the file, and that whatever parses survives
// Marshal and Parse unchanged.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.toml")
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"[http_service]\ninternal_port = 0\n",
		"[[vm]]\nmemory = 'lots'\n",
		"services = [{protocol = 'tcp', internal_port = 1, ports = [{port = 80, handlers = ['tls']}]}]\n",
		"services = [{protocol = 'tcp', internal_port = 1, ports = [{port = 443, handlers = ['tls', 'http'], tls_options = {alpn = ['h2'], versions = ['TLSv1.3']}, http_options = {h2_backend = true}}, {port = 5, handlers = ['proxy_proto'], proxy_proto_options = {version = 'v2'}}]}]\n",
		"a.b.c = 1\n[x.y]\n[[x.z]]\n",
		"regions = [['iad']]\nenv = {A = 1.5}\n",
		"app = 'a\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, warns, err := Parse("fuzz.toml", data, regions)
		nlines := bytes.Count(data, []byte("\n")) + 1
		checkLine := func(what, msg string) {
			m := errLine.FindStringSubmatch(msg)
			if m == nil {
				t.Fatalf("%s does not name a line of fuzz.toml: %q", what, msg)
			}
			if n, _ := strconv.Atoi(m[1]); n < 1 || n > nlines {
				t.Fatalf("%s names line %d of a %d-line file: %q", what, n, nlines, msg)
			}
		}
		for _, w := range warns {
			checkLine("warning", w.String())
		}
		if err != nil {
			for _, msg := range strings.Split(err.Error(), "\n") {
				checkLine("error", msg)
			}
			var perr *Error
			if !errors.As(err, &perr) {
				t.Fatalf("error is not an *Error: %#v", err)
			}
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed config: %v", err)
		}
		back, _, err := Parse("perch.toml", out, regions)
		if err != nil {
			t.Fatalf("Parse(Marshal) failed: %v\nfile:\n%s", err, out)
		}
		if diff := cmp.Diff(c, back); diff != "" {
			t.Fatalf("round trip (-want +got):\n%s\nfile:\n%s", diff, out)
		}
	})
}
