// Command build measures perch deploy's image build (issue 15): a cold
// build (fresh buildkitd state) and a warm rebuild with one changed file,
// each pushed to a Perch registry, through internal/build (BuildKit's Go
// client) and then the same two with BuildKit's own buildctl on the same
// context against a fresh buildkitd of its own, and prints the ratio; then
// the same two through a link with a round trip and a bandwidth cap
// (link.go), as a builder on another host would be reached. The
// base image is Debian's busybox-static as /bin/sh, pushed by the bench.
// Needs root and buildkitd/buildctl (scripts/deps.sh). Run it with
// bench/build/run.sh; bench/README.md records the output.
package main

import (
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/perchhq/perch/internal/build"
	"github.com/perchhq/perch/internal/registry"
	"github.com/perchhq/perch/internal/testimage"
)

const token = "perch_bench_token"

func main() {
	rounds := flag.Int("n", 3, "rounds (each: fresh daemons, cold build, warm rebuild, for perch and buildctl)")
	files := flag.Int("files", 2000, "small files in the context")
	blobMB := flag.Int("blob-mb", 32, "one large file in the context, MB")
	rtt := flag.Duration("link-rtt", 20*time.Millisecond, "round trip between perch deploy and a builder on another host (the third client)")
	mbit := flag.Float64("link-mbit", 100, "bandwidth between perch deploy and a builder on another host, Mbit/s each way")
	flag.Parse()
	ctx := context.Background()
	tmp, err := os.MkdirTemp("/var/tmp", "perch-bench-build-")
	check(err)
	defer os.RemoveAll(tmp)

	reg, err := registry.NewStandalone(filepath.Join(tmp, "registry"), registry.TokenFunc(func(t string) bool { return t == token }), registry.Options{MaxBlobBytes: -1}, nil)
	check(err)
	defer reg.Close()
	srv := httptest.NewServer(reg)
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	base := pushBase(host)

	dir := filepath.Join(tmp, "app")
	check(os.MkdirAll(filepath.Join(dir, "src"), 0o755))
	for i := range *files {
		write(filepath.Join(dir, "src", fmt.Sprintf("f%04d.txt", i)), strings.Repeat(fmt.Sprintf("line %d\n", i), 50))
	}
	blob := make([]byte, *blobMB<<20)
	for i := range blob {
		blob[i] = byte(i * 7919 >> 3)
	}
	check(os.WriteFile(filepath.Join(dir, "blob.bin"), blob, 0o644))
	write(filepath.Join(dir, ".dockerignore"), "*.log\n")
	write(filepath.Join(dir, "Dockerfile"), `ARG BASE
FROM ${BASE} AS build
WORKDIR /src
COPY src/ ./
RUN i=0; for f in *.txt; do i=$((i+1)); done; echo "$i files" > /count
FROM ${BASE}
WORKDIR /srv
COPY --from=build /count /srv/count
COPY blob.bin /srv/blob.bin
COPY app.txt /srv/app.txt
USER app
EXPOSE 8080
`)
	// buildctl reads registry credentials from a docker config.
	dockerCfg := filepath.Join(tmp, "docker")
	check(os.MkdirAll(dockerCfg, 0o700))
	write(filepath.Join(dockerCfg, "config.json"), fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, base64.StdEncoding.EncodeToString([]byte("x:"+token))))
	buildctl, err := build.Binary("buildctl")
	check(err)

	var perch, ctl, linked [2][]time.Duration // cold, warm
	for r := range *rounds {
		clients := []string{"perch", "buildctl", "perch-link"}
		// Each round starts with another client, so none always goes first
		// (on a loaded machine the first builds of a run were the slowest).
		for i := 0; i < r%len(clients); i++ {
			clients = append(clients[1:], clients[0])
		}
		for _, who := range clients {
			d, err := build.Start(ctx, filepath.Join(tmp, fmt.Sprintf("bk-%s-%d", who, r)), nil, nil)
			check(err)
			addr := d.Addr
			var l *link
			if who == "perch-link" {
				l = newLink(d.Addr, *rtt, *mbit)
				addr = l.Addr()
			}
			for i, what := range []string{"cold", "warm"} {
				write(filepath.Join(dir, "app.txt"), fmt.Sprintf("%s %d %s", who, r, what))
				ref := fmt.Sprintf("%s/bench:%s-%d-%s", host, who, r, what)
				t0 := time.Now()
				if who != "buildctl" {
					_, err = build.Build(ctx, build.Options{Addr: addr, Dir: dir, Ref: ref, Args: map[string]string{"BASE": base}, Username: "x", Password: token, Insecure: true})
				} else {
					cmd := exec.Command(buildctl, "--addr", d.Addr, "build", "--frontend", "dockerfile.v0",
						"--local", "context="+dir, "--local", "dockerfile="+dir, "--opt", "build-arg:BASE="+base,
						"--output", "type=image,name="+ref+",push=true,registry.insecure=true", "--progress", "quiet")
					cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+dockerCfg)
					var out []byte
					if out, err = cmd.CombinedOutput(); err != nil {
						err = fmt.Errorf("%w: %s", err, out)
					}
				}
				took := time.Since(t0)
				check(err)
				switch who {
				case "perch":
					perch[i] = append(perch[i], took)
				case "buildctl":
					ctl[i] = append(ctl[i], took)
				default:
					linked[i] = append(linked[i], took)
				}
				fmt.Printf("round %d %-10s %s %v\n", r+1, who, what, took.Round(time.Millisecond))
			}
			if l != nil {
				l.Close()
			}
			d.Stop()
		}
	}
	fmt.Printf("\nbuild of a two-stage Dockerfile, context %d files + %d MB, pushed to a Perch registry on loopback; %d rounds, fresh buildkitd each\n", *files, *blobMB, *rounds)
	for i, what := range []string{"cold build", "warm rebuild (one file changed)"} {
		p, c := median(perch[i]), median(ctl[i])
		fmt.Printf("  %-32s perch (internal/build) median %v   buildctl median %v   ratio %.2f\n", what, p.Round(time.Millisecond), c.Round(time.Millisecond), float64(p)/float64(c))
	}
	fmt.Printf("\nthe same builds with the builder across a link (RTT %v, %g Mbit/s each way), as a builder machine on another host would be; its start not included\n", *rtt, *mbit)
	for i, what := range []string{"cold build", "warm rebuild (one file changed)"} {
		p, lk := median(perch[i]), median(linked[i])
		fmt.Printf("  %-32s local median %v   across the link median %v   ratio %.2f\n", what, p.Round(time.Millisecond), lk.Round(time.Millisecond), float64(lk)/float64(p))
	}
}

func pushBase(host string) string {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		log.Fatalf("busybox-static is needed for the base image (scripts/deps.sh installs it): %v", err)
	}
	img, err := testimage.FromFiles(map[string]testimage.File{
		"bin/sh":     {Mode: 0o755, Data: bb},
		"etc/passwd": {Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n")},
		"etc/group":  {Mode: 0o644, Data: []byte("root:x:0:\napp:x:1000:\n")},
	}, v1.Config{Env: []string{"PATH=/bin"}})
	check(err)
	ref := host + "/base/busybox:1"
	r, err := name.ParseReference(ref, name.Insecure)
	check(err)
	check(remote.Write(r, img, remote.WithAuth(&authn.Basic{Username: "x", Password: token})))
	return ref
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func write(p, s string) { check(os.WriteFile(p, []byte(s), 0o644)) }

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
