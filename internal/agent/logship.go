package agent

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/api"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
	"github.com/perchhq/perch/internal/store"
)

const lastLogLines = 10

// shipper tails a machine's output files and publishes each line to the
// log stream, woken by inotify: an idle machine costs nothing. Offsets are kept on disk so an agent restart neither loses nor
// repeats lines; a file that shrank (the machine was recreated) is read
// from its start again.
type shipper struct {
	a       *Agent
	spec    store.MachineSpec
	files   []perchrt.LogFile
	offPath string

	mu      sync.Mutex
	offsets map[string]int64
	partial map[string][]byte
	last    []string

	stopc chan struct{}
	done  chan struct{}
}

func (a *Agent) startShipper(spec store.MachineSpec) *shipper {
	s := &shipper{
		a: a, spec: spec, files: a.logFiles(spec.ID),
		offPath: filepath.Join(a.cfg.StateDir, "machines", spec.ID+".offsets"),
		offsets: map[string]int64{}, partial: map[string][]byte{},
		stopc: make(chan struct{}), done: make(chan struct{}),
	}
	if b, err := os.ReadFile(s.offPath); err == nil {
		_ = json.Unmarshal(b, &s.offsets)
	}
	go s.loop()
	return s
}

// Shipping pace. A machine's output files are read when inotify says its
// directory changed, at most once per logBatch (a chatty app's lines go in
// batches, not one wake-up each), and every logRecheck regardless: a
// safety net for an event missed, and the pace while the directory does
// not exist yet (the machine is still being made).
var (
	logBatch   = 25 * time.Millisecond
	logRecheck = 5 * time.Second
	logNoWatch = 250 * time.Millisecond
)

// logWatchMask is what a write to an output file raises in its directory.
const logWatchMask = unix.IN_MODIFY | unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_CLOSE_WRITE

func (s *shipper) loop() {
	defer close(s.done)
	var changed <-chan struct{}
	var unwatch []func()
	defer func() {
		for _, u := range unwatch {
			u()
		}
	}()
	watch := func() bool {
		merged := make(chan struct{}, 1)
		dirs := map[string]bool{}
		for _, f := range s.files {
			dirs[filepath.Dir(f.Path)] = true
		}
		var stops []func()
		for dir := range dirs {
			ch, stop, err := machinedir.WatchDir(dir, logWatchMask)
			if err != nil {
				continue // another driver's directory, or not made yet
			}
			stops = append(stops, stop)
			go func() {
				for range ch {
					select {
					case merged <- struct{}{}:
					default:
					}
				}
			}()
		}
		if len(stops) == 0 {
			return false
		}
		unwatch, changed = stops, merged
		return true
	}
	watching := watch()
	t := time.NewTimer(0)
	defer t.Stop()
	last := time.Time{}
	for {
		select {
		case <-s.stopc:
			s.flush()
			return
		case <-changed:
			if wait := logBatch - time.Since(last); wait > 0 {
				select {
				case <-s.stopc:
					s.flush()
					return
				case <-time.After(wait):
				}
			}
		case <-t.C:
			if !watching {
				watching = watch()
			}
		}
		s.flush()
		last = time.Now()
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		if watching {
			t.Reset(logRecheck)
		} else {
			t.Reset(logNoWatch)
		}
	}
}

// stop ships what is left and stops tailing.
func (s *shipper) stop() {
	select {
	case <-s.stopc:
	default:
		close(s.stopc)
	}
	<-s.done
}

// lastLines returns the most recent lines, after shipping what is pending.
func (s *shipper) lastLines() []string {
	s.flush()
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.last...)
}

func (s *shipper) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := false
	for _, f := range s.files {
		if s.readFile(f) {
			changed = true
		}
	}
	if changed {
		if b, err := json.Marshal(s.offsets); err == nil {
			_ = os.MkdirAll(filepath.Dir(s.offPath), 0o700)
			_ = os.WriteFile(s.offPath, b, 0o600)
		}
	}
}

func (s *shipper) readFile(f perchrt.LogFile) bool {
	fh, err := os.Open(f.Path)
	if err != nil {
		return false
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return false
	}
	off := s.offsets[f.Path]
	if fi.Size() < off {
		off = 0 // recreated
		s.partial[f.Path] = nil
	}
	if fi.Size() == off {
		return false
	}
	if _, err := fh.Seek(off, io.SeekStart); err != nil {
		return false
	}
	data, err := io.ReadAll(io.LimitReader(fh, 4<<20))
	if err != nil {
		return false
	}
	s.offsets[f.Path] = off + int64(len(data))
	buf := append(s.partial[f.Path], data...)
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		s.publish(f.Stream, string(buf[:i]))
		buf = buf[i+1:]
	}
	if len(buf) > 16<<10 { // a very long line without newline: ship it as is
		s.publish(f.Stream, string(buf))
		buf = nil
	}
	s.partial[f.Path] = append([]byte(nil), buf...)
	return true
}

func (s *shipper) publish(stream, msg string) {
	l := api.LogLine{
		Timestamp: time.Now().UTC(), App: s.spec.App, Region: s.spec.Region,
		MachineID: s.spec.ID, Stream: stream, Message: msg,
	}
	s.last = append(s.last, msg)
	if len(s.last) > lastLogLines {
		s.last = s.last[len(s.last)-lastLogLines:]
	}
	b, err := json.Marshal(l)
	if err != nil {
		return
	}
	if err := s.a.st.Conn().Publish(store.LogSubject(l.App, l.Region, l.MachineID), b); err != nil {
		s.a.log.Debug("publish log line", "machine", l.MachineID, "err", err)
	}
}

func removeOffsets(stateDir, id string) {
	_ = os.Remove(filepath.Join(stateDir, "machines", id+".offsets"))
}
