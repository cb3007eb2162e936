package agent

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/api"
)

// DefaultImageCacheGB is --image-cache-max's default.
const DefaultImageCacheGB = 10

// Image garbage collection: after a machine is destroyed or made, and
// every imageGCEvery, images no machine of this host uses (running,
// stopped or failed: any with a local record) are removed, least recently
// used first, with the layers no other image shares, until the store is
// within cfg.ImageCacheMax. A collection never runs while a machine is
// being made, whose image is pulled but not yet recorded: it waits
// imageGCRetry and tries again.
var (
	staticsKeep  = time.Hour
	imageGCEvery = 5 * time.Minute
	imageGCRetry = 2 * time.Second
)

func (a *Agent) kickImageGC() {
	select {
	case a.gcKick <- struct{}{}:
	default:
	}
}

func (a *Agent) runImageGC(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.gcKick:
		case <-t.C:
		}
		next := imageGCEvery
		if !a.collectImages() {
			next = imageGCRetry
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(next)
	}
}

// collectImages runs one collection and records the disk use the
// heartbeat reports; false if machines were being made.
func (a *Agent) collectImages() bool {
	if !a.creating.TryLock() {
		return false
	}
	defer a.creating.Unlock()
	if a.cfg.ImageCacheMax > 0 {
		used := a.imagesInUse()
		if _, err := a.images.GC(a.cfg.ImageCacheMax, func(d string) bool { return used[d] }); err != nil {
			a.log.Warn("image gc", "err", err)
		}
	}
	// Statics copies: kept for the images machines here run and those the
	// edge serves statics from; others an hour after their last copy.
	keep := a.imagesInUse()
	if a.edge != nil {
		for _, ref := range a.edge.Snapshot().StaticImages() {
			if _, dg, ok := strings.Cut(ref, "@"); ok {
				keep[dg] = true
			}
		}
	}
	a.statics.collect(keep, staticsKeep)
	d := &api.HostDisk{ImageMaxBytes: a.cfg.ImageCacheMax}
	if u, err := a.images.Usage(); err == nil {
		d.ImageBytes, d.Images, d.Layers = u.Bytes, u.Images, u.Layers
	}
	var fs unix.Statfs_t
	if unix.Statfs(a.cfg.StateDir, &fs) == nil {
		d.FreeBytes = int64(fs.Bavail) * fs.Bsize
		d.TotalBytes = int64(fs.Blocks) * fs.Bsize
	}
	a.disk.Store(d)
	return true
}

// imagesInUse is the manifest digests of the images of every machine this
// host has a record of.
func (a *Agent) imagesInUse() map[string]bool {
	used := map[string]bool{}
	dir := filepath.Join(a.cfg.StateDir, "machines")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var r localRecord
		if json.Unmarshal(b, &r) != nil {
			continue
		}
		if _, dg, ok := strings.Cut(r.ImageRef, "@"); ok {
			used[dg] = true
		}
	}
	return used
}
