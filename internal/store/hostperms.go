package store

import (
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// HostBuckets are the buckets a host reads: its edge routes by apps,
// every machine's spec and status and the hosts; it serves certificates
// from the edge copy (never perch_tls, which holds the dev CA's and the
// ACME accounts' keys), answers ACME challenges, and takes autostop's
// short locks (perch_locks: only those keys); its edge and BGP speaker
// serve the anycast addresses in perch_ips. Nothing else (tokens, secrets, budgets, releases, TLS
// storage) is readable with a host's NATS user.
var HostBuckets = []string{BucketApps, BucketMachines, BucketStatus, BucketHosts, BucketEdgeTLS, BucketChallenges, BucketVolumes, BucketIPs}

// HostInboxPrefix is the inbox prefix of host id's connection: a host may
// subscribe only to its own inboxes, so it never sees replies meant for
// the control plane or another host.
func HostInboxPrefix(hostID string) string { return "_INBOX_" + hostID }

// VolumeGrantPrefix marks a volume's key ("volume:<app>.<id>") among a
// host's granted machines: the host may delete that volume's record.
const VolumeGrantPrefix = "volume:"

// HostReplyWindow is how long after a request reaches a host the host
// may still answer it; NATS drops a later answer unseen. It must outlast
// the longest a requester waits: the server's volume operations (a
// snapshot copies the whole image) wait up to 5 minutes; with a window
// of 1 minute, a snapshot that took longer had its answer dropped and
// the server said the host "did not answer" though it had done the work.
const HostReplyWindow = 10 * time.Minute

// HostPermissions are the NATS permissions of host id in region with the
// machines placed on it (keys "<app>.<id>", and its volumes' keys after
// VolumeGrantPrefix): exactly the subjects its
// agent and edge use (docs/security.md, "Hosts and their credentials").
// Specs, statuses and log subjects are keyed by app and machine, not
// host, so each machine is granted by name; the control plane grants it
// before it writes the spec.
func HostPermissions(hostID, region string, machines []string) *server.Permissions {
	var pub []string
	for _, b := range HostBuckets {
		s := "KV_" + b
		pub = append(pub,
			"$JS.API.STREAM.INFO."+s,
			"$JS.API.CONSUMER.CREATE."+s, "$JS.API.CONSUMER.CREATE."+s+".>",
			"$JS.API.CONSUMER.DELETE."+s+".>", "$JS.API.CONSUMER.INFO."+s+".>",
			"$JS.FC."+s+".>",
			"$JS.API.DIRECT.GET."+s+".$KV."+b+".>",
			// In a cluster these buckets are read from their leaders
			// (store.leaderReads): a get names its key in the body, and
			// the whole bucket is the host's to read.
			"$JS.API.STREAM.MSG.GET."+s,
		)
	}
	// Snapshots crossing between hosts (agent/volumes.go): the object
	// store's stream, its chunks and metadata.
	moves := "OBJ_" + ObjectVolumeMoves
	pub = append(pub,
		"$JS.API.STREAM.INFO."+moves, "$JS.API.STREAM.MSG.GET."+moves, "$JS.API.STREAM.PURGE."+moves,
		"$JS.API.DIRECT.GET."+moves, "$JS.API.DIRECT.GET."+moves+".>",
		"$JS.API.CONSUMER.CREATE."+moves, "$JS.API.CONSUMER.CREATE."+moves+".>",
		"$JS.API.CONSUMER.DELETE."+moves+".>", "$JS.API.CONSUMER.INFO."+moves+".>",
		"$JS.FC."+moves+".>", "$O."+ObjectVolumeMoves+".>",
	)
	autostopLocks := "$KV." + BucketLocks + ".lock.autostop.*." + region
	// Its region's session ticket keys, read and rotated by its edge;
	// never another region's.
	tickets := "$KV." + BucketTickets + "." + region
	pub = append(pub,
		"$JS.API.STREAM.INFO.KV_"+BucketTickets,
		"$JS.API.DIRECT.GET.KV_"+BucketTickets+"."+tickets,
		tickets,
	)
	pub = append(pub,
		"$JS.API.INFO",
		"$JS.API.STREAM.INFO.KV_"+BucketLocks, // bound, never watched
		"$JS.API.DIRECT.GET.KV_"+BucketLocks+"."+autostopLocks,
		autostopLocks,
		"$KV."+BucketChallenges+".ack.*."+hostID,
		// The edge's own lines in an app's log (edge.EdgeLogMachine).
		LogSubject("*", region, "edge"),
		"perch.usage."+hostID,
		DemandSubject(region, hostID),
		DrainSubject(hostID),
		StartSubject("*", hostID), // an edge asks another host to start a machine, as itself
	)
	for _, key := range machines {
		if vol, ok := strings.CutPrefix(key, VolumeGrantPrefix); ok {
			// A volume destroyed while its host was down: the host
			// removes its record.
			pub = append(pub, "$KV."+BucketVolumes+"."+vol)
			continue
		}
		app, id, ok := strings.Cut(key, ".")
		if !ok {
			continue
		}
		pub = append(pub, "$KV."+BucketStatus+"."+key, "$KV."+BucketMachines+"."+key, LogSubject(app, region, id))
	}
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: []string{
			HostInboxPrefix(hostID) + ".>",
			DrainSubjects,
			StartSubjects(hostID),
			VolumeSubject(hostID),
		}},
		// Replies to requests it received (drain, start, volume work)
		// and to JetStream's flow control, nothing else.
		Response: &server.ResponsePermission{MaxMsgs: 1, Expires: HostReplyWindow},
	}
}
