package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/mesh"
)

// SixPNName is the TUN device through which host id's kernel sends its
// machines' 6PN packets for other hosts into the mesh (docs/mesh.md).
func SixPNName(hostID string) string {
	h := sha256.Sum256([]byte(hostID))
	return "p6-" + hex.EncodeToString(h[:4])
}

// StartSixPN makes the TUN device name, routes other hosts' 6PN from
// bridge into it and carries its packets over node's mesh, until ctx is
// done; the device goes with the process (or when ctx ends), its routing
// rule with Cleanup (hostnet.RemoveSixPN). host is this host's subnet
// (mesh.HostAddrs).
func StartSixPN(ctx context.Context, node *mesh.Node, name, bridge string, host netip.Prefix, log *slog.Logger) (done <-chan error, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dev, err := tun.CreateTUN(name, mesh.SixPNMTU)
	if err != nil {
		return nil, fmt.Errorf("agent: 6PN: create TUN device %s: %w", name, err)
	}
	if err := hostnet.SetupSixPN(name, bridge, mesh.SixPNMTU); err != nil {
		dev.Close()
		return nil, fmt.Errorf("agent: 6PN: %w", err)
	}
	ch := make(chan error, 1)
	go func() {
		err := node.Forward6PN(ctx, dev, host, log)
		if err != nil {
			log.Error("6PN to other hosts stopped", "err", err)
		}
		ch <- err
	}()
	return ch, nil
}
