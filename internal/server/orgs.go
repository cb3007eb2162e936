package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/auth"
	"github.com/perchhq/perch/internal/store"
)

// DefaultOrg is the organisation the admin's apps go to when none is named,
// and a dev world's.
const DefaultOrg = "personal"

// tokenIDRE is a root token's id (mintToken's randHex(8)).
var tokenIDRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

func orgKey(slug string) string { return "org." + slug }

// ensureOrg creates org if it does not exist yet (the admin placing an app
// in a new organisation, the default organisation at start).
func (s *Server) ensureOrg(ctx context.Context, slug string) error {
	o := api.Org{Slug: slug, Name: slug, Members: []api.OrgMember{}, CreatedAt: time.Now().UTC()}
	if _, err := store.Create(ctx, s.st.Orgs, orgKey(slug), o); err != nil && !errors.Is(err, store.ErrExists) {
		return fmt.Errorf("create organisation %s: %w", slug, err)
	}
	return nil
}

func (s *Server) org(ctx context.Context, slug string) (api.Org, error) {
	if !appNameRE.MatchString(slug) {
		return api.Org{}, errf(http.StatusNotFound, "organisation %q not found", slug)
	}
	o, _, err := store.Get[api.Org](ctx, s.st.Orgs, orgKey(slug))
	if errors.Is(err, store.ErrNotFound) {
		return o, errf(http.StatusNotFound, "organisation %q not found; perch orgs list shows yours", slug)
	}
	return o, err
}

func (s *Server) createOrg(w http.ResponseWriter, r *http.Request) {
	var req api.CreateOrgRequest
	if err := decodeStrict(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if !appNameRE.MatchString(req.Slug) {
		s.fail(w, r, errf(http.StatusBadRequest, "organisation slug %q is not valid: use 1-63 lowercase letters, digits and dashes, starting with a letter", req.Slug))
		return
	}
	o := api.Org{Slug: req.Slug, Name: cmp.Or(req.Name, req.Slug), Members: []api.OrgMember{}, CreatedAt: time.Now().UTC()}
	if _, err := store.Create(r.Context(), s.st.Orgs, orgKey(o.Slug), o); err != nil {
		if errors.Is(err, store.ErrExists) {
			s.fail(w, r, nameTaken("organisation %q already exists; choose another slug", o.Slug))
			return
		}
		s.fail(w, r, err)
		return
	}
	s.log.Info("organisation created", "org", o.Slug)
	writeJSON(w, http.StatusCreated, o)
}

// listOrgs: every organisation for the admin, its own for an
// organisation's token.
func (s *Server) listOrgs(w http.ResponseWriter, r *http.Request) {
	p := principalOf(r)
	if p.Kind == auth.KindOrg {
		o, err := s.org(r.Context(), p.Org)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, []api.Org{o})
		return
	}
	orgs, err := store.List[api.Org](r.Context(), s.st.Orgs, "org.*")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	slices.SortFunc(orgs, func(a, b api.Org) int { return strings.Compare(a.Slug, b.Slug) })
	writeJSON(w, http.StatusOK, append([]api.Org{}, orgs...))
}

func (s *Server) getOrg(w http.ResponseWriter, r *http.Request) {
	o, err := s.org(r.Context(), r.PathValue("org"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

func validMember(m string) error {
	if m == "" || len(m) > 100 || strings.IndexFunc(m, func(c rune) bool { return unicode.IsSpace(c) || !unicode.IsPrint(c) || c == '/' }) >= 0 {
		return errf(http.StatusBadRequest, "member %q is not valid: give an e-mail address or a name of 1-100 characters without spaces or slashes", m)
	}
	return nil
}

func expiryOf(secs int64) (time.Time, error) {
	if secs < 0 {
		return time.Time{}, errf(http.StatusBadRequest, "expires_in %d is negative; give seconds from now, or 0 for no expiry", secs)
	}
	if secs == 0 {
		return time.Time{}, nil
	}
	return time.Now().UTC().Add(time.Duration(secs) * time.Second).Truncate(time.Second), nil
}

// inviteMember adds a member to the organisation and makes them a token,
// returned once.
func (s *Server) inviteMember(w http.ResponseWriter, r *http.Request) {
	var req api.InviteRequest
	if err := decodeStrict(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := validMember(req.Member); err != nil {
		s.fail(w, r, err)
		return
	}
	exp, err := expiryOf(req.ExpiresIn)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, slug := r.Context(), r.PathValue("org")
	if _, err := s.org(ctx, slug); err != nil {
		s.fail(w, r, err)
		return
	}
	if _, err := store.Modify(ctx, s.st.Orgs, orgKey(slug), func(o *api.Org) error {
		if slices.ContainsFunc(o.Members, func(m api.OrgMember) bool { return m.Name == req.Member }) {
			return nameTaken("%s is already a member of %s; perch tokens create org makes them another token", req.Member, slug)
		}
		o.Members = append(o.Members, api.OrgMember{Name: req.Member, AddedAt: time.Now().UTC()})
		return nil
	}); err != nil {
		s.fail(w, r, err)
		return
	}
	t, err := s.mintToken(ctx, auth.TokenRecord{Org: slug, Kind: auth.TokenMember, Member: req.Member, Name: req.Member, Expires: exp, CreatedBy: tokenName(r)})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("member added", "org", slug, "member", req.Member, "token", t.ID)
	writeJSON(w, http.StatusCreated, t)
}

// removeMember removes a member and revokes every token made for them.
func (s *Server) removeMember(w http.ResponseWriter, r *http.Request) {
	ctx, slug, member := r.Context(), r.PathValue("org"), r.PathValue("member")
	if _, err := store.Modify(ctx, s.st.Orgs, orgKey(slug), func(o *api.Org) error {
		i := slices.IndexFunc(o.Members, func(m api.OrgMember) bool { return m.Name == member })
		if i < 0 {
			return errf(http.StatusNotFound, "%s is not a member of %s; perch orgs list shows its members", member, slug)
		}
		o.Members = slices.Delete(o.Members, i, i+1)
		return nil
	}); err != nil {
		s.fail(w, r, err)
		return
	}
	recs, err := s.orgTokens(ctx, slug)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	for _, t := range recs {
		if t.Member == member {
			if err := s.st.Tokens.Delete(ctx, auth.RecordKey(t.ID)); err != nil {
				s.fail(w, r, fmt.Errorf("revoke token %s of %s: %w", t.ID, member, err))
				return
			}
		}
	}
	s.log.Info("member removed", "org", slug, "member", member)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) orgTokens(ctx context.Context, slug string) ([]auth.TokenRecord, error) {
	all, err := store.List[auth.TokenRecord](ctx, s.st.Tokens, auth.RecordKey("*"))
	if err != nil {
		return nil, err
	}
	out := slices.DeleteFunc(all, func(t auth.TokenRecord) bool { return t.Org != slug })
	slices.SortFunc(out, func(a, b auth.TokenRecord) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out, nil
}

func tokenView(t auth.TokenRecord) api.Token {
	return api.Token{ID: t.ID, Org: t.Org, Kind: t.Kind, Name: t.Name, Member: t.Member, App: t.App, Expires: t.Expires, CreatedAt: t.CreatedAt, CreatedBy: t.CreatedBy}
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	recs, err := s.orgTokens(r.Context(), r.PathValue("org"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := []api.Token{}
	for _, t := range recs {
		out = append(out, tokenView(t))
	}
	writeJSON(w, http.StatusOK, out)
}

// mintToken stores rec under a new id and returns the root token, its
// caveats being rec's app, kind and expiry.
func (s *Server) mintToken(ctx context.Context, rec auth.TokenRecord) (api.NewToken, error) {
	rec.ID = randHex(8)
	rec.CreatedAt = time.Now().UTC()
	var cav []string
	if rec.App != "" {
		cav = append(cav, auth.AppCaveat(rec.App))
	}
	if rec.Kind == auth.TokenReadOnly {
		cav = append(cav, auth.ReadOnlyCaveat)
	}
	if !rec.Expires.IsZero() {
		cav = append(cav, auth.ExpiresCaveat(rec.Expires))
	}
	tok, err := s.tokens.Mint(rec.ID, cav...)
	if err != nil {
		return api.NewToken{}, err
	}
	if _, err := store.Create(ctx, s.st.Tokens, auth.RecordKey(rec.ID), rec); err != nil {
		return api.NewToken{}, fmt.Errorf("store token %s: %w", rec.ID, err)
	}
	return api.NewToken{Token: tokenView(rec), Secret: tok}, nil
}

// MintOrgToken makes a token of organisation org that can do all a member
// does (a dev world's world.json carries one). The organisation is created
// if it does not exist.
func (s *Server) MintOrgToken(ctx context.Context, org, name string) (string, error) {
	if err := s.ensureOrg(ctx, org); err != nil {
		return "", err
	}
	t, err := s.mintToken(ctx, auth.TokenRecord{Org: org, Kind: auth.TokenOrg, Name: name, CreatedBy: "admin"})
	return t.Secret, err
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req api.CreateTokenRequest
	if err := decodeStrict(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, slug := r.Context(), r.PathValue("org")
	if _, err := s.org(ctx, slug); err != nil {
		s.fail(w, r, err)
		return
	}
	exp, err := expiryOf(req.ExpiresIn)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	switch req.Kind {
	case auth.TokenOrg, auth.TokenReadOnly:
		if req.App != "" {
			s.fail(w, r, errf(http.StatusBadRequest, "a %s token is for the whole organisation; leave app out, or make a deploy token", req.Kind))
			return
		}
	case auth.TokenDeploy:
		a, err := s.app(ctx, req.App)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if a.Org != slug {
			s.fail(w, r, errf(http.StatusForbidden, "app %s is not in organisation %s; a deploy token is for an app of its organisation", req.App, slug))
			return
		}
	default:
		s.fail(w, r, errf(http.StatusBadRequest, "token kind %q is not one of org, deploy (with app) or readonly", req.Kind))
		return
	}
	t, err := s.mintToken(ctx, auth.TokenRecord{Org: slug, Kind: req.Kind, App: req.App, Name: req.Name, Expires: exp, CreatedBy: tokenName(r)})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("token created", "org", slug, "kind", req.Kind, "app", req.App, "token", t.ID)
	writeJSON(w, http.StatusCreated, t)
}

// revokeToken deletes a root token's record: it and every token narrowed
// from it are refused from the next request on.
func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	ctx, slug, id := r.Context(), r.PathValue("org"), r.PathValue("id")
	var rec auth.TokenRecord
	err := store.ErrNotFound
	if tokenIDRE.MatchString(id) {
		rec, _, err = store.Get[auth.TokenRecord](ctx, s.st.Tokens, auth.RecordKey(id))
	}
	if errors.Is(err, store.ErrNotFound) || err == nil && rec.Org != slug {
		s.fail(w, r, errf(http.StatusNotFound, "organisation %s has no token %s; perch tokens list shows its tokens", slug, id))
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.st.Tokens.Delete(ctx, auth.RecordKey(id)); err != nil {
		s.fail(w, r, fmt.Errorf("revoke token %s: %w", id, err))
		return
	}
	s.log.Info("token revoked", "org", slug, "token", id, "by", tokenName(r))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	p := principalOf(r)
	writeJSON(w, http.StatusOK, api.Whoami{Kind: string(p.Kind), Org: p.Org, TokenID: p.TokenID, Name: p.Name, Caveats: p.Caveats()})
}
