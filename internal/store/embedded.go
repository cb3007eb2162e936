package store

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/crypto/bcrypt"
)

// ServerUser is the control plane's own NATS user, with every permission.
const ServerUser = "perch"

// SystemUser is the control plane's user in nats-server's system account
// ($SYS), with the same password as ServerUser (known to the servers
// only, never to hosts): JetStream's meta-level requests, such as a
// server's removal from the cluster ($JS.API.SERVER.REMOVE), are taken
// from the system account alone (servers.go).
const SystemUser = "perch-system"

// Embedded is a nats-server with JetStream running inside this process.
// It authenticates clients itself (server.Authentication): the control
// plane as ServerUser, each host as its own user with HostPermissions.
// Users and permissions change without a configuration reload: nats-server
// 2.15's reload writes its options while direct gets read them unlocked (a
// data race the race detector reports).
type Embedded struct {
	srv      *server.Server
	url      string
	password string

	leafURL string // where hosts' leaf nodes connect; "" if none

	mu    sync.Mutex // guards hosts and conns; held across RegisterUser
	hosts map[string]HostUser
	conns map[string]map[uint64]server.ClientAuthentication // by host, by client id
}

// HostUser is one host's NATS user: its name is the host id, its password
// a bcrypt hash of its credential's secret, its permissions
// HostPermissions of its region and machines.
type HostUser struct {
	HostID     string
	Region     string
	PassBcrypt string
	// Machines are the keys ("<app>.<id>") of the machines placed on
	// the host: the only specs, statuses and log subjects it may write.
	Machines []string
}

var _ server.Authentication = (*Embedded)(nil)

// Cluster joins an embedded nats-server to a JetStream cluster of
// control planes (perch server --cluster-name): routes to every peer,
// authenticated by the shared NATS password, and JetStream clustered
// (Raft), so each bucket and stream is replicated (Replicas).
type Cluster struct {
	// Name is the cluster's name, the same on every server.
	Name string
	// Listen is this server's route address ("host:port").
	Listen string
	// Peers are every server's route addresses ("host:port"), this one's
	// included or not.
	Peers []string
	// ServerName is this server's name in the cluster, unique (default:
	// from Listen).
	ServerName string
}

// Replicas is how many copies of each bucket and stream a cluster keeps:
// every server's up to three.
func (c *Cluster) Replicas() int {
	if c == nil || c.Name == "" {
		return 1
	}
	n := 1
	for _, p := range c.Peers {
		if p != c.Listen {
			n++
		}
	}
	return min(n, 3)
}

// RunEmbedded starts nats-server with JetStream, its data under dir,
// listening on addr ("host:port"; port 0 picks one). The control plane
// connects as ServerUser with password; hosts get their own users
// (SetHostUsers).
func RunEmbedded(dir, addr, password string, log *slog.Logger) (*Embedded, error) {
	return RunEmbeddedCluster(dir, addr, password, nil, log)
}

// RunEmbeddedCluster is RunEmbedded joining cluster's peers (none if nil).
func RunEmbeddedCluster(dir, addr, password string, cluster *Cluster, log *slog.Logger) (*Embedded, error) {
	return RunEmbeddedWith(dir, addr, password, EmbeddedOptions{Cluster: cluster}, log)
}

// EmbeddedOptions are the embedded server's optional parts.
type EmbeddedOptions struct {
	// Cluster joins the other servers' (none if nil).
	Cluster *Cluster
	// LeafListen ("host:port"), if set, takes hosts' leaf nodes
	// (RunLeaf), each authenticated as its host's user with
	// LeafPermissions, and gives JetStream the domain HubDomain.
	LeafListen string
}

// RunEmbeddedWith is RunEmbedded with EmbeddedOptions.
func RunEmbeddedWith(dir, addr, password string, o EmbeddedOptions, log *slog.Logger) (*Embedded, error) {
	cluster := o.Cluster
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("nats listen address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("nats listen port %q: %w", portStr, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	e := &Embedded{password: password, hosts: map[string]HostUser{}, conns: map[string]map[uint64]server.ClientAuthentication{}}
	opts := &server.Options{
		ServerName:                 "perch",
		Host:                       host,
		Port:                       port,
		JetStream:                  true,
		StoreDir:                   dir,
		CustomClientAuthentication: e,
		NoSigs:                     true,
		NoLog:                      true,
		MaxPayload:                 8 << 20,
	}
	if cluster != nil && cluster.Name != "" {
		if err := clusterOptions(opts, cluster, password); err != nil {
			return nil, err
		}
	}
	if o.LeafListen != "" {
		lh, lp, err := net.SplitHostPort(o.LeafListen)
		if err != nil {
			return nil, fmt.Errorf("leaf node listen address %q: %w (write host:port, e.g. 10.0.0.1:4283)", o.LeafListen, err)
		}
		port, err := strconv.Atoi(lp)
		if err != nil || port < 0 {
			return nil, fmt.Errorf("leaf node listen port %q: want a port number 1-65535", lp)
		}
		if port == 0 {
			port = server.RANDOM_PORT
		}
		opts.LeafNode = server.LeafNodeOpts{Host: lh, Port: port}
		opts.JetStreamDomain = HubDomain
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	e.srv = srv // before Start: Check reads it
	if os.Getenv("PERCH_NATS_DEBUG") != "" {
		opts.NoLog = false
		srv.ConfigureLogger()
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("nats server on %s did not become ready in 10s", addr)
	}
	e.url = srv.ClientURL()
	if o.LeafListen != "" {
		// The port picked if 0: nats-server writes it into opts.
		e.leafURL = leafURL(opts.LeafNode.Host, opts.LeafNode.Port)
	}
	log.Info("embedded nats started", "url", e.url, "dir", dir)
	return e, nil
}

func clusterOptions(opts *server.Options, c *Cluster, password string) error {
	host, portStr, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("cluster listen address %q: %w (write host:port, e.g. 10.0.0.1:4282)", c.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 {
		return fmt.Errorf("cluster listen port %q: want a port number 1-65535", portStr)
	}
	name := c.ServerName
	if name == "" {
		name = strings.NewReplacer(":", "-", ".", "-", "[", "", "]", "").Replace(c.Listen)
	}
	opts.ServerName = name
	opts.Cluster = server.ClusterOpts{
		Name: c.Name, Host: host, Port: port,
		// Routes authenticate with the control plane's NATS password:
		// every server of a cluster has the same (docs/servers.md).
		Username: ServerUser, Password: password,
	}
	for _, p := range c.Peers {
		if p == c.Listen {
			continue
		}
		if _, _, err := net.SplitHostPort(p); err != nil {
			return fmt.Errorf("cluster peer %q: %w (write host:port of its --cluster-listen)", p, err)
		}
		opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats-route", User: url.UserPassword(ServerUser, password), Host: p})
	}
	return nil
}

// Check authenticates a client (server.Authentication).
func (e *Embedded) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	if o.Username == ServerUser || o.Username == SystemUser {
		if subtle.ConstantTimeCompare([]byte(o.Password), []byte(e.password)) != 1 {
			return false
		}
		u := &server.User{Username: o.Username}
		if o.Username == SystemUser {
			if c.Kind() != server.CLIENT {
				return false // never a leaf node
			}
			u.Account = e.srv.SystemAccount()
		}
		c.RegisterUser(u)
		return true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	u, ok := e.hosts[o.Username]
	if !ok || bcrypt.CompareHashAndPassword([]byte(u.PassBcrypt), []byte(o.Password)) != nil {
		return false
	}
	if c.Kind() == server.LEAF {
		// A host's leaf node: its mirrors only, whatever its machines
		// (SetHostMachines leaves it alone).
		c.RegisterUser(&server.User{Username: u.HostID, Permissions: LeafPermissions(u.HostID)})
	} else {
		c.RegisterUser(hostUser(u))
	}
	if e.conns[u.HostID] == nil {
		e.conns[u.HostID] = map[uint64]server.ClientAuthentication{}
	}
	e.conns[u.HostID][c.GetID()] = c
	return true
}

func hostUser(u HostUser) *server.User {
	return &server.User{Username: u.HostID, Permissions: HostPermissions(u.HostID, u.Region, u.Machines)}
}

// SetHostUsers adds or replaces host users: a host that joined, or every
// known host at start. A user given without machines keeps those it had
// (SetHostMachines sets them).
func (e *Embedded) SetHostUsers(users ...HostUser) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, u := range users {
		if old, ok := e.hosts[u.HostID]; ok && u.Machines == nil {
			u.Machines = old.Machines
		}
		e.hosts[u.HostID] = u
	}
	return nil
}

// SetHostMachines replaces the machines of the hosts in byHost (by host
// id; hosts without a user are skipped). The new permissions apply at
// once to the hosts' connections, which stay up.
func (e *Embedded) SetHostMachines(byHost map[string][]string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, ms := range byHost {
		u, ok := e.hosts[id]
		if !ok {
			continue
		}
		u.Machines = ms
		e.hosts[id] = u
		if len(e.conns[id]) == 0 {
			continue
		}
		// Only the host's live connections: a closed one is forgotten.
		cz, err := e.srv.Connz(&server.ConnzOptions{User: id, Limit: 1 << 16})
		if err != nil {
			return fmt.Errorf("nats: connections of %s: %w", id, err)
		}
		live := map[uint64]bool{}
		for _, ci := range cz.Conns {
			live[ci.Cid] = true
		}
		for cid, c := range e.conns[id] {
			if c.Kind() == server.LEAF {
				continue // removed with the host (RemoveHostUser)
			}
			if !live[cid] {
				delete(e.conns[id], cid)
				continue
			}
			c.RegisterUser(hostUser(u))
		}
	}
	return nil
}

// RemoveHostUser forgets host id's user and closes its live
// connections at once: a removed host can no longer connect, and what it
// had connected is cut (perch hosts remove).
func (e *Embedded) RemoveHostUser(id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.hosts, id)
	conns := e.conns[id]
	delete(e.conns, id)
	cz, err := e.srv.Connz(&server.ConnzOptions{User: id, Limit: 1 << 16})
	if err != nil {
		return fmt.Errorf("nats: connections of %s: %w", id, err)
	}
	for _, ci := range cz.Conns {
		// An error means it closed by itself meanwhile.
		_ = e.srv.DisconnectClientByID(ci.Cid)
	}
	// Its leaf node's connection too (Connz lists clients only).
	for cid, c := range conns {
		if c.Kind() == server.LEAF {
			_ = e.srv.DisconnectClientByID(cid)
		}
	}
	return nil
}

// ServerName is the server's name (its cluster's member name).
func (e *Embedded) ServerName() string { return e.srv.Name() }

// LeafURL is where hosts' leaf nodes connect (nats-leaf://host:port),
// "" without EmbeddedOptions.LeafListen.
func (e *Embedded) LeafURL() string { return e.leafURL }

func leafURL(host string, port int) string {
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "nats-leaf://" + net.JoinHostPort(host, strconv.Itoa(port))
}

// URL is the client URL of the server.
func (e *Embedded) URL() string { return e.url }

// Shutdown stops the server and waits for it.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// Meta is JetStream's meta group as one server sees it: which servers
// the cluster has, which are up, and who leads.
type Meta struct {
	Clustered bool
	Cluster   string
	// Leader is the meta leader's name, "" while there is none (an
	// election, or a lost quorum).
	Leader string
	// Self is this server; SelfCurrent: it has every meta operation.
	Self        string
	SelfCurrent bool
	// Size is the servers the cluster counts, this one included.
	Size  int
	Peers []MetaPeer // the others
}

// MetaPeer is another server of the meta group.
type MetaPeer struct {
	Name     string
	Current  bool
	Offline  bool
	LastSeen time.Duration
	Lag      uint64
}

// Quorum reports whether a majority of the servers is up (as this
// server sees them): a meta leader being elected after one server's
// death still has its quorum.
func (m Meta) Quorum() bool {
	if !m.Clustered {
		return true
	}
	up := 1
	for _, p := range m.Peers {
		if !p.Offline {
			up++
		}
	}
	return up >= m.Size/2+1
}

// Meta reads the meta group from this server's JetStream.
func (e *Embedded) Meta() Meta {
	m := Meta{Self: e.srv.Name(), SelfCurrent: true, Size: 1, Leader: e.srv.Name()}
	js, err := e.srv.Jsz(&server.JSzOptions{})
	if err != nil || js.Meta == nil {
		return m
	}
	m.Clustered, m.Cluster, m.Leader = true, js.Meta.Name, js.Meta.Leader
	m.SelfCurrent = e.srv.JetStreamIsCurrent()
	for _, p := range js.Meta.Replicas {
		if p.Name == m.Self { // listed while there is no leader
			continue
		}
		m.Peers = append(m.Peers, MetaPeer{Name: p.Name, Current: p.Current, Offline: p.Offline, LastSeen: p.Active, Lag: p.Lag})
	}
	m.Size = max(js.Meta.Size, len(m.Peers)+1)
	return m
}
