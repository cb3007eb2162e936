// Package build turns a directory with a Dockerfile into an image in a
// registry, with BuildKit: it starts (or reuses) a local buildkitd
// (daemon.go), sends the build context honouring .dockerignore, solves with
// the dockerfile.v0 frontend, pushes the result with the caller's registry
// credentials and streams the steps' progress (progress.go). It does not
// interpret Dockerfiles itself.
package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config/types"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/auth/authprovider"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	"github.com/tonistiigi/fsutil"
	"golang.org/x/sync/errgroup"
)

// DefaultMaxContext is the largest build context sent to the builder unless
// the caller says otherwise.
const DefaultMaxContext = 500 << 20

// Options describe one build.
type Options struct {
	// Addr is the builder's address (unix:///path/buildkitd.sock).
	Addr string
	// Dir is the build context.
	Dir string
	// Dockerfile is the Dockerfile's path, relative to Dir or absolute;
	// "Dockerfile" if empty.
	Dockerfile string
	Target     string            // the stage to build; the last if empty
	Args       map[string]string // ARG values (--build-arg)
	// Ref is where the image is pushed: host:port/repo:tag.
	Ref string
	// Username and Password authenticate to the registry of Ref (pushes,
	// and FROM images from it), and to no other registry.
	Username, Password string
	// Insecure lets the registry of Ref be plain HTTP.
	Insecure bool
	// MaxContext refuses a build context larger than this many bytes
	// (after .dockerignore) before anything is sent; DefaultMaxContext if 0.
	MaxContext int64
	// Progress receives the steps as they run (nil: discarded).
	Progress io.Writer
}

// Result is what a build made.
type Result struct {
	Ref    string // Options.Ref
	Digest string // the pushed manifest's digest
}

// StepError is a build that failed in a step: the step's name (as in the
// Dockerfile, "[stage 2/4] RUN make") and its last output lines.
type StepError struct {
	Step  string
	Lines []string
	Err   error
}

func (e *StepError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "build step %s failed: %v", e.Step, e.Err)
	if len(e.Lines) > 0 {
		b.WriteString("\nlast output lines:")
		for _, l := range e.Lines {
			b.WriteString("\n  " + l)
		}
	}
	return b.String()
}

func (e *StepError) Unwrap() error { return e.Err }

// BaseImageError is a FROM image the builder could not get: its
// registry refused it (not found, unauthorized, denied) or did not answer.
type BaseImageError struct {
	Ref      string // as the Dockerfile names it, normalised by BuildKit (docker.io/library/debian:bookworm)
	Registry string // the registry's host[:port]
	Answer   string // what the registry said ("404 Not Found (HEAD https://...)"), or why it could not be asked
	Perch    bool   // the registry is the control plane's own
	Err      error
}

func (e *BaseImageError) Error() string {
	what := "push the image there or fix the FROM line; only Perch's own registry is sent the token of perch auth, others are asked anonymously"
	if e.Perch && strings.Contains(e.Answer, "403") {
		what = "Perch's registry answers 403 for a repository that does not exist or is another organisation's: push the image with this organisation's token (crane push, skopeo copy) or fix the FROM line"
	}
	return fmt.Sprintf("base image %s: the registry %s refused it: %s (%s)", e.Ref, e.Registry, e.Answer, what)
}

func (e *BaseImageError) Unwrap() error { return e.Err }

// ContextTooLargeError is a build context over Options.MaxContext.
type ContextTooLargeError struct {
	Size, Max int64
	Dir       string
}

func (e *ContextTooLargeError) Error() string {
	return fmt.Sprintf("build context %s is %s, over the limit of %s: add what the image does not need to .dockerignore, or raise --build-context-max", e.Dir, mb(e.Size), mb(e.Max))
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/(1<<20)) }

// Build builds opts.Dir's Dockerfile and pushes the image to opts.Ref.
func Build(ctx context.Context, opts Options) (Result, error) {
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return Result{}, fmt.Errorf("build: %w", err)
	}
	dockerfile := opts.Dockerfile
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	if !filepath.IsAbs(dockerfile) {
		dockerfile = filepath.Join(dir, dockerfile)
	}
	if st, err := os.Stat(dockerfile); err != nil || st.IsDir() {
		return Result{}, fmt.Errorf("build: no Dockerfile at %s: add one, or set dockerfile under [build] in perch.toml", dockerfile)
	}
	max := opts.MaxContext
	if max <= 0 {
		max = DefaultMaxContext
	}
	size, err := ContextSize(dir, max)
	if err != nil {
		return Result{}, err
	}
	if size > max {
		return Result{}, &ContextTooLargeError{Size: size, Max: max, Dir: dir}
	}

	registryHost, _, ok := strings.Cut(opts.Ref, "/")
	if !ok || !strings.ContainsAny(registryHost, ".:") && registryHost != "localhost" {
		return Result{}, fmt.Errorf("build: image reference %q names no registry host (want host[:port]/repo:tag)", opts.Ref)
	}
	c, err := client.New(ctx, opts.Addr)
	if err != nil {
		return Result{}, fmt.Errorf("build: connect to buildkitd at %s: %w", opts.Addr, err)
	}
	defer c.Close()
	ctxFS, err := fsutil.NewFS(dir)
	if err != nil {
		return Result{}, fmt.Errorf("build: %w", err)
	}
	dfFS, err := fsutil.NewFS(filepath.Dir(dockerfile))
	if err != nil {
		return Result{}, fmt.Errorf("build: %w", err)
	}
	attrs := map[string]string{"filename": filepath.Base(dockerfile)}
	if opts.Target != "" {
		attrs["target"] = opts.Target
	}
	for k, v := range opts.Args {
		attrs["build-arg:"+k] = v
	}
	exp := map[string]string{"name": opts.Ref, "push": "true"}
	if opts.Insecure {
		exp["registry.insecure"] = "true"
	}
	solveOpt := client.SolveOpt{
		Frontend:      "dockerfile.v0",
		FrontendAttrs: attrs,
		LocalMounts:   map[string]fsutil.FS{"context": ctxFS, "dockerfile": dfFS},
		Exports:       []client.ExportEntry{{Type: client.ExporterImage, Attrs: exp}},
		Session:       []session.Attachable{authProvider(registryHost, opts.Username, opts.Password)},
	}
	ch := make(chan *client.SolveStatus)
	p := newPrinter(opts.Progress)
	var resp *client.SolveResponse
	eg, ectx := errgroup.WithContext(ctx)
	eg.Go(func() error {
		var err error
		resp, err = c.Solve(ectx, nil, solveOpt, ch)
		return err
	})
	eg.Go(func() error {
		for s := range ch {
			p.update(s)
		}
		return nil
	})
	if err := eg.Wait(); err != nil {
		if step, lines := p.failed(); step != "" {
			if be := baseImageError(step, err); be != nil {
				be.Perch = be.Registry == registryHost
				return Result{}, be
			}
			return Result{}, &StepError{Step: step, Lines: lines, Err: cleanError(err)}
		}
		return Result{}, fmt.Errorf("build: %w", err)
	}
	return Result{Ref: opts.Ref, Digest: resp.ExporterResponse["containerimage.digest"]}, nil
}

// cleanError cuts BuildKit's long wrapping of a failed process ("process
// ... did not complete successfully: exit code: 1") to "exit code: 1".
func cleanError(err error) error {
	msg := err.Error()
	const done = "did not complete successfully: "
	if i := strings.LastIndex(msg, done); i >= 0 {
		return errors.New(strings.TrimSpace(msg[i+len(done):])) // "exit code: 3"
	}
	return err
}

// unexpectedStatus is containerd's resolver's "unexpected status from
// HEAD request to URL: 403 Forbidden", then the registry's error body.
var unexpectedStatus = regexp.MustCompile(`(?s)unexpected status from (\w+) request to (\S+): ([^\n]+)(.*)$`)

// baseImageError recognises BuildKit's failure to resolve a FROM image
// (the step "[internal] load metadata for REF") and says which registry
// refused it and how; nil for any other failure.
func baseImageError(step string, err error) *BaseImageError {
	ref, ok := strings.CutPrefix(step, "[internal] load metadata for ")
	if !ok {
		return nil
	}
	ref = strings.TrimSpace(ref)
	answer := err.Error()
	// "...failed to resolve source metadata for REF: REF: not found" or
	// "...: failed to authorize: ...: 401 Unauthorized"
	if i := strings.LastIndex(answer, "failed to resolve source metadata for "+ref+": "); i >= 0 {
		answer = answer[i+len("failed to resolve source metadata for "+ref+": "):]
	}
	answer = strings.TrimPrefix(answer, ref+": ")
	if m := unexpectedStatus.FindStringSubmatch(answer); m != nil {
		answer = m[3] + " (" + m[1] + " " + m[2] + ")"
		if body := strings.TrimSpace(m[4]); body != "" { // the registry's own words
			if first, rest, ok := strings.Cut(body, ": "); ok && strings.HasPrefix(rest, first+": ") {
				body = rest // containerd repeats the error code: "denied: denied: ..."
			}
			answer += ": " + strings.Join(strings.Fields(body), " ")
		}
	}
	host := "docker.io"
	if named, perr := reference.ParseNormalizedNamed(ref); perr == nil {
		host = reference.Domain(named)
	}
	return &BaseImageError{Ref: ref, Registry: host, Answer: answer, Err: err}
}

// authProvider answers the builder's credential requests: the registry
// of Ref (the control plane's) gets username and password (the Perch
// token); any other registry (a FROM image's elsewhere) gets none, so the
// token never leaves for a registry that is not Perch's.
func authProvider(registryHost, username, password string) session.Attachable {
	return authprovider.NewDockerAuthProvider(authprovider.DockerAuthProviderConfig{
		AuthConfigProvider: func(_ context.Context, host string, _ []string, _ authprovider.ExpireCachedAuthCheck) (types.AuthConfig, error) {
			return credentialsFor(host, registryHost, username, password), nil
		},
	})
}

func credentialsFor(host, registryHost, username, password string) types.AuthConfig {
	if password == "" || host != registryHost {
		return types.AuthConfig{}
	}
	return types.AuthConfig{ServerAddress: host, Username: username, Password: password}
}

// ContextSize sums the sizes of the regular files under dir that
// .dockerignore does not exclude, stopping once it passes limit.
func ContextSize(dir string, limit int64) (int64, error) {
	var patterns []string
	if f, err := os.Open(filepath.Join(dir, ".dockerignore")); err == nil {
		patterns, err = ignorefile.ReadAll(f)
		f.Close()
		if err != nil {
			return 0, fmt.Errorf("build: read %s: %w", filepath.Join(dir, ".dockerignore"), err)
		}
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return 0, fmt.Errorf("build: .dockerignore in %s: %w", dir, err)
	}
	var total int64
	errStop := errors.New("stop")
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if rel == "." {
			return nil
		}
		skip, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		if skip {
			if d.IsDir() && !pm.Exclusions() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
			if total > limit {
				return errStop
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return 0, fmt.Errorf("build: measure context %s: %w", dir, err)
	}
	return total, nil
}
