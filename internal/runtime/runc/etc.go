package runc

import (
	"fmt"
	"net/netip"
	"os"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/perchhq/perch/internal/runtime"
)

// etcFile is a file the driver writes into the machine's directory and
// bind-mounts over the image's.
type etcFile struct {
	name, dest, content string
	readOnly            bool
}

// writeEtc writes machine id's /etc/hosts and, when n lists nameservers,
// its /etc/resolv.conf into the machine's directory, and returns the bind
// mounts that put them in place. As Docker does, they replace the image's
// files without touching the image's root filesystem (shared and
// read-only) or the machine's writable layer. They belong to the
// machine's root, host uid root. /etc/hosts stays writable
// for the entrypoints that append to it; resolv.conf is the host's to say.
func (d *Driver) writeEtc(id, hostname string, n runtime.Net, root int) ([]specs.Mount, error) {
	files := []etcFile{{fileHosts, "/etc/hosts", hostsFile(hostname, n), false}}
	if len(n.DNS) > 0 {
		files = append(files, etcFile{fileResolv, "/etc/resolv.conf", resolvConf(n.DNS), true})
	}
	var mounts []specs.Mount
	for _, f := range files {
		path := d.path(id, f.name)
		if err := os.WriteFile(path, []byte(f.content), 0o644); err != nil {
			return nil, fmt.Errorf("runc: write %s: %w", f.dest, err)
		}
		// The machine's root owns it (host uid root: its user namespace's root).
		if err := os.Chown(path, root, root); err != nil {
			return nil, fmt.Errorf("runc: write %s: %w", f.dest, err)
		}
		opts := []string{"rbind", "rprivate", "nosuid", "nodev", "noexec"}
		if f.readOnly {
			opts = append(opts, "ro")
		}
		mounts = append(mounts, specs.Mount{Destination: f.dest, Type: "bind", Source: path, Options: opts})
	}
	return mounts, nil
}

// hostsFile names localhost, and the machine on each of its addresses.
func hostsFile(hostname string, n runtime.Net) string {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	if n.Bridge == "" {
		// As Debian does for a host without a fixed address.
		fmt.Fprintf(&b, "127.0.1.1\t%s\n", hostname)
		return b.String()
	}
	fmt.Fprintf(&b, "%s\t%s\n", n.Addr.Addr(), hostname)
	if n.Addr6.IsValid() {
		fmt.Fprintf(&b, "%s\t%s\n", n.Addr6.Addr(), hostname)
	}
	return b.String()
}

// resolvConf lists the nameservers and nothing else: the resolver's
// defaults suit .internal names and all others alike.
func resolvConf(dns []netip.Addr) string {
	var b strings.Builder
	for _, a := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	return b.String()
}
