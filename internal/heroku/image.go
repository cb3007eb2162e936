package heroku

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// StackUID is the user dynos run as on heroku-24 (heroku, 1001:1001).
const StackUID = 1001

// ImageOptions say what BuildImage makes.
type ImageOptions struct {
	Base         v1.Image // the stack's image
	SlugPath     string   // the slug's tar.gz, checksum checked
	ProcessTypes map[string]string
	Stack        string            // e.g. "heroku-24": the dyno's STACK
	Labels       map[string]string // provenance: app, release, slug
	// TmpDir holds the app layer's tar while the image is pushed ("": the
	// system's); the caller removes it after.
	TmpDir string
}

// ImageInfo is what BuildImage decided.
type ImageInfo struct {
	User      string // "uid:gid", or the base's User, or "" (root)
	UserName  string
	AppFiles  int    // entries of ./app in the slug
	LayerPath string // the app layer's tar (remove once pushed)
}

// BuildImage is the base image plus two layers: the slug's ./app at /app,
// owned by the stack's user, and the launcher with the process types'
// commands. The entrypoint is the launcher, the cmd "web".
func BuildImage(o ImageOptions) (v1.Image, *ImageInfo, error) {
	if len(o.ProcessTypes) == 0 {
		return nil, nil, errors.New("the slug has no process types: add a Procfile to the app on Heroku")
	}
	cf, err := o.Base.ConfigFile()
	if err != nil {
		return nil, nil, fmt.Errorf("base image config: %w", err)
	}
	info := &ImageInfo{}
	uid, gid := 0, 0
	if u, ok, err := findUser(o.Base, StackUID); err != nil {
		return nil, nil, err
	} else if ok {
		uid, gid, info.UserName = u.uid, u.gid, u.name
		info.User = fmt.Sprintf("%d:%d", uid, gid)
	} else if cf.Config.User != "" {
		info.User = cf.Config.User // the base's own choice; /app stays root's, readable
	}
	appTar, n, err := appLayer(o.SlugPath, o.TmpDir, uid, gid)
	if err != nil {
		return nil, nil, err
	}
	info.AppFiles, info.LayerPath = n, appTar
	app, err := tarball.LayerFromFile(appTar)
	if err != nil {
		return nil, nil, fmt.Errorf("app layer: %w", err)
	}
	lb, err := launcherLayer(o.ProcessTypes)
	if err != nil {
		return nil, nil, err
	}
	launch, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(lb)), nil })
	if err != nil {
		return nil, nil, fmt.Errorf("launcher layer: %w", err)
	}
	img, err := mutate.Append(o.Base,
		mutate.Addendum{Layer: app, History: v1.History{CreatedBy: "perch launch --from-heroku: the slug's ./app at /app", Comment: o.Labels["heroku.slug"]}},
		mutate.Addendum{Layer: launch, History: v1.History{CreatedBy: "perch launch --from-heroku: the dyno launcher " + LauncherPath}},
	)
	if err != nil {
		return nil, nil, fmt.Errorf("image: %w", err)
	}
	cf, err = img.ConfigFile()
	if err != nil {
		return nil, nil, err
	}
	cf = cf.DeepCopy()
	c := &cf.Config
	c.Entrypoint = []string{LauncherPath}
	c.Cmd = []string{"web"}
	c.WorkingDir = "/app"
	c.User = info.User
	c.StopSignal = "SIGTERM"
	env := []string{"HOME=/app", "STACK=" + o.Stack}
	if !slices.ContainsFunc(c.Env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	c.Env = mergeEnv(c.Env, env)
	if c.Labels == nil {
		c.Labels = map[string]string{}
	}
	maps.Copy(c.Labels, o.Labels)
	c.ExposedPorts = map[string]struct{}{strconv.Itoa(DefaultPort) + "/tcp": {}}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, nil, fmt.Errorf("image config: %w", err)
	}
	return img, info, nil
}

func mergeEnv(base, add []string) []string {
	out := slices.Clone(base)
	for _, kv := range add {
		k, _, _ := strings.Cut(kv, "=")
		out = slices.DeleteFunc(out, func(e string) bool { return strings.HasPrefix(e, k+"=") })
		out = append(out, kv)
	}
	return out
}

type passwdUser struct {
	name     string
	uid, gid int
}

// findUser looks for uid in the base image's /etc/passwd (the topmost
// layer holding it).
func findUser(img v1.Image, uid int) (passwdUser, bool, error) {
	layers, err := img.Layers()
	if err != nil {
		return passwdUser{}, false, fmt.Errorf("base image: %w", err)
	}
	for i := len(layers) - 1; i >= 0; i-- {
		rc, err := layers[i].Uncompressed()
		if err != nil {
			return passwdUser{}, false, fmt.Errorf("base image layer: %w", err)
		}
		data, found, err := readTarFile(rc, "etc/passwd")
		rc.Close()
		if err != nil {
			return passwdUser{}, false, fmt.Errorf("base image: reading /etc/passwd: %w", err)
		}
		if !found {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			f := strings.Split(sc.Text(), ":")
			if len(f) < 4 {
				continue
			}
			u, err1 := strconv.Atoi(f[2])
			g, err2 := strconv.Atoi(f[3])
			if err1 == nil && err2 == nil && u == uid {
				return passwdUser{name: f[0], uid: u, gid: g}, true, nil
			}
		}
		return passwdUser{}, false, nil
	}
	return passwdUser{}, false, nil
}

func readTarFile(r io.Reader, name string) ([]byte, bool, error) {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		if strings.TrimPrefix(path.Clean("/"+h.Name), "/") == name && h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(io.LimitReader(tr, 4<<20))
			return b, true, err
		}
	}
}

// appLayer rewrites the slug's tar.gz as an uncompressed tar of app/...
// owned by uid:gid, in a file in tmp. Entries outside ./app (Heroku's
// slugs have none) are left out; one escaping it is refused.
func appLayer(slugPath, tmp string, uid, gid int) (string, int, error) {
	in, err := os.Open(slugPath)
	if err != nil {
		return "", 0, fmt.Errorf("slug: %w", err)
	}
	defer in.Close()
	zr, err := gzip.NewReader(bufio.NewReader(in))
	if err != nil {
		return "", 0, fmt.Errorf("slug: not a gzip tar (Heroku slugs are tar.gz of ./app): %w", err)
	}
	out, err := os.CreateTemp(tmp, "app-layer-*.tar")
	if err != nil {
		return "", 0, fmt.Errorf("app layer: %w", err)
	}
	fail := func(err error) (string, int, error) {
		out.Close()
		os.Remove(out.Name())
		return "", 0, err
	}
	bw := bufio.NewWriterSize(out, 1<<20)
	tw := tar.NewWriter(bw)
	tr := tar.NewReader(zr)
	n := 0
	sawRoot := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fail(fmt.Errorf("slug: reading the tar: %w", err))
		}
		name, ok := inApp(h.Name)
		if !ok {
			if strings.Contains(h.Name, "..") {
				return fail(fmt.Errorf("slug: entry %q leaves ./app; the slug is not as Heroku makes them", h.Name))
			}
			continue
		}
		if h.Typeflag == tar.TypeLink {
			ln, ok := inApp(h.Linkname)
			if !ok {
				return fail(fmt.Errorf("slug: hard link %q points outside ./app (%q)", h.Name, h.Linkname))
			}
			h.Linkname = ln
		}
		if name == "app" {
			sawRoot = true
			if h.Typeflag != tar.TypeDir {
				return fail(errors.New("slug: ./app is not a directory"))
			}
		}
		if !sawRoot {
			// Parents first, as a tar for an image must have them.
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "app/", Mode: 0o755, Uid: uid, Gid: gid, ModTime: h.ModTime}); err != nil {
				return fail(err)
			}
			sawRoot = true
		}
		h.Name = name
		if h.Typeflag == tar.TypeDir {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = uid, gid, "", ""
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return fail(fmt.Errorf("app layer: %w", err))
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, tr); err != nil {
				return fail(fmt.Errorf("slug: %w", err))
			}
		}
		n++
	}
	if n == 0 {
		return fail(errors.New("slug: no ./app in it; a Heroku slug is a tar.gz of ./app (https://devcenter.heroku.com/articles/platform-api-deploying-slugs)"))
	}
	if err := tw.Close(); err != nil {
		return fail(err)
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	if err := out.Close(); err != nil {
		return fail(err)
	}
	return out.Name(), n, nil
}

// inApp is a slug entry's path in the image ("app/...") and whether it is
// inside ./app.
func inApp(name string) (string, bool) {
	if strings.Contains("/"+name+"/", "/../") {
		return "", false
	}
	p := strings.TrimPrefix(path.Clean("/"+name), "/")
	if p == "app" || strings.HasPrefix(p, "app/") {
		return p, true
	}
	return "", false
}

// launcherLayer is the launcher and one file per process type.
func launcherLayer(types map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := []string{"perch/", "perch/heroku/", "perch/heroku/process-types/"}
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755}); err != nil {
			return nil, err
		}
	}
	file := func(name string, mode int64, data string) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}); err != nil {
			return err
		}
		_, err := tw.Write([]byte(data))
		return err
	}
	if err := file(strings.TrimPrefix(LauncherPath, "/"), 0o755, launcher); err != nil {
		return nil, err
	}
	for _, t := range slices.Sorted(maps.Keys(types)) {
		if !processType.MatchString(t) {
			return nil, fmt.Errorf("the slug's process type %q is not a name Heroku allows (letters, digits, _ and -)", t)
		}
		if err := file(strings.TrimPrefix(ProcessTypesDir, "/")+"/"+t, 0o644, types[t]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
