// Package hostnet gives machines their network on a host: a bridge per host
// with the gateway address, and per machine a named network namespace joined
// to the bridge by a veth pair, or for a microVM a tap device on the bridge.
// Runtime drivers and the agent import it. It drives iproute2 (`ip`), and it
// only ever deletes namespaces and links whose names it made (NetnsName,
// VethName, TapName), so it cannot harm the host's own network.
package hostnet

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// NetnsDir is where iproute2 keeps named network namespaces.
const NetnsDir = "/run/netns"

const (
	netnsPrefix = "perch-"
	vethPrefix  = "pv"
	vethIDChars = 12 // IFNAMSIZ is 16 with the NUL: "pv" + 12 fits with room
	peerName    = "eth0"
)

// validID matches machine ids hostnet accepts: they become parts of
// interface names, namespace names and paths.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// validLink matches link names a caller may give (bridges).
var validLink = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)

// NetnsName is the name of machine id's network namespace.
func NetnsName(id string) string { return netnsPrefix + id }

// NetnsPath is the path of machine id's network namespace, as an OCI spec's
// network namespace path.
func NetnsPath(id string) string { return filepath.Join(NetnsDir, NetnsName(id)) }

// VethName is the host side of machine id's veth pair.
func VethName(id string) string {
	if len(id) > vethIDChars {
		id = id[:vethIDChars]
	}
	return vethPrefix + id
}

// CheckID reports whether id can name a machine's network.
func CheckID(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("hostnet: machine id %q must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit", id)
	}
	return nil
}

func checkLink(name string) error {
	if !validLink.MatchString(name) {
		return fmt.Errorf("hostnet: link name %q must be 1-15 letters, digits, '_', '.' or '-'", name)
	}
	return nil
}

// errNotExist is what ip's "does not exist" failures are wrapped in.
var errNotExist = errors.New("does not exist")

// ip runs iproute2 and returns its standard output.
func ip(args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "does not exist") || strings.Contains(msg, "Cannot find device") ||
			strings.Contains(msg, "No such file") {
			return nil, fmt.Errorf("ip %s: %s: %w", strings.Join(args, " "), msg, errNotExist)
		}
		return nil, fmt.Errorf("ip %s: %s: %w", strings.Join(args, " "), msg, err)
	}
	return stdout.Bytes(), nil
}
