package server

import (
	"net/http"

	"github.com/perchhq/perch/internal/api"
)

// validateStatics refuses statics the edges could not serve: a bucket,
// a guest_path outside the image, a url_prefix that is not a path, or one
// prefix twice. Whether guest_path exists in the image is checked by the
// host when it unpacks the image (the machine fails with the reason).
func validateStatics(sts []api.Static) error {
	seen := map[string]bool{}
	for i, st := range sts {
		if err := st.Check(); err != nil {
			return errf(http.StatusBadRequest, "config.statics[%d]: %v", i, err)
		}
		if seen[st.URLPrefix] {
			return errf(http.StatusBadRequest, "config.statics[%d]: url_prefix %q is used twice; give each static its own prefix", i, st.URLPrefix)
		}
		seen[st.URLPrefix] = true
	}
	return nil
}
