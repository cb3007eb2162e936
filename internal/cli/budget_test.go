package cli

import (
	"strings"
	"testing"
)

func TestParseMonthly(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string // error substring, "" for none
	}{
		{"50", ""}, {"$12.5", ""},
		{"-5", "must be above 0"}, {"0", "must be above 0"},
		{"fifty", "must be a number of US dollars"}, {"NaN", "must be a number"}, {"", "must be a number"},
	} {
		_, err := parseMonthly(c.in)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("parseMonthly(%q) = %v, want %q", c.in, err, c.want)
		}
	}
}
