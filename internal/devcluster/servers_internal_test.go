package devcluster

import (
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/certs"
)

// TestCheckServers: a world runs 1, 3 or 5 servers; an even count is
// refused saying a quorum needs an odd one, and so are the options a
// clustered world does not take.
func TestCheckServers(t *testing.T) {
	for _, n := range []int{0, 1, 3, 5} {
		if err := CheckServers(Options{Servers: n}); err != nil {
			t.Errorf("--servers %d refused: %v", n, err)
		}
	}
	for _, c := range []struct {
		opts Options
		want string
	}{
		{Options{Servers: 2}, "odd number"},
		{Options{Servers: 4}, "quorum"},
		{Options{Servers: 7}, "at most 5"},
		{Options{Servers: -1}, "give 1"},
		{Options{Servers: 3, Anycast: true}, "--anycast"},
		{Options{Servers: 3, NATSURL: "nats://127.0.0.1:4222"}, "--nats"},
		{Options{Servers: 3, Certs: certs.Config{ACME: certs.ACMEConfig{Directory: "https://ca/dir"}}}, "ACME"},
	} {
		err := CheckServers(c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err = %v, want one saying %q", c.opts.Servers, err, c.want)
		}
	}
}
