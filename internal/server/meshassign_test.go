package server

import (
	"testing"

	"github.com/perchhq/perch/internal/api"
)

// Two worlds on one kernel route their hosts' 6PN /64s in one table: a
// host's number comes from its IPv4 machine subnet, so hosts of worlds
// with different machine nets never get the same /64, and a number taken
// falls back to the lowest free one.
func TestAssignMeshNumbersHostsBySubnet(t *testing.T) {
	a := api.Host{ID: "a", Subnet: "172.30.1.0/24"}
	b := api.Host{ID: "b", Subnet: "10.201.1.0/24"}
	if err := assignMesh(nil, &a); err != nil {
		t.Fatal(err)
	}
	if err := assignMesh(nil, &b); err != nil {
		t.Fatal(err)
	}
	if a.Subnet6 != "fdaa:0:1e01::/64" || b.Subnet6 != "fdaa:0:c901::/64" {
		t.Errorf("hosts of 172.30.1.0/24 and 10.201.1.0/24 got %s and %s; want fdaa:0:1e01::/64 and fdaa:0:c901::/64", a.Subnet6, b.Subnet6)
	}
	c := api.Host{ID: "c", Subnet: "172.30.1.0/24"} // a number already taken
	if err := assignMesh([]api.Host{a}, &c); err != nil {
		t.Fatal(err)
	}
	if c.Subnet6 != "fdaa:0:1::/64" {
		t.Errorf("a host whose subnet's number is taken got %s; want the lowest free, fdaa:0:1::/64", c.Subnet6)
	}
	ctl := api.Host{ID: "control"} // no machine subnet
	if err := assignMesh([]api.Host{a, c}, &ctl); err != nil {
		t.Fatal(err)
	}
	if ctl.Subnet6 != "fdaa:0:2::/64" {
		t.Errorf("the control plane got %s; want fdaa:0:2::/64", ctl.Subnet6)
	}
}
