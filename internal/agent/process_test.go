package agent

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// envOf is a process environment as a map.
func envOf(kvs []string) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// Every machine, whatever its runtime (both drivers run the spec
// runtimeSpec makes), gets the environment Fly apps read.
func TestMachineEnvHasFlyNames(t *testing.T) {
	a := &Agent{
		cfg:    Config{Region: "ams"},
		bridge: "perch0",
		gw:     netip.MustParsePrefix("10.20.0.1/24"),
		sub6:   netip.MustParsePrefix("fdaa:0:7:a7b::/64"),
	}
	img := v1.Config{Cmd: []string{"/app"}, Env: []string{"FLY_REGION=from-image", "LANG=C.UTF-8"}}
	for _, tc := range []struct {
		name string
		cfg  api.MachineConfig
		want map[string]string
	}{
		{
			name: "deployed from fly.toml",
			cfg: api.MachineConfig{
				Image:    "registry.example/shop:v3",
				Guest:    api.Guest{Runtime: "microvm"},
				Env:      map[string]string{"FLY_PROCESS_GROUP": "web", "PRIMARY_REGION": "iad", "PORT": "3000"},
				Metadata: map[string]string{"fly_process_group": "web"},
			},
			want: map[string]string{
				"FLY_APP_NAME": "shop", "FLY_MACHINE_ID": "3d8d9e1a2b", "FLY_ALLOC_ID": "3d8d9e1a2b",
				"FLY_REGION": "ams", "FLY_PRIVATE_IP": "fdaa:1bdd:823b:7::a14:7", "FLY_IMAGE_REF": "registry.example/shop:v3",
				"FLY_PROCESS_GROUP": "web", "PRIMARY_REGION": "iad", "PORT": "3000",
				"PERCH_APP_NAME": "shop", "PERCH_MACHINE_ID": "3d8d9e1a2b", "PERCH_REGION": "ams", "PERCH_PRIVATE_IP": "10.20.0.7",
				"LANG": "C.UTF-8",
			},
		},
		{
			name: "created through the API with no env",
			cfg:  api.MachineConfig{Image: "registry.example/shop:v3", Guest: api.Guest{Runtime: "runc"}},
			want: map[string]string{
				"FLY_APP_NAME": "shop", "FLY_MACHINE_ID": "3d8d9e1a2b", "FLY_ALLOC_ID": "3d8d9e1a2b",
				"FLY_REGION": "ams", "FLY_PRIVATE_IP": "fdaa:1bdd:823b:7::a14:7", "FLY_IMAGE_REF": "registry.example/shop:v3",
				"FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "ams", "PORT": "8080",
				"PERCH_APP_NAME": "shop", "PERCH_MACHINE_ID": "3d8d9e1a2b", "PERCH_REGION": "ams", "PERCH_PRIVATE_IP": "10.20.0.7",
				"LANG": "C.UTF-8",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := store.MachineSpec{ID: "3d8d9e1a2b", App: "shop", Org: "acme", Region: "ams", PrivateIP: "10.20.0.7", Config: tc.cfg}
			rs, err := a.runtimeSpec(spec, "/rootfs", img)
			if err != nil {
				t.Fatal(err)
			}
			got := envOf(rs.Process.Env)
			delete(got, "PATH")
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("machine env (-want +got):\n%s", diff)
			}
			if rs.Net.Addr6.Addr().String() != got["FLY_PRIVATE_IP"] {
				t.Errorf("FLY_PRIVATE_IP %s is not the machine's 6PN address %s", got["FLY_PRIVATE_IP"], rs.Net.Addr6)
			}
		})
	}
}
