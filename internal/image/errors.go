package image

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Errors a pull can fail with, for errors.Is. The errors' messages say what
// to do about them.
var (
	ErrImageNotFound       = errors.New("image not found")
	ErrUnauthorized        = errors.New("registry refused access")
	ErrRegistryUnreachable = errors.New("registry unreachable")
)

// pullError gives a failed pull a message for people while keeping both
// the category and the underlying error for errors.Is and errors.As.
type pullError struct {
	kind error
	msg  string
	err  error
}

func (e *pullError) Error() string   { return e.msg }
func (e *pullError) Unwrap() []error { return []error{e.kind, e.err} }

// describe turns an error from talking to ref's registry into one a user
// can act on.
func describe(ref name.Reference, err error) error {
	reg := ref.Context().RegistryStr()
	var terr *transport.Error
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("pull %s: %w", ref, err)
	case errors.As(err, &terr) && notFound(terr):
		return &pullError{ErrImageNotFound, fmt.Sprintf("image %s not found: %s does not exist in registry %s; check the name and tag, and that the image was pushed",
			ref, what(ref), reg), err}
	case errors.As(err, &terr) && refused(terr):
		return &pullError{ErrUnauthorized, fmt.Sprintf("registry %s refused to serve %s (HTTP %d %s): check the token (run perch auth login again); a private registry needs its own credentials",
			reg, ref, terr.StatusCode, http.StatusText(terr.StatusCode)), err}
	case errors.As(err, &terr):
		return fmt.Errorf("pull %s: registry %s answered with an error: %w", ref, reg, err)
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return &pullError{ErrRegistryUnreachable, fmt.Sprintf("registry %s speaks plain HTTP, not HTTPS: allow it as an insecure registry to pull %s", reg, ref), err}
	case isNetError(err):
		return &pullError{ErrRegistryUnreachable, fmt.Sprintf("cannot reach registry %s to pull %s: %v; check the address and that the registry is running", reg, ref, err), err}
	}
	return fmt.Errorf("pull %s: %w", ref, err)
}

func notFound(e *transport.Error) bool {
	return e.StatusCode == http.StatusNotFound ||
		hasCode(e, transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode)
}

func refused(e *transport.Error) bool {
	return e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden ||
		hasCode(e, transport.UnauthorizedErrorCode, transport.DeniedErrorCode)
}

func hasCode(e *transport.Error, codes ...transport.ErrorCode) bool {
	for _, d := range e.Errors {
		for _, c := range codes {
			if d.Code == c {
				return true
			}
		}
	}
	return false
}

// what names the part of ref that is missing, as precisely as ref allows.
func what(ref name.Reference) string {
	repo := ref.Context().RepositoryStr()
	switch r := ref.(type) {
	case name.Tag:
		return fmt.Sprintf("tag %q of repository %q", r.TagStr(), repo)
	case name.Digest:
		return fmt.Sprintf("digest %s in repository %q", r.DigestStr(), repo)
	}
	return fmt.Sprintf("repository %q", repo)
}

func isNetError(err error) bool {
	var op *net.OpError
	var dns *net.DNSError
	return errors.As(err, &op) || errors.As(err, &dns)
}
