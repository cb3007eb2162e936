package hostnet

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
)

// List returns the ids of machines with a Perch network namespace, veth or
// tap on this host, whichever agent made them.
func List() ([]string, error) {
	var ids []string
	entries, err := os.ReadDir(NetnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("hostnet: list: %w", err)
	}
	for _, e := range entries {
		id, ok := strings.CutPrefix(e.Name(), netnsPrefix)
		if ok && CheckID(id) == nil {
			ids = append(ids, id)
		}
	}
	veths, err := listLinks("veth")
	if err != nil {
		return nil, fmt.Errorf("hostnet: list: %w", err)
	}
	for _, l := range veths {
		if strings.HasPrefix(l.Name, vethPrefix) && l.Alias != "" && VethName(l.Alias) == l.Name {
			ids = append(ids, l.Alias)
		}
	}
	taps, err := listLinks("tun")
	if err != nil {
		return nil, fmt.Errorf("hostnet: list: %w", err)
	}
	for _, l := range taps {
		if strings.HasPrefix(l.Name, tapPrefix) && l.Alias != "" && TapName(l.Alias) == l.Name {
			ids = append(ids, l.Alias)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// Cleanup detaches every machine whose id starts with idPrefix ("" for all
// of Perch's), for an agent or a dev world that was not shut down cleanly.
func Cleanup(idPrefix string) error {
	ids, err := List()
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if strings.HasPrefix(id, idPrefix) {
			errs = append(errs, Detach(id))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("hostnet: cleanup: %w", err)
	}
	return nil
}
