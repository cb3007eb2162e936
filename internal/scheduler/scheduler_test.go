package scheduler

import (
	"errors"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

func hosts() []api.Host {
	return []api.Host{
		{ID: "iad-1", Region: "iad", CPUs: 2, MemoryMB: 1024, Subnet: "172.30.1.0/24", Status: "up"},
		{ID: "iad-2", Region: "iad", CPUs: 2, MemoryMB: 2048, Subnet: "172.30.2.0/24", Status: "up"},
		{ID: "ams-1", Region: "ams", CPUs: 1, MemoryMB: 512, Subnet: "172.30.3.0/24", Status: "down"},
	}
}

func TestPlacePrefersMostFreeMemory(t *testing.T) {
	p, err := Place(Request{Region: "iad", Guest: api.Guest{MemoryMB: 256}}, hosts(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.HostID != "iad-2" || p.PrivateIP.String() != "172.30.2.2" {
		t.Errorf("got %s %s, want iad-2 172.30.2.2", p.HostID, p.PrivateIP)
	}
}

func TestPlaceSkipsUsedAddressesAndCountsMemory(t *testing.T) {
	ms := []store.MachineSpec{
		{ID: "a", HostID: "iad-2", PrivateIP: "172.30.2.2", Config: api.MachineConfig{Guest: api.Guest{MemoryMB: 1800}}},
		{ID: "b", HostID: "iad-1", PrivateIP: "172.30.1.2", Desired: store.DesireDestroyed, Config: api.MachineConfig{Guest: api.Guest{MemoryMB: 1024}}},
	}
	p, err := Place(Request{Region: "iad", Guest: api.Guest{MemoryMB: 512}}, hosts(), ms)
	if err != nil {
		t.Fatal(err)
	}
	// iad-2 has 248 MB free, iad-1 all of its 1024 (b is being destroyed).
	if p.HostID != "iad-1" {
		t.Errorf("got %s, want iad-1", p.HostID)
	}
	p, err = Place(Request{Region: "iad", Guest: api.Guest{MemoryMB: 128}}, hosts(), append(ms, store.MachineSpec{ID: "c", HostID: "iad-1", PrivateIP: "172.30.1.2", Config: api.MachineConfig{Guest: api.Guest{MemoryMB: 900}}}))
	if err != nil {
		t.Fatal(err)
	}
	if p.HostID != "iad-2" || p.PrivateIP.String() != "172.30.2.3" {
		t.Errorf("got %s %s, want iad-2 172.30.2.3", p.HostID, p.PrivateIP)
	}
}

func TestPlaceErrorsNameRegionAndWhatIsMissing(t *testing.T) {
	for _, tc := range []struct {
		req  Request
		want []string
	}{
		{Request{Region: "sin"}, []string{"no host in region sin", "iad"}},
		{Request{Region: "ams"}, []string{"region ams", "ams-1 is down"}},
		{Request{Region: "iad", Guest: api.Guest{MemoryMB: 4096}}, []string{"region iad", "4096 MB", "2048 MB memory free"}},
		{Request{Region: "iad", Guest: api.Guest{CPUs: 8}}, []string{"region iad", "asks for 8"}},
	} {
		_, err := Place(tc.req, hosts(), nil)
		if !errors.Is(err, ErrUnplaceable) {
			t.Fatalf("%+v: want ErrUnplaceable, got %v", tc.req, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: error %q lacks %q", tc.req, err, w)
			}
		}
	}
}

func TestFreeAddrExhausted(t *testing.T) {
	h := api.Host{ID: "x", Subnet: "10.9.9.0/30"} // .1 gateway, .2 only machine address, .3 broadcast
	ip, err := FreeAddr(h, nil, "")
	if err != nil || ip.String() != "10.9.9.2" {
		t.Fatalf("got %v %v", ip, err)
	}
	_, err = FreeAddr(h, []store.MachineSpec{{ID: "m", HostID: "x", PrivateIP: "10.9.9.2"}}, "")
	if !errors.Is(err, ErrUnplaceable) {
		t.Errorf("want exhausted, got %v", err)
	}
}
