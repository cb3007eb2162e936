// Package api defines Perch's REST resources, shaped like Fly's Machines API,
// and a Go client for them. The control plane serves these types, the store
// keeps them, and the CLI, agents and tests speak them. It imports nothing
// else from Perch, so any package may import it.
package api

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Machine states, as in Fly's Machines API.
const (
	StateCreated    = "created"
	StateStarting   = "starting"
	StateStarted    = "started"
	StateStopping   = "stopping"
	StateStopped    = "stopped"
	StateDestroying = "destroying"
	StateDestroyed  = "destroyed"
	StateFailed     = "failed"
	// A suspended machine's memory and processes are kept in a snapshot
	// on its host; starting it resumes from there (docs/suspend.md).
	StateSuspending = "suspending"
	StateSuspended  = "suspended"
)

// MaxSuspendMemoryMB is the most memory a machine may have to be
// suspended, as on Fly: a bigger snapshot takes too long to write and read.
const MaxSuspendMemoryMB = 2048

// Host status of the host a machine is placed on, as Machine.HostStatus
// shows it.
const (
	HostOK          = "ok"
	HostUnreachable = "unreachable"
)

// Status of a host itself (Host.Status): up while it heartbeats.
const (
	HostUp   = "up"
	HostDown = "down"
)

// Restart policies.
const (
	RestartNo        = "no"
	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
)

// App is a named group of machines. ID and Organization are as Fly's
// Machines API shows them (the ID is the name; Organization carries the
// org slug); Status is "deployed", or "deleting" once a delete began.
type App struct {
	ID           string          `json:"id"`
	Name         string          `json:"name"`
	Org          string          `json:"org,omitempty"`
	Organization AppOrganization `json:"organization"`
	Status       string          `json:"status,omitempty"`
	CreatedAt    time.Time       `json:"created_at"`
	// Hostnames are extra Host names the edge routes to this app, beside
	// <name>.<edge domain>.
	Hostnames []string `json:"hostnames,omitempty"`
	// Suspended is set while the app is suspended at its monthly budget.
	Suspended *Suspension `json:"suspended,omitempty"`
}

// App statuses.
const (
	AppDeployed = "deployed"
	AppDeleting = "deleting"
)

// AppOrganization is the organization an app belongs to.
type AppOrganization struct {
	Name string `json:"name"`
	Slug string `json:"slug"`
}

// AppList is the body of GET /v1/apps, shaped as Fly's.
type AppList struct {
	TotalApps int   `json:"total_apps"`
	Apps      []App `json:"apps"`
}

// CreateAppRequest is the body of POST /v1/apps. Name is Fly's spelling
// of AppName; either may be given.
type CreateAppRequest struct {
	AppName string `json:"app_name,omitempty"`
	Name    string `json:"name,omitempty"`
	Org     string `json:"org_slug,omitempty"`
	// Network is Fly's custom private network; only "" is supported.
	Network string `json:"network,omitempty"`
}

// Guest is the size of a machine.
type Guest struct {
	CPUKind  string `json:"cpu_kind,omitempty"`
	CPUs     int    `json:"cpus,omitempty"`
	MemoryMB int    `json:"memory_mb,omitempty"`
	// Runtime selects the runtime driver ("runc" by default).
	Runtime string `json:"runtime,omitempty"`
}

// Port is one public port of a service. Handlers, as in fly.toml: "tls"
// terminates TLS, "http" speaks HTTP, "proxy_proto" sends a PROXY protocol
// header; none at all is raw TCP passthrough.
type Port struct {
	Port              int                `json:"port"`
	Handlers          []string           `json:"handlers,omitempty"`
	ForceHTTPS        bool               `json:"force_https,omitempty"`
	TLSOptions        *TLSOptions        `json:"tls_options,omitempty"`
	HTTPOptions       *HTTPOptions       `json:"http_options,omitempty"`
	ProxyProtoOptions *ProxyProtoOptions `json:"proxy_proto_options,omitempty"`
}

// TLSOptions tune the "tls" handler.
type TLSOptions struct {
	ALPN     []string `json:"alpn,omitempty"`     // e.g. ["h2", "http/1.1"]
	Versions []string `json:"versions,omitempty"` // e.g. ["TLSv1.2", "TLSv1.3"]
}

// HTTPOptions tune the "http" handler.
type HTTPOptions struct {
	// H2Backend speaks HTTP/2 cleartext (h2c) to the app: the gRPC path.
	H2Backend bool `json:"h2_backend,omitempty"`
	// IdleTimeout closes idle client connections after this many seconds.
	IdleTimeout int `json:"idle_timeout,omitempty"`
}

// ProxyProtoOptions tune the "proxy_proto" handler.
type ProxyProtoOptions struct {
	Version string `json:"version,omitempty"` // "v1" (default) or "v2"
}

// Check is a health check the machine's host runs against it. Durations
// are Go duration strings, as Fly writes them ("15s").
type Check struct {
	Name          string       `json:"name,omitempty"`
	Type          string       `json:"type"` // "tcp" or "http"
	Port          int          `json:"port,omitempty"`
	Interval      string       `json:"interval,omitempty"`
	Timeout       string       `json:"timeout,omitempty"`
	GracePeriod   string       `json:"grace_period,omitempty"`
	Method        string       `json:"method,omitempty"`
	Path          string       `json:"path,omitempty"`
	Protocol      string       `json:"protocol,omitempty"` // "http" or "https"
	TLSSkipVerify bool         `json:"tls_skip_verify,omitempty"`
	Headers       CheckHeaders `json:"headers,omitempty"`
}

// CheckStatus is the last result of one check.
type CheckStatus struct {
	Name      string    `json:"name"`
	Status    string    `json:"status"` // "passing", "warning" (in grace period) or "critical"
	Output    string    `json:"output,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Check statuses.
const (
	CheckPassing  = "passing"
	CheckWarning  = "warning"
	CheckCritical = "critical"
)

// Concurrency limits a service's load per machine.
type Concurrency struct {
	Type      string `json:"type,omitempty"`
	SoftLimit int    `json:"soft_limit,omitempty"`
	HardLimit int    `json:"hard_limit,omitempty"`
}

// Service exposes an internal port of the machine on public ports of the edge.
type Service struct {
	Protocol     string       `json:"protocol,omitempty"`
	InternalPort int          `json:"internal_port"`
	Ports        []Port       `json:"ports,omitempty"`
	Concurrency  *Concurrency `json:"concurrency,omitempty"`
	Checks       []Check      `json:"checks,omitempty"`
	// Autostop, Autostart and MinMachinesRunning are Fly's scale to zero
	// (docs/autostop.md): a machine idle for IdleTimeout is stopped or
	// suspended by its host, never leaving fewer than MinMachinesRunning
	// started machines of the app in its region; an edge with a request
	// and no started machine starts a stopped one. Autostart unset
	// follows Autostop: on when Autostop is "stop" or "suspend".
	Autostop           Autostop `json:"autostop,omitempty"`
	Autostart          *bool    `json:"autostart,omitempty"`
	MinMachinesRunning *int     `json:"min_machines_running,omitempty"`
	// IdleTimeout is Perch's: how long a machine must have had no request
	// or connection in flight before autostop stops it, a Go duration
	// ("30s"); DefaultIdleTimeout if empty.
	IdleTimeout string `json:"idle_timeout,omitempty"`
}

// Autostop is what a service's idle machines become: AutostopOff (or
// ""), AutostopStop or AutostopSuspend. Its JSON also accepts Fly's
// older booleans (true is "stop", false "off").
type Autostop string

// Autostop values.
const (
	AutostopOff     Autostop = "off"
	AutostopStop    Autostop = "stop"
	AutostopSuspend Autostop = "suspend"
)

// DefaultIdleTimeout is how long a machine with autostop is idle before
// it stops, unless its service says otherwise.
const DefaultIdleTimeout = 5 * time.Minute

// On says whether autostop stops or suspends idle machines.
func (a Autostop) On() bool { return a == AutostopStop || a == AutostopSuspend }

// UnmarshalJSON takes a string or, as Fly's API once did, a boolean.
func (a *Autostop) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case "true":
		*a = AutostopStop
		return nil
	case "false", "null":
		*a = AutostopOff
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("autostop must be \"off\", \"stop\", \"suspend\", true or false, got %s", b)
	}
	*a = Autostop(s)
	return nil
}

// AutostartOn says whether an edge may start the service's stopped
// machines for a request: Autostart if set, else whether autostop is on.
func (s *Service) AutostartOn() bool {
	if s.Autostart != nil {
		return *s.Autostart
	}
	return s.Autostop.On()
}

// Restart is the restart policy of a machine.
type Restart struct {
	Policy     string `json:"policy,omitempty"`
	MaxRetries int    `json:"max_retries,omitempty"`
}

// MachineConfig is what a machine should run.
type MachineConfig struct {
	Image    string            `json:"image"`
	Env      map[string]string `json:"env,omitempty"`
	Guest    Guest             `json:"guest"`
	Services []Service         `json:"services,omitempty"`
	Restart  Restart           `json:"restart,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	// Cmd and Entrypoint override the image's when set.
	Init MachineInit `json:"init,omitempty"`
	// StopConfig is how the machine is stopped: on every stop, deploy,
	// scale down and destroy its host first drains it (the edges send it
	// nothing new and their requests in flight finish), then sends Signal
	// and waits Timeout before SIGKILL. fly.toml's kill_signal and
	// kill_timeout.
	StopConfig *StopConfig `json:"stop_config,omitempty"`
	// AutoDestroy destroys the machine once its process has ended and it
	// is not restarted (stopped or failed), as Fly's auto_destroy.
	AutoDestroy bool `json:"auto_destroy,omitempty"`
	// Files are written into the machine's root filesystem before it
	// starts (Fly's files): secrets.go.
	Files []File `json:"files,omitempty"`
	// Statics are directories of the image the edges serve themselves
	// under a URL prefix (Fly's statics; static.go).
	Statics []Static `json:"statics,omitempty"`
	// Mounts attach volumes of the app (volumes.go); the machine is
	// placed on their host.
	Mounts []Mount `json:"mounts,omitempty"`
}

// StopConfig is a machine's stop signal and the time it has to exit, as
// Fly's Machines API shapes it ("timeout": "30s", "signal": "SIGINT").
type StopConfig struct {
	Timeout string `json:"timeout,omitempty"`
	Signal  string `json:"signal,omitempty"`
}

// Defaults of StopConfig.
const (
	DefaultStopSignal  = "SIGTERM"
	DefaultStopTimeout = 10 * time.Second
)

// MachineInit overrides the image's process. Exec, Fly's, is the whole
// command line; the server stores it as Entrypoint (which drops the
// image's cmd).
type MachineInit struct {
	Exec       []string `json:"exec,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// Event is one thing that happened to a machine. Timestamp is in Unix
// milliseconds, as Fly's Machines API writes it (Time converts it).
type Event struct {
	Type      string `json:"type"`
	Status    string `json:"status"`
	Source    string `json:"source"`
	Timestamp int64  `json:"timestamp"`
	ExitCode  *int   `json:"exit_code,omitempty"`
	// OOMKilled marks an exit by the OOM killer (out of memory).
	OOMKilled bool   `json:"oom_killed,omitempty"`
	Message   string `json:"message,omitempty"`
	// Request carries the exit code where Fly's clients read it
	// (request.exit_event.exit_code); the server fills it from ExitCode.
	Request *EventRequest `json:"request,omitempty"`
}

// EventRequest is the part of Fly's event request Perch fills.
type EventRequest struct {
	ExitEvent *ExitEvent `json:"exit_event,omitempty"`
}

// ExitEvent is how a machine's process exited.
type ExitEvent struct {
	ExitCode  int       `json:"exit_code"`
	OOMKilled bool      `json:"oom_killed"`
	ExitedAt  time.Time `json:"exited_at"`
}

// Machine is a machine as the API shows it: desired config and placement
// merged with what its host last reported.
type Machine struct {
	ID         string        `json:"id"`
	Name       string        `json:"name"`
	AppName    string        `json:"app_name"`
	State      string        `json:"state"`
	Region     string        `json:"region"`
	InstanceID string        `json:"instance_id"`
	PrivateIP  string        `json:"private_ip"`
	HostID     string        `json:"host_id"`
	HostStatus string        `json:"host_status"`
	Config     MachineConfig `json:"config"`
	CreatedAt  time.Time     `json:"created_at"`
	UpdatedAt  time.Time     `json:"updated_at"`
	Events     []Event       `json:"events,omitempty"`
	// ImageRef is the image the host resolved and runs (with digest),
	// split as Fly's Machines API shows it; empty until the host pulled it.
	ImageRef ImageRef `json:"image_ref"`
	// ExitCode is the last exit code of the machine's process, if it exited.
	ExitCode *int `json:"exit_code,omitempty"`
	// OOMKilled says that exit was the OOM killer's: the machine went over
	// its memory (config.guest.memory_mb).
	OOMKilled bool `json:"oom_killed,omitempty"`
	// LastLogs holds the last lines the machine printed before it failed.
	LastLogs []string `json:"last_logs,omitempty"`
	// Checks are the latest health check results from the machine's host.
	Checks []CheckStatus `json:"checks,omitempty"`
	// Ready says the machine takes traffic: it is started and its checks
	// pass, or (without checks) its services' internal ports accept
	// connections. NotReady says why not ("starting: port 8080 not
	// listening yet", "restarting: exited 1, attempt 3").
	Ready    bool   `json:"ready"`
	NotReady string `json:"not_ready,omitempty"`
	// Restarts counts the times the host restarted the machine's process
	// since its config last changed.
	Restarts int `json:"restarts,omitempty"`
	// Cordoned machines get no traffic (POST .../cordon, .../uncordon).
	Cordoned bool `json:"cordoned"`
	// Nonce is the lease's, when the machine was created with lease_ttl.
	Nonce string `json:"nonce,omitempty"`
}

// Release statuses.
const (
	ReleaseRunning    = "running"    // the deploy is under way
	ReleaseComplete   = "complete"   // every machine runs it
	ReleaseFailed     = "failed"     // the deploy failed; the app kept the release before
	ReleaseSuperseded = "superseded" // a later release replaced it
)

// Release is one version of an app's machine config, recorded by every
// deploy (GET /v1/apps/{app}/releases).
type Release struct {
	Version int    `json:"version"`
	App     string `json:"app"`
	Status  string `json:"status"`
	// Image is what the deploy asked for; ImageRef the digest its machines
	// resolved, which a rollback deploys.
	Image    string        `json:"image"`
	ImageRef string        `json:"image_ref,omitempty"`
	Config   MachineConfig `json:"config"`
	// Processes is the config of each process group when the release has
	// several ([processes] in fly.toml); Config is then the first group's.
	Processes map[string]MachineConfig `json:"processes,omitempty"`
	Strategy  string                   `json:"strategy,omitempty"`
	Regions   []string                 `json:"regions,omitempty"`
	// User is the name of the token that deployed it.
	User        string    `json:"user,omitempty"`
	Description string    `json:"description,omitempty"`
	Reason      string    `json:"reason,omitempty"` // why it failed
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// CreateReleaseRequest is the body of POST /v1/apps/{app}/releases: the
// server gives the release the next version.
type CreateReleaseRequest struct {
	Image       string                   `json:"image"`
	Config      MachineConfig            `json:"config"`
	Processes   map[string]MachineConfig `json:"processes,omitempty"`
	Strategy    string                   `json:"strategy,omitempty"`
	Regions     []string                 `json:"regions,omitempty"`
	Description string                   `json:"description,omitempty"`
}

// UpdateReleaseRequest is the body of PATCH /v1/apps/{app}/releases/{version}.
type UpdateReleaseRequest struct {
	Status   string `json:"status"`
	ImageRef string `json:"image_ref,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// Certificate is a TLS certificate the edges serve for a hostname.
type Certificate struct {
	Hostname  string    `json:"hostname"`
	App       string    `json:"app"`
	Source    string    `json:"source"` // "acme" or "dev-ca"
	Status    string    `json:"status"` // "pending", "issued", "failed"
	Issuer    string    `json:"issuer,omitempty"`
	NotBefore time.Time `json:"not_before,omitempty"`
	NotAfter  time.Time `json:"not_after,omitempty"`
	Error     string    `json:"error,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// CreateMachineRequest is the body of POST /v1/apps/{app}/machines and of
// POST /v1/apps/{app}/machines/{id} (update).
type CreateMachineRequest struct {
	Name   string        `json:"name,omitempty"`
	Region string        `json:"region,omitempty"`
	Config MachineConfig `json:"config"`
	// SkipLaunch creates the machine stopped.
	SkipLaunch bool `json:"skip_launch,omitempty"`
	// Cordoned creates the machine out of the edges' rotation until it is
	// uncordoned (POST .../uncordon); a Perch extension.
	Cordoned bool `json:"cordoned,omitempty"`
	// SkipServiceRegistration is Fly's way to the same: the machine gets
	// no traffic until it is uncordoned.
	SkipServiceRegistration bool `json:"skip_service_registration,omitempty"`
	// LeaseTTL, in seconds, creates the machine leased to the caller; the
	// answer's nonce is the lease's.
	LeaseTTL int `json:"lease_ttl,omitempty"`
	// SkipSecrets, Fly's, makes the machine without the app's secrets (no
	// secret env; a file naming a secret is refused).
	SkipSecrets bool `json:"skip_secrets,omitempty"`
}

// StopRequest is the optional body of POST .../stop. ID is Fly's, the
// machine's (the path names it already).
type StopRequest struct {
	ID      string `json:"id,omitempty"`
	Signal  string `json:"signal,omitempty"`
	Timeout string `json:"timeout,omitempty"`
}

// HostDisk is a host's disk use, as its agent last reported it.
type HostDisk struct {
	ImageBytes    int64 `json:"image_bytes"`     // the image store: layers and images
	ImageMaxBytes int64 `json:"image_max_bytes"` // its cap (--image-cache-max); 0 is none
	Images        int   `json:"images"`
	Layers        int   `json:"layers"`
	FreeBytes     int64 `json:"free_bytes"` // left on the state dir's filesystem
	TotalBytes    int64 `json:"total_bytes"`
}

// Host is one server running an agent.
type Host struct {
	ID        string    `json:"id"`
	Region    string    `json:"region"`
	Address   string    `json:"address"`
	EdgeAddr  string    `json:"edge_addr,omitempty"`
	CPUs      int       `json:"cpus"`
	MemoryMB  int       `json:"memory_mb"`
	Subnet    string    `json:"subnet"`
	Status    string    `json:"status"`
	LastSeen  time.Time `json:"last_seen"`
	StartedAt time.Time `json:"started_at"`
	Version   string    `json:"version,omitempty"`
	// Role is "" for a host that runs machines and "control" for the
	// control plane's own mesh record, which the scheduler never uses.
	Role string `json:"role,omitempty"`

	// The host in the WireGuard mesh (docs/mesh.md). The host publishes
	// its public key and UDP endpoint; the control plane assigns its mesh
	// address and its machines' private IPv6 /64 (6PN) when it registers.
	MeshKey      string `json:"mesh_public_key,omitempty"`
	MeshEndpoint string `json:"mesh_endpoint,omitempty"`
	MeshAddr     string `json:"mesh_addr,omitempty"`
	Subnet6      string `json:"subnet6,omitempty"`
	// MeshMode is where the host's mesh TCP runs, as its heartbeat says:
	// "netstack" (in the agent) or "tun" (the kernel's); "" before one.
	MeshMode string `json:"mesh_mode,omitempty"`
	// Disk is what the host's image store holds and what its disk has left.
	Disk *HostDisk `json:"disk,omitempty"`
	// RTT is the round-trip time the host last measured over the mesh to
	// each peer it can reach, in milliseconds, by host id.
	RTT map[string]float64 `json:"rtt_ms,omitempty"`
	// BGP is the host's anycast speaker (docs/anycast.md): its sessions
	// and the addresses it announces now; nil without --bgp-asn.
	BGP *HostBGP `json:"bgp,omitempty"`
}

// HostHeartbeat is what a host reports of itself every few seconds
// (POST /v1/hosts/{id}/heartbeat): only the fields the host owns. The
// control plane writes them into the host's record beside the ones it
// assigned (region, subnets, mesh address), which no host can change.
type HostHeartbeat struct {
	MeshEndpoint string             `json:"mesh_endpoint,omitempty"`
	MeshMode     string             `json:"mesh_mode,omitempty"`
	Disk         *HostDisk          `json:"disk,omitempty"`
	RTT          map[string]float64 `json:"rtt_ms,omitempty"`
	BGP          *HostBGP           `json:"bgp,omitempty"`
}

// HostBGP is a host's BGP speaker as its heartbeat reports it.
type HostBGP struct {
	Sessions  []BGPSession `json:"sessions"`
	Announced []string     `json:"announced"`
}

// BGPSession is one peer's session.
type BGPSession struct {
	Peer  string `json:"peer"`
	ASN   uint32 `json:"asn"`
	State string `json:"state"`
}

// RemovedHost answers DELETE /v1/hosts/{id}: the machines ("app/id")
// that were on the host, now lost with it.
type RemovedHost struct {
	ID           string   `json:"id"`
	LostMachines []string `json:"lost_machines"`
}

// HostRoleControl marks the control plane's record in the hosts list.
const HostRoleControl = "control"

// LogLine is one line a machine printed.
type LogLine struct {
	Timestamp time.Time `json:"timestamp"`
	App       string    `json:"app"`
	Region    string    `json:"region"`
	MachineID string    `json:"machine_id"`
	Stream    string    `json:"stream"`
	Message   string    `json:"message"`
}

// Error is the body of every error response: the message for a person,
// and Status, a short code for programs as Fly's Machines API has it
// ("not_found", "invalid_argument", "name_taken", "insufficient_capacity",
// "failed_precondition", ...).
type Error struct {
	Error  string `json:"error"`
	Status string `json:"status,omitempty"`
}

// AgentBootstrap tells an agent how to reach the state store. With the
// embedded NATS the host connects as its own user NATSUser (password: its
// credential's secret) with inboxes under NATSInboxPrefix; NATSToken is
// set only for an external NATS the control plane cannot add users to.
type AgentBootstrap struct {
	NATSURL         string `json:"nats_url"`
	NATSToken       string `json:"nats_token,omitempty"`
	NATSUser        string `json:"nats_user,omitempty"`
	NATSInboxPrefix string `json:"nats_inbox_prefix,omitempty"`
	// NATSLeafURL, if set, is where the host's own leaf node connects
	// (several, comma-separated): the agent then reads the buckets it
	// serves from local mirrors that outlive a cut (docs/servers.md).
	NATSLeafURL string `json:"nats_leaf_url,omitempty"`
	Registry    string `json:"registry"`
}

// JoinTokenRequest asks for a join token (POST /v1/hosts/join-tokens):
// one host of Region may join with it, once, within Expiry (Go duration,
// default 1h).
type JoinTokenRequest struct {
	Region string `json:"region"`
	Expiry string `json:"expiry,omitempty"`
}

// JoinToken is a created join token; Token is shown only here.
type JoinToken struct {
	Token     string    `json:"token"`
	Region    string    `json:"region"`
	ExpiresAt time.Time `json:"expires_at"`
}

// HostCredential is what a host gets for its join token (POST
// /v1/hosts/join) and keeps in its state dir: its id, its region and the
// secret it authenticates with to the API (Bearer) and to NATS (user
// HostID).
type HostCredential struct {
	HostID string `json:"host_id"`
	Region string `json:"region"`
	Secret string `json:"secret"`
}

// HostCredentialPrefix starts every host credential's bearer form.
const HostCredentialPrefix = "perch_host_"

// Bearer is the credential as an API bearer token:
// "perch_host_<host id>_<secret>".
func (c HostCredential) Bearer() string { return HostCredentialPrefix + c.HostID + "_" + c.Secret }

// Suspension says why and until when an app is suspended: its monthly
// budget was reached. Edges answer its requests with 503 until ResumesAt.
type Suspension struct {
	Reason    string    `json:"reason"`
	Budget    float64   `json:"budget"`
	Scope     string    `json:"scope"` // "app" or "org"
	ReachedAt time.Time `json:"reached_at"`
	ResumesAt time.Time `json:"resumes_at"`
}

// Message is the sentence perch status shows.
func (s *Suspension) Message() string {
	return fmt.Sprintf("suspended: monthly budget of $%s reached on %s; resumes %s",
		strconv.FormatFloat(s.Budget, 'f', -1, 64), s.ReachedAt.UTC().Format("2006-01-02"), s.ResumesAt.UTC().Format("2006-01-02 15:04 MST"))
}
