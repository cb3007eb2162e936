package config

import (
	"github.com/perchhq/perch/internal/api"
)

// statics reads [[statics]]: directories of the image the edges serve
// under a URL prefix. A bucket (tigris_bucket) is refused: Perch serves
// statics only from the image.
func (d *decoder) statics(top *section) []api.Static {
	var out []api.Static
	for _, s := range top.subs("statics") {
		var st api.Static
		var p path
		st.GuestPath, p, _ = s.str("guest_path")
		st.URLPrefix, _, _ = s.str("url_prefix")
		st.TigrisBucket, _, _ = s.str("tigris_bucket")
		st.IndexDocument, _, _ = s.str("index_document")
		s.done()
		if st.TigrisBucket == "" && (st.GuestPath == "" || st.URLPrefix == "") {
			d.errorf(s.p, "[[statics]] needs guest_path and url_prefix, e.g. guest_path = \"/app/public\" and url_prefix = \"/static\"")
			continue
		}
		if err := st.Check(); err != nil {
			if st.TigrisBucket != "" {
				_, p, _ = s.get("tigris_bucket")
			} else if (api.Static{GuestPath: st.GuestPath, URLPrefix: "/"}).Check() == nil {
				_, p, _ = s.get("url_prefix")
			}
			d.errorf(p, "[[statics]] %v", err)
			continue
		}
		out = append(out, st)
	}
	return out
}

// staticsFor are the statics of a machine of group: those of the app when
// the group serves HTTP (a service with the "http" handler), else none.
func (c *Config) staticsFor(mc api.MachineConfig) []api.Static {
	for _, svc := range mc.Services {
		for _, p := range svc.Ports {
			for _, h := range p.Handlers {
				if h == "http" && len(c.Statics) > 0 {
					out := make([]api.Static, len(c.Statics))
					copy(out, c.Statics)
					return out
				}
			}
		}
	}
	return nil
}
