package server

// Fly's own client types, written here field for field (Go names and JSON
// types) from superfly/fly-go: machine_types.go (Machine, MachineConfig,
// MachineEvent, MachineLease, LaunchMachineInput, StopMachineInput, ...),
// duration.go (Duration), flaps/flaps_apps.go (App, CreateAppRequest) and
// flaps/flaps_error.go (errorResponse). fly-go is not on the Go module
// proxy, so the tests carry this copy; fields for features Perch does
// not have are kept, so that an answer that filled them wrongly would
// fail to decode. Unexported helpers of fly-go (methods) are left out
// except the JSON (un)marshalling that decides what decodes.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

type flyMachine struct {
	ID                string                   `json:"id,omitempty"`
	Name              string                   `json:"name,omitempty"`
	State             string                   `json:"state,omitempty"`
	Region            string                   `json:"region,omitempty"`
	ImageRef          flyMachineImageRef       `json:"image_ref"`
	InstanceID        string                   `json:"instance_id,omitempty"`
	Version           string                   `json:"version,omitempty"`
	PrivateIP         string                   `json:"private_ip,omitempty"`
	CreatedAt         string                   `json:"created_at,omitempty"`
	UpdatedAt         string                   `json:"updated_at,omitempty"`
	Config            *flyMachineConfig        `json:"config,omitempty"`
	Events            []*flyMachineEvent       `json:"events,omitempty"`
	Checks            []*flyMachineCheckStatus `json:"checks,omitempty"`
	LeaseNonce        string                   `json:"nonce,omitempty"`
	HostStatus        string                   `json:"host_status,omitempty"`
	Cordoned          bool                     `json:"cordoned"`
	ContainerStatuses []*struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"containers,omitempty"`
	IncompleteConfig *flyMachineConfig `json:"incomplete_config,omitempty"`
}

type flyMachineImageRef struct {
	Registry   string            `json:"registry,omitempty"`
	Repository string            `json:"repository,omitempty"`
	Tag        string            `json:"tag,omitempty"`
	Digest     string            `json:"digest,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
}

type flyMachineEvent struct {
	Type      string             `json:"type,omitempty"`
	Status    string             `json:"status,omitempty"`
	Request   *flyMachineRequest `json:"request,omitempty"`
	Source    string             `json:"source,omitempty"`
	Timestamp int64              `json:"timestamp,omitempty"`
}

type flyMachineRequest struct {
	ExitEvent    *flyMachineExitEvent `json:"exit_event,omitempty"`
	MonitorEvent *struct {
		ExitEvent *flyMachineExitEvent `json:"exit_event,omitempty"`
	} `json:"MonitorEvent,omitempty"`
	RestartCount int `json:"restart_count,omitempty"`
}

type flyMachineExitEvent struct {
	ExitCode      int       `json:"exit_code,omitempty"`
	GuestExitCode int       `json:"guest_exit_code,omitempty"`
	GuestSignal   int       `json:"guest_signal,omitempty"`
	OOMKilled     bool      `json:"oom_killed,omitempty"`
	RequestedStop bool      `json:"requested_stop,omitempty"`
	Restarting    bool      `json:"restarting,omitempty"`
	Signal        int       `json:"signal,omitempty"`
	ExitedAt      time.Time `json:"exited_at"`
}

type flyMachineCheckStatus struct {
	Name      string     `json:"name,omitempty"`
	Status    string     `json:"status,omitempty"`
	Output    string     `json:"output,omitempty"`
	UpdatedAt *time.Time `json:"updated_at,omitempty"`
}

// flyDuration is fly.Duration: a string ("10s") or nanoseconds.
type flyDuration struct{ time.Duration }

func (d flyDuration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

func (d *flyDuration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch value := v.(type) {
	case nil:
		d.Duration = 0
	case float64:
		d.Duration = time.Duration(int64(value))
	case string:
		var err error
		d.Duration, err = time.ParseDuration(value)
		return err
	default:
		return fmt.Errorf("Unknown duration type: %T", value)
	}
	return nil
}

// flyMachineAutostop is fly.MachineAutostop: a bool or a string.
type flyMachineAutostop int

func (s *flyMachineAutostop) UnmarshalJSON(raw []byte) error {
	if bytes.Equal(raw, []byte("null")) {
		return nil
	}
	var asBool bool
	if err := json.Unmarshal(raw, &asBool); err == nil {
		*s = 0
		if asBool {
			*s = 1
		}
		return nil
	}
	var asString string
	if err := json.Unmarshal(raw, &asString); err == nil {
		switch asString {
		case "off":
			*s = 0
		case "stop":
			*s = 1
		case "suspend":
			*s = 2
		default:
			return fmt.Errorf("invalid autostop string value %q", asString)
		}
		return nil
	}
	return errors.New("autostop value is not a valid bool or string")
}

type flyMachineGuest struct {
	CPUKind          string   `json:"cpu_kind,omitempty"`
	CPUs             int      `json:"cpus,omitempty"`
	MemoryMB         int      `json:"memory_mb,omitempty"`
	MaxMemoryMB      int      `json:"max_memory_mb,omitempty"`
	GPUs             int      `json:"gpus,omitempty"`
	GPUKind          string   `json:"gpu_kind,omitempty"`
	HostDedicationID string   `json:"host_dedication_id,omitempty"`
	PersistRootfs    string   `json:"persist_rootfs,omitempty"`
	KernelArgs       []string `json:"kernel_args,omitempty"`
}

type flyMachineHTTPHeader struct {
	Name   string   `json:"name,omitempty"`
	Values []string `json:"values,omitempty"`
}

type flyMachineCheck struct {
	Port              *int                   `json:"port,omitempty"`
	Type              *string                `json:"type,omitempty"`
	Kind              *string                `json:"kind,omitempty"`
	Interval          *flyDuration           `json:"interval,omitempty"`
	Timeout           *flyDuration           `json:"timeout,omitempty"`
	GracePeriod       *flyDuration           `json:"grace_period,omitempty"`
	HTTPMethod        *string                `json:"method,omitempty"`
	HTTPPath          *string                `json:"path,omitempty"`
	HTTPProtocol      *string                `json:"protocol,omitempty"`
	HTTPSkipTLSVerify *bool                  `json:"tls_skip_verify,omitempty"`
	HTTPTLSServerName *string                `json:"tls_server_name,omitempty"`
	HTTPHeaders       []flyMachineHTTPHeader `json:"headers,omitempty"`
}

type flyMachineServiceCheck struct {
	Port              *int                   `json:"port,omitempty"`
	Type              *string                `json:"type,omitempty"`
	Interval          *flyDuration           `json:"interval,omitempty"`
	Timeout           *flyDuration           `json:"timeout,omitempty"`
	GracePeriod       *flyDuration           `json:"grace_period,omitempty"`
	HTTPMethod        *string                `json:"method,omitempty"`
	HTTPPath          *string                `json:"path,omitempty"`
	HTTPProtocol      *string                `json:"protocol,omitempty"`
	HTTPSkipTLSVerify *bool                  `json:"tls_skip_verify,omitempty"`
	HTTPTLSServerName *string                `json:"tls_server_name,omitempty"`
	HTTPHeaders       []flyMachineHTTPHeader `json:"headers,omitempty"`
}

type flyTLSOptions struct {
	ALPN              []string `json:"alpn,omitempty"`
	Versions          []string `json:"versions,omitempty"`
	DefaultSelfSigned *bool    `json:"default_self_signed,omitempty"`
}

type flyHTTPOptions struct {
	Compress *bool `json:"compress,omitempty"`
	Response *struct {
		Headers  map[string]any `json:"headers,omitempty"`
		Pristine *bool          `json:"pristine,omitempty"`
	} `json:"response,omitempty"`
	H2Backend          *bool   `json:"h2_backend,omitempty"`
	IdleTimeout        *uint32 `json:"idle_timeout,omitempty"`
	HeadersReadTimeout *uint32 `json:"headers_read_timeout,omitempty"`
	ReplayCache        []struct {
		PathPrefix  string `json:"path_prefix"`
		TTLSeconds  int    `json:"ttl_seconds"`
		Type        string `json:"type"`
		Name        string `json:"name"`
		AllowBypass bool   `json:"allow_bypass,omitempty"`
	} `json:"replay_cache,omitempty"`
}

type flyMachinePort struct {
	Port              *int            `json:"port,omitempty"`
	StartPort         *int            `json:"start_port,omitempty"`
	EndPort           *int            `json:"end_port,omitempty"`
	Handlers          []string        `json:"handlers,omitempty"`
	ForceHTTPS        bool            `json:"force_https,omitempty"`
	TLSOptions        *flyTLSOptions  `json:"tls_options,omitempty"`
	HTTPOptions       *flyHTTPOptions `json:"http_options,omitempty"`
	ProxyProtoOptions *struct {
		Version string `json:"version,omitempty"`
	} `json:"proxy_proto_options,omitempty"`
}

type flyMachineService struct {
	Protocol                 string                   `json:"protocol,omitempty"`
	InternalPort             int                      `json:"internal_port,omitempty"`
	Autostop                 *flyMachineAutostop      `json:"autostop,omitempty"`
	Autostart                *bool                    `json:"autostart,omitempty"`
	MinMachinesRunning       *int                     `json:"min_machines_running,omitempty"`
	Ports                    []flyMachinePort         `json:"ports,omitempty"`
	Checks                   []flyMachineServiceCheck `json:"checks,omitempty"`
	Concurrency              *flyServiceConcurrency   `json:"concurrency,omitempty"`
	ForceInstanceKey         *string                  `json:"force_instance_key"`
	ForceInstanceDescription *string                  `json:"force_instance_description,omitempty"`
}

type flyServiceConcurrency struct {
	Type      string `json:"type,omitempty"`
	HardLimit int    `json:"hard_limit,omitempty"`
	SoftLimit int    `json:"soft_limit,omitempty"`
}

type flyMachineInit struct {
	Exec       []string `json:"exec,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Tty        bool     `json:"tty,omitempty"`
	SwapSizeMB *int     `json:"swap_size_mb,omitempty"`
	KernelArgs []string `json:"kernel_args,omitempty"`
}

type flyMachineRestart struct {
	Policy     string `json:"policy,omitempty"`
	MaxRetries int    `json:"max_retries,omitempty"`
}

type flyStopConfig struct {
	Timeout *flyDuration `json:"timeout,omitempty"`
	Signal  *string      `json:"signal,omitempty"`
}

type flyFile struct {
	GuestPath   string  `json:"guest_path,omitempty"`
	RawValue    *string `json:"raw_value,omitempty"`
	SecretName  *string `json:"secret_name,omitempty"`
	ImageConfig *string `json:"image_config,omitempty"`
	Mode        uint32  `json:"mode,omitempty"`
}

type flyMachineMount struct {
	Encrypted              bool   `json:"encrypted,omitempty"`
	Path                   string `json:"path,omitempty"`
	SizeGb                 int    `json:"size_gb,omitempty"`
	Volume                 string `json:"volume,omitempty"`
	Name                   string `json:"name,omitempty"`
	ExtendThresholdPercent int    `json:"extend_threshold_percent,omitempty"`
	AddSizeGb              int    `json:"add_size_gb,omitempty"`
	SizeGbLimit            int    `json:"size_gb_limit,omitempty"`
}

type flyMachineConfig struct {
	Env      map[string]string   `json:"env,omitempty"`
	Init     flyMachineInit      `json:"init"`
	Guest    *flyMachineGuest    `json:"guest,omitempty"`
	Metadata map[string]string   `json:"metadata,omitempty"`
	Mounts   []flyMachineMount   `json:"mounts,omitempty"`
	Services []flyMachineService `json:"services,omitempty"`
	Metrics  *struct {
		Port  int    `json:"port,omitempty"`
		Path  string `json:"path,omitempty"`
		Https bool   `json:"https,omitempty"`
	} `json:"metrics,omitempty"`
	Checks  map[string]flyMachineCheck `json:"checks,omitempty"`
	Statics []*struct {
		GuestPath     string `json:"guest_path"`
		UrlPrefix     string `json:"url_prefix"`
		TigrisBucket  string `json:"tigris_bucket"`
		IndexDocument string `json:"index_document"`
	} `json:"statics,omitempty"`
	Image       string             `json:"image,omitempty"`
	Files       []*flyFile         `json:"files,omitempty"`
	Schedule    string             `json:"schedule,omitempty"`
	AutoDestroy bool               `json:"auto_destroy,omitempty"`
	Restart     *flyMachineRestart `json:"restart,omitempty"`
	DNS         *struct {
		SkipRegistration bool     `json:"skip_registration,omitempty"`
		Nameservers      []string `json:"nameservers,omitempty"`
		Searches         []string `json:"searches,omitempty"`
		Hostname         string   `json:"hostname,omitempty"`
		HostnameFqdn     string   `json:"hostname_fqdn,omitempty"`
	} `json:"dns,omitempty"`
	Processes  []json.RawMessage `json:"processes,omitempty"`
	Standbys   []string          `json:"standbys,omitempty"`
	StopConfig *flyStopConfig    `json:"stop_config,omitempty"`
	Containers []json.RawMessage `json:"containers,omitempty"`
	Volumes    []json.RawMessage `json:"volumes,omitempty"`
	Rootfs     *struct {
		Persist string `json:"persist,omitempty"`
		SizeGB  uint64 `json:"size_gb,omitempty"`
	} `json:"rootfs,omitempty"`
	CacheDrive *struct {
		SizeMB uint64 `json:"size_mb,omitempty"`
	} `json:"cache_drive,omitempty"`
	Spot *struct {
		MaxPriceFraction float64 `json:"max_price_fraction,omitempty"`
	} `json:"spot,omitempty"`
	VMSize                  string `json:"size,omitempty"`
	DisableMachineAutostart *bool  `json:"disable_machine_autostart,omitempty"`
}

type flyMachineLease struct {
	Status  string               `json:"status,omitempty"`
	Data    *flyMachineLeaseData `json:"data,omitempty"`
	Message string               `json:"message,omitempty"`
	Code    string               `json:"code,omitempty"`
}

type flyMachineLeaseData struct {
	Nonce     string `json:"nonce,omitempty"`
	ExpiresAt int64  `json:"expires_at,omitempty"`
	Owner     string `json:"owner,omitempty"`
	Version   string `json:"version,omitempty"`
}

type flyMachineStartResponse struct {
	Message       string `json:"message,omitempty"`
	Status        string `json:"status,omitempty"`
	PreviousState string `json:"previous_state,omitempty"`
}

type flyLaunchMachineInput struct {
	Config                  *flyMachineConfig `json:"config,omitempty"`
	Region                  string            `json:"region,omitempty"`
	Name                    string            `json:"name,omitempty"`
	SkipLaunch              bool              `json:"skip_launch,omitempty"`
	SkipServiceRegistration bool              `json:"skip_service_registration,omitempty"`
	SkipSecrets             bool              `json:"skip_secrets"`
	MinSecretsVersion       *uint64           `json:"min_secrets_version,omitempty"`
	LeaseTTL                int               `json:"lease_ttl,omitempty"`
}

type flyStopMachineInput struct {
	ID      string      `json:"id,omitempty"`
	Signal  string      `json:"signal,omitempty"`
	Timeout flyDuration `json:"timeout,omitempty"`
}

// flaps/flaps_apps.go
type flyCreateAppRequest struct {
	Name      string `json:"name"`
	Org       string `json:"org_slug"`
	Network   string `json:"network"`
	AppRoleID string `json:"app_role_id"`
}

type flyApp struct {
	ID                string `json:"id"`
	Name              string `json:"name"`
	InternalNumericID int32  `json:"internal_numeric_id"`
	Network           string `json:"network"`
	Status            string `json:"status"`
	MachineCount      int64  `json:"machine_count"`
	VolumeCount       int64  `json:"volume_count"`
	Organization      struct {
		Name string `json:"name"`
		Slug string `json:"slug"`
	} `json:"organization"`
	CnameTarget string `json:"cname_target"`
	AppRole     string `json:"app_role"`
}

// flaps/flaps_error.go
type flyErrorResponse struct {
	Error      string `json:"error"`
	StatusCode string `json:"status"`
}
