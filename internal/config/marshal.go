package config

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/perchhq/perch/internal/api"
)

// New is the config `perch launch` writes for a new app: its image, the
// regions to deploy to (the first is the primary region), an HTTP service
// on internal port 8080, and the smallest VM.
func New(app, image string, regions []string) *Config {
	c := &Config{
		App:         app,
		Regions:     slices.Clone(regions),
		Build:       Build{Image: image},
		HTTPService: &HTTPService{InternalPort: 8080},
		VMs:         []VM{{MemoryMB: 256, CPUs: 1}},
	}
	if len(regions) > 0 {
		c.PrimaryRegion = regions[0]
	}
	return c
}

const header = `# perch.toml: how Perch runs this app.
#
# The format is Fly.io's fly.toml (https://fly.io/docs/reference/configuration/),
# so the same file works with fly. Perch adds "regions": where perch deploy
# places machines. Keys Perch does not know yet are warned about and ignored.

`

// Marshal writes the config as perch.toml, with a comment header. Parse
// reads back the same Config.
func (c *Config) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString(header)
	enc := toml.NewEncoder(&buf).SetIndentTables(true)
	if err := enc.Encode(c.file()); err != nil {
		return nil, fmt.Errorf("config: marshal: %w", err)
	}
	return buf.Bytes(), nil
}

// Write writes the config to path, replacing the file in one step so a
// crash never leaves half a file.
func (c *Config) Write(path string) error {
	data, err := c.Marshal()
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".perch.toml-*")
	if err != nil {
		return fmt.Errorf("config: write: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("config: write: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("config: write: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("config: write: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("config: write: %w", err)
	}
	return nil
}

// The file* types are the TOML shape of Config, in the order fly launch
// writes keys.
type fileConfig struct {
	App           string            `toml:"app,omitempty"`
	PrimaryRegion string            `toml:"primary_region,omitempty"`
	Regions       []string          `toml:"regions,omitempty"`
	KillSignal    string            `toml:"kill_signal,omitempty"`
	KillTimeout   string            `toml:"kill_timeout,omitempty"`
	Experimental  *fileExperimental `toml:"experimental,omitempty"`
	Build         *fileBuild        `toml:"build,omitempty"`
	Env           map[string]string `toml:"env,omitempty"`
	Processes     map[string]string `toml:"processes,omitempty"`
	HTTPService   *fileHTTPService  `toml:"http_service,omitempty"`
	Services      []fileService     `toml:"services,omitempty"`
	VM            []fileVM          `toml:"vm,omitempty"`
	Deploy        *fileDeploy       `toml:"deploy,omitempty"`
	Restart       []fileRestart     `toml:"restart,omitempty"`
	Statics       []fileStatic      `toml:"statics,omitempty"`
	Mounts        []fileMount       `toml:"mounts,omitempty"`
	Files         []fileFile        `toml:"files,omitempty"`
}

type fileStatic struct {
	GuestPath     string `toml:"guest_path"`
	URLPrefix     string `toml:"url_prefix"`
	IndexDocument string `toml:"index_document,omitempty"`
}

type fileFile struct {
	GuestPath  string   `toml:"guest_path"`
	RawValue   string   `toml:"raw_value,omitempty"`
	LocalPath  string   `toml:"local_path,omitempty"`
	SecretName string   `toml:"secret_name,omitempty"`
	Processes  []string `toml:"processes,omitempty"`
}

type fileMount struct {
	Source             string   `toml:"source"`
	Destination        string   `toml:"destination"`
	InitialSize        string   `toml:"initial_size,omitempty"`
	SnapshotRetention  int      `toml:"snapshot_retention,omitempty"`
	ScheduledSnapshots *bool    `toml:"scheduled_snapshots,omitempty"`
	Processes          []string `toml:"processes,omitempty"`
}

type fileExperimental struct {
	Cmd        []string `toml:"cmd,omitempty"`
	Entrypoint []string `toml:"entrypoint,omitempty"`
	Exec       []string `toml:"exec,omitempty"`
}

type fileBuild struct {
	Image      string            `toml:"image,omitempty"`
	Dockerfile string            `toml:"dockerfile,omitempty"`
	Target     string            `toml:"build-target,omitempty"`
	Args       map[string]string `toml:"args,omitempty"`
}

type fileHTTPService struct {
	InternalPort       int              `toml:"internal_port"`
	ForceHTTPS         bool             `toml:"force_https"`
	AutoStopMachines   string           `toml:"auto_stop_machines,omitempty"`
	AutoStartMachines  *bool            `toml:"auto_start_machines,omitempty"`
	MinMachinesRunning int              `toml:"min_machines_running,omitempty"`
	IdleTimeout        string           `toml:"idle_timeout,omitempty"`
	Processes          []string         `toml:"processes,omitempty"`
	Concurrency        *fileConcurrency `toml:"concurrency,omitempty"`
	Checks             []fileCheck      `toml:"checks,omitempty"`
	TLSOptions         *fileTLSOptions  `toml:"tls_options,omitempty"`
	HTTPOptions        *fileHTTPOptions `toml:"http_options,omitempty"`
}

type fileService struct {
	Protocol           string           `toml:"protocol"`
	InternalPort       int              `toml:"internal_port"`
	AutoStopMachines   string           `toml:"auto_stop_machines,omitempty"`
	AutoStartMachines  *bool            `toml:"auto_start_machines,omitempty"`
	MinMachinesRunning int              `toml:"min_machines_running,omitempty"`
	IdleTimeout        string           `toml:"idle_timeout,omitempty"`
	Processes          []string         `toml:"processes,omitempty"`
	Ports              []filePort       `toml:"ports,omitempty"`
	Concurrency        *fileConcurrency `toml:"concurrency,omitempty"`
	TCPChecks          []fileCheck      `toml:"tcp_checks,omitempty"`
	HTTPChecks         []fileCheck      `toml:"http_checks,omitempty"`
}

type filePort struct {
	Port              int                    `toml:"port"`
	Handlers          []string               `toml:"handlers,omitempty"`
	ForceHTTPS        bool                   `toml:"force_https,omitempty"`
	TLSOptions        *fileTLSOptions        `toml:"tls_options,omitempty"`
	HTTPOptions       *fileHTTPOptions       `toml:"http_options,omitempty"`
	ProxyProtoOptions *fileProxyProtoOptions `toml:"proxy_proto_options,omitempty"`
}

type fileTLSOptions struct {
	ALPN     []string `toml:"alpn,omitempty"`
	Versions []string `toml:"versions,omitempty"`
}

type fileHTTPOptions struct {
	H2Backend bool `toml:"h2_backend,omitempty"`
}

type fileProxyProtoOptions struct {
	Version string `toml:"version,omitempty"`
}

type fileConcurrency struct {
	Type      string `toml:"type,omitempty"`
	SoftLimit int    `toml:"soft_limit,omitempty"`
	HardLimit int    `toml:"hard_limit,omitempty"`
}

type fileVM struct {
	Size      string   `toml:"size,omitempty"`
	Memory    string   `toml:"memory,omitempty"`
	CPUKind   string   `toml:"cpu_kind,omitempty"`
	CPUs      int      `toml:"cpus,omitempty"`
	Runtime   string   `toml:"runtime,omitempty"`
	Processes []string `toml:"processes,omitempty"`
}

type fileDeploy struct {
	Strategy              string  `toml:"strategy,omitempty"`
	ReleaseCommand        string  `toml:"release_command,omitempty"`
	ReleaseCommandTimeout string  `toml:"release_command_timeout,omitempty"`
	ReleaseCommandVM      *fileVM `toml:"release_command_vm,omitempty"`
}

type fileRestart struct {
	Policy    string   `toml:"policy,omitempty"`
	Retries   int      `toml:"retries,omitempty"`
	Processes []string `toml:"processes,omitempty"`
}

func (c *Config) file() fileConfig {
	f := fileConfig{
		App:           c.App,
		PrimaryRegion: c.PrimaryRegion,
		Regions:       c.Regions,
		KillSignal:    c.KillSignal,
		Env:           c.Env,
		Processes:     c.Processes,
	}
	if c.KillTimeout != 0 {
		f.KillTimeout = c.KillTimeout.String()
		if c.KillTimeout%time.Second == 0 && c.KillTimeout < time.Minute {
			f.KillTimeout = fmt.Sprintf("%ds", c.KillTimeout/time.Second)
		}
	}
	if b := c.Build; b.Image != "" || b.Dockerfile != "" || b.Target != "" || len(b.Args) > 0 {
		f.Build = &fileBuild{Image: b.Image, Dockerfile: b.Dockerfile, Target: b.Target, Args: b.Args}
	}
	if in := c.Init; len(in.Cmd)+len(in.Entrypoint)+len(in.Exec) > 0 {
		f.Experimental = &fileExperimental{Cmd: in.Cmd, Entrypoint: in.Entrypoint, Exec: in.Exec}
	}
	if h := c.HTTPService; h != nil {
		f.HTTPService = &fileHTTPService{
			InternalPort:       h.InternalPort,
			ForceHTTPS:         h.ForceHTTPS,
			AutoStopMachines:   h.AutoStopMachines,
			AutoStartMachines:  h.AutoStartMachines,
			MinMachinesRunning: h.MinMachinesRunning,
			IdleTimeout:        durationText(h.IdleTimeout),
			Processes:          h.Processes,
			Concurrency:        fileConc(h.Concurrency),
			Checks:             fileChecks(h.Checks, "http"),
			TLSOptions:         fileTLS(h.TLSOptions),
			HTTPOptions:        fileHTTP(h.HTTPOptions),
		}
	}
	for _, s := range c.Services {
		fs := fileService{
			Protocol:           s.Protocol,
			InternalPort:       s.InternalPort,
			AutoStopMachines:   s.AutoStopMachines,
			AutoStartMachines:  s.AutoStartMachines,
			MinMachinesRunning: s.MinMachinesRunning,
			IdleTimeout:        durationText(s.IdleTimeout),
			Processes:          s.Processes,
			Concurrency:        fileConc(s.Concurrency),
			TCPChecks:          fileChecks(s.Checks, "tcp"),
			HTTPChecks:         fileChecks(s.Checks, "http"),
		}
		for _, p := range s.Ports {
			fp := filePort{Port: p.Port, Handlers: p.Handlers, ForceHTTPS: p.ForceHTTPS,
				TLSOptions: fileTLS(p.TLSOptions), HTTPOptions: fileHTTP(p.HTTPOptions)}
			if o := p.ProxyProtoOptions; o != nil {
				fp.ProxyProtoOptions = &fileProxyProtoOptions{Version: o.Version}
			}
			fs.Ports = append(fs.Ports, fp)
		}
		f.Services = append(f.Services, fs)
	}
	for _, v := range c.VMs {
		f.VM = append(f.VM, toFileVM(v))
	}
	if c.Deploy.Strategy != "" || len(c.Deploy.ReleaseCommand) > 0 {
		f.Deploy = &fileDeploy{Strategy: c.Deploy.Strategy, ReleaseCommand: shellJoin(c.Deploy.ReleaseCommand)}
		if t := c.Deploy.ReleaseCommandTimeout; t > 0 {
			f.Deploy.ReleaseCommandTimeout = t.String()
		}
		if v := c.Deploy.ReleaseCommandVM; v != nil {
			fv := toFileVM(*v)
			f.Deploy.ReleaseCommandVM = &fv
		}
	}
	for _, r := range c.Restarts {
		policy := r.Policy
		if policy == api.RestartNo {
			policy = "never" // Fly's word for it
		}
		f.Restart = append(f.Restart, fileRestart{Policy: policy, Retries: r.MaxRetries, Processes: r.Processes})
	}
	for _, st := range c.Statics {
		f.Statics = append(f.Statics, fileStatic{GuestPath: st.GuestPath, URLPrefix: st.URLPrefix, IndexDocument: st.IndexDocument})
	}
	for _, fl := range c.Files {
		ff := fileFile{GuestPath: fl.GuestPath, LocalPath: fl.LocalPath, SecretName: fl.SecretName, Processes: fl.Processes}
		if fl.LocalPath == "" {
			ff.RawValue = fl.RawValue
		}
		f.Files = append(f.Files, ff)
	}
	for _, m := range c.Mounts {
		fm := fileMount{Source: m.Source, Destination: m.Destination, SnapshotRetention: m.SnapshotRetention, ScheduledSnapshots: m.ScheduledSnapshots, Processes: m.Processes}
		if m.InitialSizeGB > 0 {
			fm.InitialSize = fmt.Sprintf("%dgb", m.InitialSizeGB)
		}
		f.Mounts = append(f.Mounts, fm)
	}
	return f
}

func toFileVM(v VM) fileVM {
	fv := fileVM{Size: v.Size, CPUKind: v.CPUKind, CPUs: v.CPUs, Runtime: v.Runtime, Processes: v.Processes}
	if v.MemoryMB != 0 {
		fv.Memory = formatMemory(v.MemoryMB)
	}
	return fv
}

func fileConc(c *api.Concurrency) *fileConcurrency {
	if c == nil {
		return nil
	}
	fc := fileConcurrency(*c)
	return &fc
}

// durationText writes a duration the way the file reads it back; "" for 0.
func durationText(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}
