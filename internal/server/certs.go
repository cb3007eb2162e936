package server

import (
	"errors"
	"net/http"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/certs"
)

// addCertificate asks for a certificate; 202 while it is being issued, 200
// when the app already has it.
func (s *Server) addCertificate(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req api.AddCertificateRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	rec, err := s.certs.Add(r.Context(), a.Name, req.Hostname)
	if err != nil {
		s.fail(w, r, certError(err))
		return
	}
	code := http.StatusOK
	if rec.Status == certs.StatusPending {
		code = http.StatusAccepted
	}
	writeJSON(w, code, rec)
}

func (s *Server) listCertificates(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	recs, err := s.certs.List(r.Context(), a.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, recs)
}

func (s *Server) getCertificate(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rec, err := s.certs.Get(r.Context(), a.Name, r.PathValue("host"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

func (s *Server) removeCertificate(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.certs.Remove(r.Context(), a.Name, r.PathValue("host")); err != nil {
		s.fail(w, r, certError(err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

// certError gives the certificate manager's refusals their status codes.
func certError(err error) error {
	switch {
	case errors.Is(err, certs.ErrInvalid):
		return errf(http.StatusBadRequest, "%s", err.Error())
	case errors.Is(err, certs.ErrTaken):
		return errf(http.StatusConflict, "%s", err.Error())
	case errors.Is(err, certs.ErrNoCA):
		return errf(http.StatusUnprocessableEntity, "%s", err.Error())
	}
	return err
}
