package store

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Embedded is a nats-server with JetStream running inside this process.
type Embedded struct {
	srv *server.Server
	url string
}

// RunEmbedded starts nats-server with JetStream, its data under dir,
// listening on addr ("host:port"; port 0 picks one) and requiring token.
func RunEmbedded(dir, addr, token string, log *slog.Logger) (*Embedded, error) {
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
	opts := &server.Options{
		ServerName:    "perch",
		Host:          host,
		Port:          port,
		JetStream:     true,
		StoreDir:      dir,
		Authorization: token,
		NoSigs:        true,
		NoLog:         true,
		MaxPayload:    8 << 20,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("nats server on %s did not become ready in 10s", addr)
	}
	e := &Embedded{srv: srv, url: srv.ClientURL()}
	log.Info("embedded nats started", "url", e.url, "dir", dir)
	return e, nil
}

// URL is the client URL of the server.
func (e *Embedded) URL() string { return e.url }

// Shutdown stops the server and waits for it.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}
