package store

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestSystemUser: SystemUser, with the servers' password alone, lands in
// nats-server's system account (it gets an answer to a server ping, a
// system request); ServerUser does not, nor does a wrong password
// connect. A single server needs no flag for it.
func TestSystemUser(t *testing.T) {
	e, err := RunEmbedded(t.TempDir(), "127.0.0.1:0", "server-secret", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown()
	ping := func(user, pass string) error {
		nc, err := nats.Connect(e.URL(), nats.UserInfo(user, pass))
		if err != nil {
			return err
		}
		defer nc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = nc.RequestWithContext(ctx, "$SYS.REQ.SERVER.PING", nil)
		return err
	}
	if err := ping(SystemUser, "server-secret"); err != nil {
		t.Errorf("system user's server ping: %v", err)
	}
	if err := ping(ServerUser, "server-secret"); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("the control plane's user pinged the servers (%v): it is in the system account", err)
	}
	if err := ping(SystemUser, "wrong"); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("system user with a wrong password: %v, want refused", err)
	}
	if _, err := e.RemoveServer(context.Background(), "other"); !errors.Is(err, ErrNotClustered) {
		t.Errorf("remove a server of a single server: %v, want ErrNotClustered", err)
	}
}
