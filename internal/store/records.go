package store

import (
	"fmt"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// Desired states a machine can be asked to be in.
const (
	DesireStarted   = "started"
	DesireStopped   = "stopped"
	DesireDestroyed = "destroyed"
	// DesireSuspended: snapshot the machine and stop it; DesireStarted
	// afterwards resumes it from the snapshot.
	DesireSuspended = "suspended"
)

// MachineSpec is a machine's desired state, written by the control plane
// before any host acts on it (DESIGN.md invariant 3). Key: "<app>.<id>".
type MachineSpec struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	App       string            `json:"app"`
	Region    string            `json:"region"`
	HostID    string            `json:"host_id"`
	PrivateIP string            `json:"private_ip"`
	Config    api.MachineConfig `json:"config"`
	Desired   string            `json:"desired"`
	// Generation grows with every change of Config or Desired; the host
	// recreates the machine's process when Config's generation changes.
	Generation       int64 `json:"generation"`
	ConfigGeneration int64 `json:"config_generation"`
	// StopSignal and StopTimeout come from the last stop request.
	StopSignal  string        `json:"stop_signal,omitempty"`
	StopTimeout time.Duration `json:"stop_timeout,omitempty"`
	// Cordoned machines get no traffic from the edges, ready or not (Fly's
	// cordon): a bluegreen deploy's new machines until the switch.
	Cordoned bool `json:"cordoned,omitempty"`
	// Force, with Desired destroyed, kills the machine at once: no drain,
	// no stop signal (perch machine destroy --force).
	Force bool `json:"force,omitempty"`
	// Reason says why a host changed Desired at generation
	// ReasonGeneration (autostop, autostart), for the machine's event;
	// at any other generation it is stale and ignored (Why).
	Reason           string `json:"reason,omitempty"`
	ReasonGeneration int64  `json:"reason_generation,omitempty"`
	// InstanceID names the version of the machine this spec asks for:
	// new on create, on every config change and on a restart. The host
	// gives the instance it creates this id (Fly's instance_id).
	InstanceID string `json:"instance_id,omitempty"`
	// Signal is a signal to send the machine's running process once, when
	// SignalSeq grows past the last one its host sent (POST .../signal).
	// Neither changes the generation: the machine keeps running.
	Signal    string `json:"signal,omitempty"`
	SignalSeq int64  `json:"signal_seq,omitempty"`
	// Lease is Fly's machine lease: while it lasts, changes to the machine
	// need its nonce. Hosts ignore it.
	Lease *MachineLease `json:"lease,omitempty"`
	// Secrets are the app's secrets as the control plane resolved them at
	// the last create or update, sealed to the mesh key of HostID (NaCl
	// sealed box of a SealedSecrets): only that host opens them.
	// SecretsVersion is the app's secrets version they hold.
	Secrets        []byte    `json:"secrets,omitempty"`
	SecretsVersion int64     `json:"secrets_version,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`

	// Org is the app's organisation when the spec was written: the
	// machine's 6PN prefix (mesh.OrgPrefix) and its host's network policy
	// follow it.
	Org string `json:"org,omitempty"`
}

// MachineLease is a lease on a machine (POST .../lease).
type MachineLease struct {
	Nonce     string    `json:"nonce"`
	Owner     string    `json:"owner"`
	ExpiresAt time.Time `json:"expires_at"`
	Version   string    `json:"version"`
}

// Live reports whether the lease exists and has not expired at now.
func (l *MachineLease) Live(now time.Time) bool { return l != nil && now.Before(l.ExpiresAt) }

// Key is the machine's key in the machines and status buckets.
func (m *MachineSpec) Key() string { return MachineKey(m.App, m.ID) }

// Why is the reason of the spec's current generation, or "".
func (m *MachineSpec) Why() string {
	if m.ReasonGeneration != m.Generation {
		return ""
	}
	return m.Reason
}

// MachineKey is the key of machine id of app.
func MachineKey(app, id string) string { return app + "." + id }

// MachineStatus is what the machine's host last observed. Written only by
// that host. Key: "<app>.<id>".
type MachineStatus struct {
	ID     string `json:"id"`
	App    string `json:"app"`
	HostID string `json:"host_id"`
	State  string `json:"state"`
	// Generation is the spec generation this status answers.
	Generation int64  `json:"generation"`
	InstanceID string `json:"instance_id,omitempty"`
	ImageRef   string `json:"image_ref,omitempty"`
	ExitCode   *int   `json:"exit_code,omitempty"`
	// OOMKilled says the last exit was the kernel's OOM killer's: the
	// machine went over its memory.
	OOMKilled bool        `json:"oom_killed,omitempty"`
	Restarts  int         `json:"restarts"`
	LastLogs  []string    `json:"last_logs,omitempty"`
	Events    []api.Event `json:"events,omitempty"`
	// Checks are written by the host's health checker.
	Checks []api.CheckStatus `json:"checks,omitempty"`
	// Ready: the machine takes traffic (started, checks passing or its
	// internal ports listening). Edges route only to ready machines.
	// NotReady says why not, for perch status.
	Ready     bool      `json:"ready,omitempty"`
	NotReady  string    `json:"not_ready,omitempty"`
	StartedAt time.Time `json:"started_at,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// AddEvent appends an event, keeping the most recent few.
func (s *MachineStatus) AddEvent(e api.Event) {
	s.Events = append(s.Events, e)
	if n := len(s.Events); n > 20 {
		s.Events = s.Events[n-20:]
	}
}

// Token is a stored API token; only its hash is kept.
type Token struct {
	ID        string    `json:"id"`
	Hash      string    `json:"hash"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// LogSubject is the subject a machine's log lines are published on.
func LogSubject(app, region, machineID string) string {
	return "perch.logs." + app + "." + region + "." + machineID
}

// LogFilter is the subject filter for all log lines of app.
func LogFilter(app string) string { return "perch.logs." + app + ".>" }

// ReleaseKey is the key of an app's release in the releases bucket; the
// version is zero-padded so keys sort by version.
func ReleaseKey(app string, version int) string {
	return fmt.Sprintf("%s.%08d", app, version)
}

// DrainSubject is the core NATS subject on which host hostID asks every
// edge to let a machine of its own finish its traffic before it stops
// the machine. Each edge answers once it no longer routes to the machine
// (it learns that from the status it watches) and has nothing in flight
// to it, or when the request's Wait is over; it ignores a request for a
// machine of another host (the subject names the sender: a host's NATS
// user publishes only on its own).
func DrainSubject(hostID string) string { return drainPrefix + hostID }

// DrainSubjects are every host's drain requests, what edges subscribe to.
const DrainSubjects = drainPrefix + "*"

const drainPrefix = "perch.drain."

// DrainSender is the host that sent a request on subject, from
// DrainSubject.
func DrainSender(subject string) string { return strings.TrimPrefix(subject, drainPrefix) }

// DrainRequest asks the edges to drain one machine.
type DrainRequest struct {
	App  string        `json:"app"`
	ID   string        `json:"id"`
	Wait time.Duration `json:"wait"`
}

// DrainReply is one edge's answer.
type DrainReply struct {
	HostID string `json:"host_id"`
	// Routed: the edge still had the machine in rotation at the end of
	// the wait. InFlight: requests and connections it still had open.
	Routed   bool `json:"routed,omitempty"`
	InFlight int  `json:"in_flight,omitempty"`
}

// StartSubject is the core NATS subject on which the edge of host from
// asks host hostID to start one of its stopped machines for a request it
// holds (autostart): StartRequest, answered by a StartReply once the
// machine's desired state says started. A host may publish only with
// its own id as from (HostPermissions), so the receiver knows who asks.
func StartSubject(hostID, from string) string { return "perch.start." + hostID + "." + from }

// StartSubjects are the start requests to host hostID, from any host:
// what its agent subscribes to.
func StartSubjects(hostID string) string { return "perch.start." + hostID + ".*" }

// StartSender is the host that sent a request on subject, from
// StartSubject; "" if subject is not one.
func StartSender(subject string) string {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 || parts[0] != "perch" || parts[1] != "start" {
		return ""
	}
	return parts[3]
}

// StartRequest asks a host to start machine ID of App.
type StartRequest struct {
	App string `json:"app"`
	ID  string `json:"id"`
	// Region is the region of the edge that asks, for the event; the
	// receiver checks it is the sender's.
	Region string `json:"region"`
	// From is the sending host, set by the receiver from the subject
	// (StartSender), never read from the request.
	From string `json:"-"`
}

// StartReply answers a StartRequest; Error is empty on success.
type StartReply struct {
	Error string `json:"error,omitempty"`
}

// DemandSubject is the core NATS subject on which the edge of host
// hostID in region publishes, every DemandInterval, what it saw of each
// app: DemandReport. A host may publish only its own (HostPermissions);
// the autoscaler takes the region and host from the subject, never from
// the report. Nothing on the request path waits for it; a lost report is
// a gap.
func DemandSubject(region, hostID string) string { return "perch.demand." + region + "." + hostID }

// DemandFilter matches every region's demand reports.
const DemandFilter = "perch.demand.*.*"

// DemandSender is the region and host of a report's subject, from
// DemandSubject; ok is false if subject is not one.
func DemandSender(subject string) (region, hostID string, ok bool) {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 || parts[0] != "perch" || parts[1] != "demand" {
		return "", "", false
	}
	return parts[2], parts[3], true
}

// DemandInterval is how often an edge publishes its demand.
const DemandInterval = 2 * time.Second

// DemandReport is one edge's demand over the last interval, by app; its
// Region is the origin region of every request in it.
type DemandReport struct {
	Region   string      `json:"region"`
	HostID   string      `json:"host_id"`
	At       time.Time   `json:"at"`
	Interval float64     `json:"interval_s"`
	Apps     []AppDemand `json:"apps"`
}

// AppDemand is one app's share of a DemandReport.
type AppDemand struct {
	App string `json:"app"`
	// RPS is requests that arrived per second; Concurrency the average
	// number in flight over the interval (the sum of their times over the
	// interval: Little's law); InFlight the number in flight at its end.
	RPS         float64 `json:"rps"`
	Concurrency float64 `json:"concurrency"`
	InFlight    int64   `json:"in_flight"`
	// LatencyMS is the average time from arrival to the end of the answer
	// of the requests finished in the interval; ServedBy counts them by the
	// region of the machine that answered ("" for none).
	LatencyMS float64          `json:"latency_ms"`
	ServedBy  map[string]int64 `json:"served_by,omitempty"`
}

// AutoscaleRecord is an app's key in perch_autoscale: its settings (written
// by the API) and the active autoscaler's view (written by it).
type AutoscaleRecord struct {
	App       string                  `json:"app"`
	Settings  api.AutoscaleSettings   `json:"settings"`
	Regions   []api.AutoscaleRegion   `json:"regions,omitempty"`
	Decisions []api.AutoscaleDecision `json:"decisions,omitempty"`
	UpdatedAt time.Time               `json:"updated_at,omitzero"`
}
