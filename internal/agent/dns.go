package agent

import (
	"fmt"
	"net/netip"

	"github.com/perchhq/perch/internal/edge"
	"github.com/perchhq/perch/internal/internaldns"
)

// DNSPort is where machines find the host's resolver: port 53 of their
// gateway, the bridge's address, which their /etc/resolv.conf names.
const DNSPort = 53

// startDNS binds the host's internal DNS (<app>.internal and friends) on
// the bridge gateway. It answers from the edge's route table, which holds
// every machine of the world, so a query never reaches the store.
// Other names go to the host's own resolvers.
func (a *Agent) startDNS(e *edge.Edge) (*internaldns.Server, error) {
	ups, err := internaldns.UpstreamsFromResolvConf("/etc/resolv.conf")
	if err != nil {
		a.log.Warn("no upstream resolvers for machines: names outside .internal will be refused", "err", err)
	}
	srv, err := internaldns.New(internaldns.Config{
		Addr:     netip.AddrPortFrom(a.gw.Addr(), DNSPort).String(),
		Source:   internaldns.SourceFunc(func() []internaldns.Machine { return dnsMachines(e.Snapshot()) }),
		Upstream: ups,
		Log:      a.log.With("component", "internaldns"),
	})
	if err != nil {
		return nil, fmt.Errorf("agent: internal DNS: %w", err)
	}
	return srv, nil
}

func dnsMachines(s *edge.Snapshot) []internaldns.Machine {
	ms := s.Machines()
	out := make([]internaldns.Machine, 0, len(ms))
	for _, m := range ms {
		out = append(out, internaldns.Machine{
			App: m.App, ID: m.ID, Region: m.Region, Org: m.Org,
			Addr: m.Addr6, IPv4: m.IPv4, Started: m.Started,
		})
	}
	return out
}
