package server

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/perchhq/perch/internal/auth"
	"github.com/perchhq/perch/internal/registry"
	"github.com/perchhq/perch/internal/store"
)

// repoOwner records which organisation owns a registry repository: the
// first to push to it (perch_orgs, key repoKey(name)).
type repoOwner struct {
	Repo      string    `json:"repo"`
	Org       string    `json:"org"`
	ClaimedAt time.Time `json:"claimed_at"`
}

// repoKey hex-encodes the name: repository names hold slashes and dots.
func repoKey(name string) string { return "repo." + hex.EncodeToString([]byte(name)) }

// registryAuth decides the registry's requests with the API's tokens: the
// admin reaches every repository; an organisation's token reaches the
// repositories its organisation owns, and claims a repository nobody owns
// by pushing to it; a read-only token pulls only.
type registryAuth struct{ s *Server }

func (a registryAuth) Authorize(req *http.Request, tok string, acc registry.Access) error {
	p, err := a.s.principalFor(req.Context(), tok)
	if err != nil {
		return err
	}
	switch p.Kind {
	case auth.KindAdmin:
		return nil
	case auth.KindHost:
		if acc.Push || acc.Catalog {
			return fmt.Errorf("%w: a host credential only pulls images", registry.ErrDenied)
		}
		if acc.Repo == "" {
			return nil // the base endpoint: a login check
		}
		ok, err := a.s.hostRunsRepo(req.Context(), p.Host, acc.Repo)
		if err != nil {
			return fmt.Errorf("%w: repository %s: %v", registry.ErrDenied, acc.Repo, err)
		}
		if !ok {
			return fmt.Errorf("%w: host %s runs no machine of repository %s; a host pulls only its own machines' images", registry.ErrDenied, p.Host, acc.Repo)
		}
		return nil
	case auth.KindOrg:
	default:
		return fmt.Errorf("%w: credential kind %q may not use the registry", registry.ErrDenied, p.Kind)
	}
	if acc.Catalog {
		return fmt.Errorf("%w: the catalog lists every organisation's repositories; only the admin token reads it", registry.ErrDenied)
	}
	if acc.Push && p.ReadOnly {
		return fmt.Errorf("%w: this token is read-only (readonly caveat); push with a token that may write", registry.ErrDenied)
	}
	if acc.Push && len(p.Regions) > 0 {
		return fmt.Errorf("%w: this token is narrowed to region %v and may only act on machines there", registry.ErrDenied, p.Regions)
	}
	if acc.Repo == "" {
		return nil // the base endpoint: a login check
	}
	// An app-narrowed token reaches the repositories named after its app
	// (<app> and <app>/...), as Fly's registry.fly.io/<app>.
	if app, _, _ := strings.Cut(acc.Repo, "/"); !p.AllowsApp(app) {
		return fmt.Errorf("%w: this token is narrowed to app %s and reaches only repositories named after it", registry.ErrDenied, strings.Join(p.Apps, ","))
	}
	ctx := req.Context()
	own, _, err := store.Get[repoOwner](ctx, a.s.st.Orgs, repoKey(acc.Repo))
	switch {
	case errors.Is(err, store.ErrNotFound) && acc.Push:
		own = repoOwner{Repo: acc.Repo, Org: p.Org, ClaimedAt: time.Now().UTC()}
		if _, err := store.Create(ctx, a.s.st.Orgs, repoKey(acc.Repo), own); errors.Is(err, store.ErrExists) {
			if own, _, err = store.Get[repoOwner](ctx, a.s.st.Orgs, repoKey(acc.Repo)); err != nil {
				return fmt.Errorf("%w: repository %s: %v", registry.ErrDenied, acc.Repo, err)
			}
		} else if err != nil {
			return fmt.Errorf("%w: claim repository %s: %v", registry.ErrDenied, acc.Repo, err)
		} else {
			a.s.log.Info("registry repository claimed", "repo", acc.Repo, "org", p.Org)
		}
	case errors.Is(err, store.ErrNotFound) && acc.Blob:
		// A push begins by asking which blobs the registry has; a repository
		// nobody owns has no manifest to read.
		return nil
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%w: repository %s does not exist or is not your organisation's (%s)", registry.ErrDenied, acc.Repo, p.Org)
	case err != nil:
		return fmt.Errorf("%w: repository %s: %v", registry.ErrDenied, acc.Repo, err)
	}
	if own.Org != p.Org {
		return fmt.Errorf("%w: repository %s does not exist or is not your organisation's (%s); push under another name", registry.ErrDenied, acc.Repo, p.Org)
	}
	return nil
}

// hostRunsRepo says whether host may pull repository repo: a machine
// placed on it runs an image of repo (its registry name aside: the host
// reaches this registry under whatever address the image names), or a
// machine anywhere runs one with [[statics]], which every edge serves
// from its own copy of the image (agent/statics.go). The machines placed
// on the host are its NATS grants (hostauth.go), each spec read for its
// current image; with an external NATS, which has no grants, every spec.
func (s *Server) hostRunsRepo(ctx context.Context, host, repo string) (bool, error) {
	runs := func(sp store.MachineSpec) bool {
		ref, err := name.ParseReference(sp.Config.Image)
		return err == nil && ref.Context().RepositoryStr() == repo
	}
	if s.nats != nil {
		var keys []string
		s.grants.mu.Lock()
		for k, gone := range s.grants.byHost[host] {
			if gone.IsZero() && !strings.HasPrefix(k, store.VolumeGrantPrefix) {
				keys = append(keys, k)
			}
		}
		s.grants.mu.Unlock()
		for _, k := range keys {
			sp, _, err := store.Get[store.MachineSpec](ctx, s.st.Machines, k)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return false, err
			}
			if sp.HostID == host && runs(sp) {
				return true, nil
			}
		}
	}
	specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, ">")
	if err != nil {
		return false, err
	}
	for _, sp := range specs {
		if (sp.HostID == host || len(sp.Config.Statics) > 0) && runs(sp) {
			return true, nil
		}
	}
	return false, nil
}
