package server

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/meshhost"
	"github.com/perchhq/perch/internal/store"
)

// TestHostCannotRewriteItsMeshAssignment: the subnets and mesh address
// the control plane assigned a host come only from the control plane. A
// host with its own credential tries to move its 6PN /64 and mesh
// address onto another host's, over NATS (its record, the other's) and
// through the API (heartbeat, registration again): each is refused or
// ignored, and the WireGuard peers every other host builds from the host
// records (public key, endpoint, AllowedIPs) stay as they were.
func TestHostCannotRewriteItsMeshAssignment(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	keys := map[string]string{}
	join := func(region string) *api.HostCredential {
		jt, err := s.c.CreateJoinToken(ctx, api.JoinTokenRequest{Region: region})
		if err != nil {
			t.Fatal(err)
		}
		cred, err := api.NewClient(s.URL(), jt.Token).JoinHost(ctx)
		if err != nil {
			t.Fatal(err)
		}
		key, err := meshhost.LoadKey(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		keys[cred.HostID] = key.String()
		c := api.NewClient(s.URL(), cred.Bearer())
		if _, err := c.RegisterHost(ctx, api.Host{Region: region, CPUs: 2, MemoryMB: 1024, MeshKey: key.String()}); err != nil {
			t.Fatal(err)
		}
		if err := c.Heartbeat(ctx, cred.HostID, api.HostHeartbeat{MeshEndpoint: "127.0.0.1:" + map[string]string{"iad": "51001", "ams": "51002", "ord": "51003"}[region]}); err != nil {
			t.Fatalf("heartbeat of host %s: %v", cred.HostID, err)
		}
		return cred
	}
	a, b, _ := join("iad"), join("ams"), join("ord")

	// peers is every host's WireGuard peer as meshhost builds it from the
	// records, its AllowedIPs spelled out.
	peers := func() map[string]string {
		hs, err := s.c.ListHosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, h := range hs {
			if h.Role == api.HostRoleControl {
				continue
			}
			p, err := meshhost.PeerOf(h)
			if err != nil {
				t.Fatalf("host %s's record makes no mesh peer: %v (%+v)", h.ID, err, h)
			}
			out[h.ID] = p.PublicKey.String() + " " + p.Endpoint.String() + " allowed " + netip.PrefixFrom(p.Addr, 128).String() + "," + p.Subnet.String() + " " + h.Region + " " + h.Subnet
		}
		if len(out) != 3 {
			t.Fatalf("peers %v, want 3", out)
		}
		return out
	}
	before := peers()
	hs, err := s.c.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var bRec api.Host
	for _, h := range hs {
		if h.ID == b.HostID {
			bRec = h
		}
	}
	t.Logf("before: %v", before)

	// Over NATS, with host A's own credential.
	boot, err := api.NewClient(s.URL(), a.Bearer()).Bootstrap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var violations []string
	nc, err := nats.Connect(boot.NATSURL, nats.UserInfo(a.HostID, a.Secret), nats.CustomInboxPrefix(store.HostInboxPrefix(a.HostID)),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			violations = append(violations, err.Error())
			mu.Unlock()
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, store.BucketHosts)
	if err != nil {
		t.Fatalf("host A cannot read perch_hosts: %v", err)
	}
	forged := func(id string) []byte {
		e, _ := kv.Get(ctx, id)
		if e == nil {
			t.Fatalf("host A cannot read host %s's record", id)
		}
		s := strings.NewReplacer(`"`+bRec.Subnet6+`"`, `"fdaa:0:ffff::/64"`).Replace(string(e.Value()))
		if id == a.HostID {
			s = strings.NewReplacer(`"subnet6":"`, `"subnet6":"`+bRec.Subnet6+`","x":"`, `"mesh_addr":"`, `"mesh_addr":"`+bRec.MeshAddr+`","y":"`).Replace(string(e.Value()))
		}
		return []byte(s)
	}
	// refused waits for the server's permissions violation on subj.
	refused := func(subj string) bool {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			mu.Lock()
			n := strings.Count(strings.Join(violations, "\n"), `"`+subj+`"`)
			mu.Unlock()
			if n >= 2 { // the put and the delete
				return true
			}
		}
		return false
	}
	for _, id := range []string{a.HostID, b.HostID} {
		short, cancel := context.WithTimeout(ctx, time.Second)
		_, err := kv.Put(short, id, forged(id))
		cancel()
		if err == nil {
			t.Errorf("host A rewrote host %s's record over NATS", id)
		}
		short, cancel = context.WithTimeout(ctx, time.Second)
		err = kv.Delete(short, id)
		cancel()
		if err == nil {
			t.Errorf("host A deleted host %s's record over NATS", id)
		}
		if !refused("$KV." + store.BucketHosts + "." + id) {
			t.Errorf("no permissions violation for host A's writes of host %s's record: %v", id, violations)
		}
	}

	// Through the API: the heartbeat carries only what the host owns.
	ac := api.NewClient(s.URL(), a.Bearer())
	req, _ := http.NewRequestWithContext(ctx, "POST", s.URL()+"/v1/hosts/"+a.HostID+"/heartbeat",
		strings.NewReader(`{"mesh_endpoint":"127.0.0.1:51001","subnet6":"`+bRec.Subnet6+`","mesh_addr":"`+bRec.MeshAddr+`"}`))
	req.Header.Set("Authorization", "Bearer "+a.Bearer())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("heartbeat naming subnet6 and mesh_addr: %d, want 400", resp.StatusCode)
	}
	err = ac.Heartbeat(ctx, b.HostID, api.HostHeartbeat{MeshEndpoint: "127.0.0.1:51001"})
	wantStatus(t, err, 403, "only itself")
	err = ac.Heartbeat(ctx, a.HostID, api.HostHeartbeat{MeshEndpoint: "not an endpoint"})
	wantStatus(t, err, 400, "mesh_endpoint")
	// Registering again keeps the assignment.
	if h, err := ac.RegisterHost(ctx, api.Host{ID: a.HostID, Region: "iad", CPUs: 2, MemoryMB: 1024, MeshKey: keys[a.HostID], Subnet: bRec.Subnet, Subnet6: bRec.Subnet6, MeshAddr: bRec.MeshAddr}); err != nil {
		t.Fatal(err)
	} else if h.Subnet6 == bRec.Subnet6 || h.MeshAddr == bRec.MeshAddr || h.Subnet == bRec.Subnet {
		t.Errorf("host A registered again with host B's assignment and got %+v", h)
	}
	// Nor can it take host B's WireGuard key (every other host would
	// give B's peer its AllowedIPs, or the reverse).
	_, err = ac.RegisterHost(ctx, api.Host{ID: a.HostID, Region: "iad", CPUs: 2, MemoryMB: 1024, MeshKey: keys[b.HostID]})
	wantStatus(t, err, 409, b.HostID)
	// Its own heartbeat still lands (the registration above dropped its
	// endpoint, as an agent's restart does until its next heartbeat).
	if err := ac.Heartbeat(ctx, a.HostID, api.HostHeartbeat{MeshEndpoint: "127.0.0.1:51001"}); err != nil {
		t.Fatalf("host A's own heartbeat: %v", err)
	}

	after := peers()
	for id, p := range before {
		if after[id] != p {
			t.Errorf("host %s's mesh peer changed:\n  before %s\n  after  %s", id, p, after[id])
		}
	}
}
