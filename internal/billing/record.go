package billing

import (
	"fmt"
	"time"
)

// Record kinds.
const (
	KindMachine = "machine" // a machine's time in one state
	KindEgress  = "egress"  // bytes an edge sent for an app
)

// Stream and subjects of metering records.
const (
	Stream = "PERCH_USAGE"
	// Subject is where a host publishes its batches: perch.usage.<host>.
	SubjectPrefix = "perch.usage."
	Filter        = "perch.usage.>"
	// StreamMaxAge keeps a little over two months of records, so a
	// control plane that starts mid-month rebuilds the month and the last.
	StreamMaxAge = 70 * 24 * time.Hour
)

// Record is one metering record. Its ID names one (machine, interval) or
// (host, app, interval); the ledger counts each ID once, however often it
// is sent.
type Record struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	App     string    `json:"app"`
	Region  string    `json:"region"`
	Host    string    `json:"host,omitempty"`
	Machine string    `json:"machine,omitempty"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	// For machines: the state ("started", "stopped", "suspended") and size.
	State    string  `json:"state,omitempty"`
	CPUKind  string  `json:"cpu_kind,omitempty"`
	CPUs     int     `json:"cpus,omitempty"`
	MemoryMB int     `json:"memory_mb,omitempty"`
	RootfsGB float64 `json:"rootfs_gb,omitempty"`
	VolumeGB float64 `json:"volume_gb,omitempty"`
	// For egress: bytes sent to clients.
	Bytes int64 `json:"bytes,omitempty"`
}

// Batch is one message on the stream: a host's records.
type Batch struct {
	Host    string   `json:"host"`
	Records []Record `json:"records"`
}

// MachineRecordID names a machine's interval beginning at start.
func MachineRecordID(machine string, start time.Time) string {
	return fmt.Sprintf("m.%s.%d", machine, start.UnixNano())
}

// EgressRecordID names a host's egress record for app ending at end.
func EgressRecordID(host, app string, end time.Time) string {
	return fmt.Sprintf("e.%s.%s.%d", host, app, end.UnixNano())
}

// Split cuts a record at day boundaries (00:00 UTC), so each piece
// belongs to one day, and so to one month and one billing period whatever
// its anchor day; the piece after the n-th boundary gets the ID
// "<id>.<n>". Egress bytes stay with the last piece.
func Split(r Record) []Record {
	var out []Record
	id := r.ID
	for i := 1; ; i++ {
		end := r.Start.UTC().Truncate(24 * time.Hour).Add(24 * time.Hour)
		if !r.End.After(end) {
			return append(out, r)
		}
		head := r
		head.End, head.Bytes = end, 0
		out = append(out, head)
		r.Start = end
		r.ID = fmt.Sprintf("%s.%d", id, i)
	}
}
