package cli

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseDotenv(t *testing.T) {
	in := "# a comment\n\nexport A=1\nB = \"two words\\nand a line\"\nC='lit\\n'\nD=\nE=x=y\n"
	got, err := parseDotenv(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	flat := map[string]string{}
	for k, v := range got {
		flat[k] = *v
	}
	want := map[string]string{"A": "1", "B": "two words\nand a line", "C": `lit\n`, "D": "", "E": "x=y"}
	if d := cmp.Diff(want, flat); d != "" {
		t.Error(d)
	}
	_, err = parseDotenv(strings.NewReader("A=1\nhunter2\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("bad line: %v (must name the line, not show it)", err)
	}
}
