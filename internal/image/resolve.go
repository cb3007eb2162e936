package image

import (
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// selectImage returns the image desc names, picking plat's from an index.
func selectImage(ref name.Reference, desc *remote.Descriptor, plat v1.Platform) (v1.Image, error) {
	if !desc.MediaType.IsIndex() {
		img, err := desc.Image()
		if err != nil {
			return nil, describe(ref, err)
		}
		return img, nil
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return nil, describe(ref, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, describe(ref, err)
	}
	var have []string
	for _, m := range im.Manifests {
		if m.Platform == nil || !m.MediaType.IsImage() {
			continue
		}
		if m.Platform.Satisfies(plat) {
			img, err := idx.Image(m.Digest)
			if err != nil {
				return nil, describe(ref, err)
			}
			return img, nil
		}
		have = append(have, m.Platform.String())
	}
	return nil, fmt.Errorf("image %s has no %s variant (it has: %s); build or push one for %s",
		ref, plat, strings.Join(have, ", "), plat)
}

func parsePlatform(s string) (v1.Platform, error) {
	if s == "" {
		return v1.Platform{OS: "linux", Architecture: "amd64"}, nil
	}
	p, err := v1.ParsePlatform(s)
	if err != nil {
		return v1.Platform{}, fmt.Errorf("image: platform %q: %w (want os/arch, e.g. linux/amd64)", s, err)
	}
	return *p, nil
}

// tokenKeychain sends each registry its Perch token, and nothing to others.
type tokenKeychain map[string]string

func (k tokenKeychain) Resolve(res authn.Resource) (authn.Authenticator, error) {
	if tok := k[res.RegistryStr()]; tok != "" {
		return &authn.Basic{Username: "x", Password: tok}, nil
	}
	return authn.Anonymous, nil
}
