package cli

import "testing"

func TestAutoscaleSetBadInput(t *testing.T) {
	loggedOut(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--min", "7", "--max", "6"}, "--min 7 is above --max 6"},
		{[]string{"--min", "1"}, "--max is required"},
		{[]string{"--max", "-1"}, "must not be negative"},
		{[]string{"--max", "6", "--target", "1.5"}, "--target must be above 0 and at most 1"},
		{[]string{"--max", "6", "--target", "0"}, "--target must be above 0 and at most 1"},
		{[]string{"--max", "6", "--window", "-5m"}, "--window must not be negative"},
	} {
		_, err := run(t, t.TempDir(), "", append([]string{"autoscale", "set", "--app", "web"}, tc.args...)...)
		wantErr(t, err, tc.want)
	}
}
