package hostnet

import (
	"errors"
	"fmt"

	"github.com/perchhq/perch/internal/runtime"
)

const tapPrefix = "pt"

// TapName is machine id's tap device: a microVM's network card on the
// host, a port of the bridge as a sandbox's veth is.
func TapName(id string) string {
	if len(id) > vethIDChars {
		id = id[:vethIDChars]
	}
	return tapPrefix + id
}

// AttachTap gives machine id a persistent tap device, TapName(id), as a
// port of n.Bridge, for qemu to open. The machine's address is set inside
// the guest; the host only needs the port. It is idempotent, and the tap
// outlives the VM so that a restarted VM finds it.
func AttachTap(id string, n runtime.Net) (tap string, err error) {
	if err := CheckID(id); err != nil {
		return "", err
	}
	if err := checkLink(n.Bridge); err != nil {
		return "", err
	}
	tap = TapName(id)
	l, err := getLink("", tap)
	if err != nil {
		return "", fmt.Errorf("hostnet: attach tap %s: %w", id, err)
	}
	if l != nil && !ownTap(l, id) {
		return "", fmt.Errorf("hostnet: attach tap %s: %s exists and belongs to %q: machine ids must differ in their first %d characters", id, tap, l.Alias, vethIDChars)
	}
	if l == nil {
		if _, err := ip("tuntap", "add", "dev", tap, "mode", "tap"); err != nil {
			return "", fmt.Errorf("hostnet: attach tap %s: %w", id, err)
		}
		defer func() {
			if err != nil {
				ip("link", "del", tap)
			}
		}()
		if _, err := ip("link", "set", tap, "alias", id); err != nil {
			return "", fmt.Errorf("hostnet: attach tap %s: %w", id, err)
		}
		// As for a veth: the address may have had another MAC until now.
		if n.Addr.IsValid() {
			ip("neigh", "flush", "to", n.Addr.Addr().String(), "dev", n.Bridge)
		}
	}
	if _, err := ip("link", "set", tap, "master", n.Bridge, "group", fmt.Sprint(PortGroup(n.Bridge)), "up"); err != nil {
		return "", fmt.Errorf("hostnet: attach tap %s: %w", id, err)
	}
	return tap, nil
}

// detachTap removes machine id's tap if it has one.
func detachTap(id string) error {
	tap := TapName(id)
	l, err := getLink("", tap)
	if err != nil || l == nil || !ownTap(l, id) {
		return err
	}
	if _, err := ip("link", "del", tap); err != nil && !errors.Is(err, errNotExist) {
		return err
	}
	return nil
}

// ownTap reports whether l is machine id's tap; an empty alias is an
// attach interrupted before naming it.
func ownTap(l *link, id string) bool {
	return l.LinkInfo.Kind == "tun" && (l.Alias == id || l.Alias == "")
}
