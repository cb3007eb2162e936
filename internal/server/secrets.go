package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/mesh"
	"github.com/perchhq/perch/internal/secrets"
	"github.com/perchhq/perch/internal/store"
)

// App secrets (docs/secrets.md): values are encrypted at rest under the
// app's data key, itself wrapped by the master key in the data dir, and
// reach a machine only sealed to the mesh key of the host it is placed on
// (sealSecrets). No value is ever logged or answered.

func (s *Server) listSecrets(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rec, _, err := store.Get[store.AppSecrets](r.Context(), s.st.Secrets, a.Name)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, secretsView(rec))
}

func secretsView(rec store.AppSecrets) api.AppSecrets {
	out := api.AppSecrets{Secrets: []api.AppSecret{}, Version: rec.Version}
	for _, sr := range rec.Secrets {
		out.Secrets = append(out.Secrets, api.AppSecret{Name: sr.Name, Digest: sr.Digest, CreatedAt: sr.CreatedAt, UpdatedAt: sr.UpdatedAt})
	}
	return out
}

// updateSecrets is Fly's POST /apps/{app}/secrets {"values": {NAME:
// "value" or null}}: every name checked before anything is written.
func (s *Server) updateSecrets(w http.ResponseWriter, r *http.Request) {
	var req api.UpdateSecretsRequest
	if err := decodeStrict(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if len(req.Values) == 0 {
		s.fail(w, r, errf(http.StatusBadRequest, `values is empty: send {"values": {"NAME": "value"}} to set, null to unset`))
		return
	}
	set, unset := map[string][]byte{}, []string{}
	for name, v := range req.Values {
		if v == nil {
			unset = append(unset, name)
		} else {
			set[name] = []byte(*v)
		}
	}
	s.changeSecretsAndAnswer(w, r, set, unset)
}

// setSecret is POST /apps/{app}/secrets/{name} {"value"}.
func (s *Server) setSecret(w http.ResponseWriter, r *http.Request) {
	var req api.SetSecretRequest
	if err := decodeStrict(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	s.changeSecretsAndAnswer(w, r, map[string][]byte{r.PathValue("name"): []byte(req.Value)}, nil)
}

func (s *Server) unsetSecret(w http.ResponseWriter, r *http.Request) {
	s.changeSecretsAndAnswer(w, r, nil, []string{r.PathValue("name")})
}

func (s *Server) changeSecretsAndAnswer(w http.ResponseWriter, r *http.Request, set map[string][]byte, unset []string) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	for name, v := range set {
		if err := secrets.Validate(name, v); err != nil {
			s.fail(w, r, errf(http.StatusBadRequest, "%v", err))
			return
		}
	}
	for _, name := range unset {
		if err := secrets.Validate(name, nil); err != nil {
			s.fail(w, r, errf(http.StatusBadRequest, "%v", err))
			return
		}
	}
	rec, err := s.changeSecrets(r.Context(), a.Name, set, unset)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range set {
			if !yield(n) {
				return
			}
		}
	})
	s.log.Info("secrets changed", "app", a.Name, "set", names, "unset", unset, "version", rec.Version)
	writeJSON(w, http.StatusOK, secretsView(rec))
}

// changeSecrets writes the app's secrets with set's values and without
// unset's names, creating its data key at the first secret.
func (s *Server) changeSecrets(ctx context.Context, app string, set map[string][]byte, unset []string) (store.AppSecrets, error) {
	mk := s.keys.Wrapping()
	dk := secrets.NewKey()
	wrapped, err := secrets.Seal(mk.Key, secrets.DataKeyAAD(app), dk)
	if err != nil {
		return store.AppSecrets{}, err
	}
	fresh := store.AppSecrets{App: app, KeyID: mk.ID, WrappedDataKey: wrapped}
	if _, err := store.Create(ctx, s.st.Secrets, app, fresh); err != nil && !errors.Is(err, store.ErrExists) {
		return store.AppSecrets{}, err
	}
	return store.Modify(ctx, s.st.Secrets, app, func(rec *store.AppSecrets) error {
		dk, err := s.dataKey(*rec)
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		for _, name := range unset {
			rec.Secrets = slices.DeleteFunc(rec.Secrets, func(sr store.SecretRecord) bool { return sr.Name == name })
		}
		for name, v := range set {
			sealed, err := secrets.Seal(dk, secrets.ValueAAD(app, name), v)
			if err != nil {
				return err
			}
			sr := store.SecretRecord{Name: name, Digest: secrets.Digest(dk, name, v), Sealed: sealed, CreatedAt: now, UpdatedAt: now}
			if i := slices.IndexFunc(rec.Secrets, func(o store.SecretRecord) bool { return o.Name == name }); i >= 0 {
				sr.CreatedAt = rec.Secrets[i].CreatedAt
				rec.Secrets[i] = sr
			} else {
				rec.Secrets = append(rec.Secrets, sr)
			}
		}
		slices.SortFunc(rec.Secrets, func(a, b store.SecretRecord) int { return cmpStr(a.Name, b.Name) })
		rec.Version++
		rec.UpdatedAt = now
		return nil
	})
}

// dataKey unwraps an app's data key with the master key that wrapped it.
func (s *Server) dataKey(rec store.AppSecrets) ([]byte, error) {
	mk, ok := s.keys.Get(rec.KeyID)
	if !ok {
		return nil, fmt.Errorf("secrets of app %s are wrapped by master key %s, which this control plane does not have (its data dir has %s): restore that key file", rec.App, rec.KeyID, s.keys.Current.ID)
	}
	dk, err := secrets.Open(mk.Key, secrets.DataKeyAAD(rec.App), rec.WrappedDataKey)
	if err != nil {
		return nil, fmt.Errorf("unwrap the data key of app %s: %w", rec.App, err)
	}
	return dk, nil
}

// appSecretValues decrypts every secret of app (nil without secrets).
func (s *Server) appSecretValues(ctx context.Context, app string) (map[string]string, int64, error) {
	rec, _, err := store.Get[store.AppSecrets](ctx, s.st.Secrets, app)
	if errors.Is(err, store.ErrNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	dk, err := s.dataKey(rec)
	if err != nil {
		return nil, 0, err
	}
	out := make(map[string]string, len(rec.Secrets))
	for _, sr := range rec.Secrets {
		v, err := secrets.Open(dk, secrets.ValueAAD(app, sr.Name), sr.Sealed)
		if err != nil {
			return nil, 0, fmt.Errorf("decrypt secret %s of app %s: %w", sr.Name, app, err)
		}
		out[sr.Name] = string(v)
	}
	return out, rec.Version, nil
}

// sealSecrets resolves the app's secrets for a placed machine and seals
// them to the mesh key of its host: only that host can read them, though
// every agent can read perch_machines. A file naming a secret the app
// does not have is refused here.
func (s *Server) sealSecrets(ctx context.Context, spec *store.MachineSpec, skip bool) error {
	vals, version, err := s.appSecretValues(ctx, spec.App)
	if err != nil {
		return err
	}
	if skip { // skip_secrets
		vals = nil
	}
	for i, f := range spec.Config.Files {
		if f.SecretName != nil {
			if _, ok := vals[*f.SecretName]; !ok {
				return errf(http.StatusBadRequest, "config.files[%d].secret_name %q is not a secret of app %s (or skip_secrets was sent); set it first (perch secrets set %s=...)", i, *f.SecretName, spec.App, *f.SecretName)
			}
		}
	}
	spec.Secrets, spec.SecretsVersion = nil, version
	if len(vals) == 0 {
		return nil
	}
	h, _, err := store.Get[api.Host](ctx, s.st.Hosts, spec.HostID)
	if err != nil {
		return fmt.Errorf("seal secrets for machine %s: host %s: %w", spec.ID, spec.HostID, err)
	}
	var pub mesh.PublicKey
	if err := pub.UnmarshalText([]byte(h.MeshKey)); err != nil || h.MeshKey == "" {
		return fmt.Errorf("seal secrets for machine %s: host %s has no mesh key to seal them to; upgrade and restart its agent", spec.ID, spec.HostID)
	}
	b, err := json.Marshal(store.SealedSecrets{Values: vals})
	if err != nil {
		return fmt.Errorf("seal secrets: %w", err)
	}
	spec.Secrets, err = mesh.SealTo(pub, b)
	return err
}

func (s *Server) deleteSecrets(ctx context.Context, app string) error {
	return store.Delete(ctx, s.st.Secrets, app)
}

// openSecrets loads the master key (created at first start) and finishes
// a rotation a previous run left under way, or starts one when asked.
func (s *Server) openSecrets(ctx context.Context, rotate bool) error {
	k, err := secrets.LoadKeyring(s.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.keys = k
	if rotate || k.Next != nil {
		return s.RotateSecretsKey(ctx)
	}
	return nil
}

// RotateSecretsKey replaces the master key: a new key is written beside
// the old one, every app's data key is re-wrapped with it, and only then
// does it replace the old key on disk. Values are not re-encrypted (their
// data keys do not change). Interrupted, the next start finishes it.
func (s *Server) RotateSecretsKey(ctx context.Context) error {
	if err := s.keys.BeginRotation(); err != nil {
		return err
	}
	next := s.keys.Wrapping()
	recs, err := store.List[store.AppSecrets](ctx, s.st.Secrets, ">")
	if err != nil {
		return fmt.Errorf("rotate secrets key: %w", err)
	}
	for _, rec := range recs {
		if rec.KeyID == next.ID {
			continue
		}
		_, err := store.Modify(ctx, s.st.Secrets, rec.App, func(r *store.AppSecrets) error {
			if r.KeyID == next.ID {
				return nil
			}
			dk, err := s.dataKey(*r)
			if err != nil {
				return err
			}
			w, err := secrets.Seal(next.Key, secrets.DataKeyAAD(r.App), dk)
			if err != nil {
				return err
			}
			r.KeyID, r.WrappedDataKey = next.ID, w
			return nil
		})
		if err != nil {
			return fmt.Errorf("rotate secrets key: app %s: %w", rec.App, err)
		}
	}
	if err := s.keys.FinishRotation(); err != nil {
		return err
	}
	s.log.Info("secrets master key rotated", "key_id", next.ID, "apps", len(recs))
	return nil
}
