package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// Bad BGP flags leave BGP off (or the one peer out) with a logged reason;
// the agent still starts.
func TestBGPFlags(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	for _, c := range []struct {
		asn   string
		peers []string
		want  int // peers kept; -1: BGP off
		logs  string
	}{
		{"", nil, -1, ""},
		{"64512", []string{"203.0.113.1,64600", "203.0.113.5,64601,pw"}, 2, ""},
		{"0", []string{"203.0.113.1,64600"}, -1, "AS number 0 is outside"},
		{"23456", []string{"203.0.113.1,64600"}, -1, "AS_TRANS"},
		{"sixty", []string{"203.0.113.1,64600"}, -1, "is not a number"},
		{"64512", []string{"203.0.113.1", "203.0.113.5,64601"}, 1, "write ADDR,ASN[,password]"},
		{"64512", []string{"nope,64600"}, -1, "without a usable --bgp-peer"},
		{"", []string{"203.0.113.1,64600"}, -1, "--bgp-peer without --bgp-asn"},
	} {
		buf.Reset()
		asn, peers := bgpFlags(log, c.asn, c.peers)
		got := len(peers)
		if asn == 0 {
			got = -1
		}
		if got != c.want || !strings.Contains(buf.String(), c.logs) {
			t.Errorf("bgpFlags(%q, %q) = %d, %v; logged %q, want %d peers and a log with %q", c.asn, c.peers, asn, peers, buf.String(), c.want, c.logs)
		}
	}
}
