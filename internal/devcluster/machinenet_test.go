package devcluster

import (
	"sync"
	"testing"
)

// TestClaimMachineNetApart: worlds started at the same moment, before any
// has made a bridge, claim different machine nets, and a later one none
// of theirs.
func TestClaimMachineNetApart(t *testing.T) {
	const n = 4
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		got      = map[string]int{}
		releases []func()
	)
	for range n {
		wg.Go(func() {
			p, release, err := claimMachineNet()
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			got[p.String()]++
			releases = append(releases, release)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(got) != n {
		t.Errorf("%d worlds claimed %d distinct machine nets: %v", n, len(got), got)
	}
	first, release, err := claimMachineNet()
	if err != nil {
		t.Fatal(err)
	}
	if got[first.String()] > 0 {
		t.Errorf("claimed %s, which another world holds", first)
	}
	release()
	for _, r := range releases {
		r()
	}
}
