package certs

import (
	"crypto/tls"
	"log/slog"
	"strings"

	"github.com/perchhq/perch/internal/store"
)

// certIndex turns the storage bucket's certificate files into the
// certificates an edge serves. certmagic writes a site's key, then its
// certificate, then its metadata, each a separate key: between the first
// two writes of a renewal the key and certificate do not match, so the
// index keeps serving the last pair that did.
type certIndex struct {
	log   *slog.Logger
	files map[string][]byte           // certmagic key → value, .crt and .key files only
	good  map[string]*tls.Certificate // site dir ("certificates/<issuer>/<site>") → last matching pair
}

func newCertIndex(log *slog.Logger) *certIndex {
	return &certIndex{log: log, files: map[string][]byte{}, good: map[string]*tls.Certificate{}}
}

// siteOf parses a certificate file's storage key into its site dir.
func siteOf(kvk string) (dir string, ok bool) {
	key, ok := keyFromKV(kvk)
	if !ok {
		return "", false
	}
	parts := strings.Split(key, "/")
	if len(parts) != 4 || parts[0] != "certificates" {
		return "", false
	}
	site, file := parts[2], parts[3]
	if file != site+".crt" && file != site+".key" {
		return "", false
	}
	return strings.Join(parts[:3], "/"), true
}

// apply takes one change and says whether a certificate file changed.
func (x *certIndex) apply(c store.Change) bool {
	if c.All != nil {
		clear(x.files)
		sites := map[string]bool{}
		for k, v := range c.All {
			if dir, ok := siteOf(k); ok {
				key, _ := keyFromKV(k)
				x.files[key] = v
				sites[dir] = true
			}
		}
		for dir := range x.good {
			if !sites[dir] {
				delete(x.good, dir)
			}
		}
		for dir := range sites {
			x.pair(dir)
		}
		return true
	}
	dir, ok := siteOf(c.Key)
	if !ok {
		return false
	}
	key, _ := keyFromKV(c.Key)
	if c.Deleted {
		delete(x.files, key)
	} else {
		x.files[key] = c.Value
	}
	x.pair(dir)
	return true
}

// pair rebuilds one site's certificate from its files.
func (x *certIndex) pair(dir string) {
	site := dir[strings.LastIndexByte(dir, '/')+1:]
	crt, key := x.files[dir+"/"+site+".crt"], x.files[dir+"/"+site+".key"]
	switch {
	case crt == nil:
		delete(x.good, dir) // removed
	case key == nil:
		// keep the last good pair: the key is being replaced
	default:
		c, err := tls.X509KeyPair(crt, key)
		if err != nil {
			if x.good[dir] == nil {
				x.log.Debug("certificate and key do not match (yet)", "site", dir, "err", err)
			}
			return
		}
		x.good[dir] = &c
	}
}

// serve maps every name of every good certificate to it; when two issuers
// have a certificate for one name, the newer one wins.
func (x *certIndex) serve() *map[string]*tls.Certificate {
	m := make(map[string]*tls.Certificate, len(x.good))
	for _, c := range x.good {
		if c.Leaf == nil {
			continue
		}
		for _, n := range c.Leaf.DNSNames {
			n = strings.ToLower(n)
			if old := m[n]; old != nil && old.Leaf.NotBefore.After(c.Leaf.NotBefore) {
				continue
			}
			m[n] = c
		}
	}
	return &m
}
