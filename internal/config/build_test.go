package config

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// [build] dockerfile, build-target (or build_target) and [build.args] are
// what perch deploy builds with (internal/build); they survive a round trip.
func TestBuildSection(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       Build
	}{
		{"fly names", "[build]\ndockerfile = 'deploy/Dockerfile'\nbuild-target = 'runtime'\n[build.args]\nGO_VERSION = '1.26'\nDEBUG = false\nWORKERS = 4\n",
			Build{Dockerfile: "deploy/Dockerfile", Target: "runtime", Args: map[string]string{"GO_VERSION": "1.26", "DEBUG": "false", "WORKERS": "4"}}},
		{"build_target", "[build]\nbuild_target = 'web'\n", Build{Target: "web"}},
		{"image and dockerfile both kept", "[build]\nimage = 'r/app:1'\ndockerfile = 'Dockerfile.prod'\n", Build{Image: "r/app:1", Dockerfile: "Dockerfile.prod"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, warns, err := Parse("fly.toml", []byte(tc.file), LoadOptions{})
			if err != nil || len(warns) > 0 {
				t.Fatalf("Parse: %v, warnings %v", err, warnings(warns))
			}
			if diff := cmp.Diff(tc.want, c.Build); diff != "" {
				t.Errorf("[build] (-want +got):\n%s", diff)
			}
			roundTrip(t, c)
		})
	}
	c, warns, _ := Parse("fly.toml", []byte("[build]\nbuilder = 'paketobuildpacks/builder:base'\n"), LoadOptions{})
	if got := warnings(warns); len(got) != 1 || got[0] != `fly.toml line 2: "builder" in [build] ignored: perch builds only Dockerfiles yet (docs/builds.md); set image = "..." in [build] or add a Dockerfile` {
		t.Errorf("builder: warnings %q, want one saying only Dockerfiles are built", got)
	}
	if c == nil || c.Build.Builder != "paketobuildpacks/builder:base" {
		t.Errorf("builder not kept for perch deploy's error: %+v", c)
	}
}
