package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

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
	// limit paces the lines shipped (logRate a second, logBurst at once);
	// dropped counts those over it since the last "lines dropped" marker.
	limit   *rate.Limiter
	dropped map[string]int
	marked  time.Time // when the last "lines dropped" marker went
	behind  bool      // a file has more than one read's worth left

	stopc chan struct{}
	done  chan struct{}
}

func (a *Agent) startShipper(spec store.MachineSpec) *shipper {
	s := a.newShipper(spec, a.logFiles(spec.ID))
	go s.loop()
	return s
}

// newShipper is a shipper of files, at the offsets kept on disk, not yet
// tailing.
func (a *Agent) newShipper(spec store.MachineSpec, files []perchrt.LogFile) *shipper {
	s := &shipper{
		a: a, spec: spec, files: files,
		offPath: filepath.Join(a.cfg.StateDir, "machines", spec.ID+".offsets"),
		offsets: map[string]int64{}, partial: map[string][]byte{},
		limit: rate.NewLimiter(logRate, logBurst), dropped: map[string]int{},
		stopc: make(chan struct{}), done: make(chan struct{}),
	}
	if b, err := os.ReadFile(s.offPath); err == nil {
		_ = json.Unmarshal(b, &s.offsets)
	}
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

// A machine ships at most logRate lines a second (logBurst at once); what
// it prints beyond that is dropped and counted, and a line saying how many
// takes their place once it is under the rate again, so one machine's
// flood costs neither the host, nor the control plane, nor other apps'
// logs. The lines' files on the host keep everything.
var (
	logRate  rate.Limit = 1000
	logBurst            = 2000
)

// logReadMax is the most of one file a flush reads, in chunks of
// logChunk; a file with more left is read again at once (behind), so a
// shipper that fell behind a flood catches up at the pace of counting
// newlines, and a line the machine prints once quiet again finds the
// limiter with tokens, not spent on a backlog.
const (
	logReadMax = 64 << 20
	logChunk   = 1 << 20
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
		s.mu.Lock()
		behind, dropped := s.behind, len(s.dropped) > 0
		s.mu.Unlock()
		if behind {
			t.Reset(0) // catch up without waiting for the next write
		} else if dropped {
			t.Reset(100 * time.Millisecond) // the marker of a flood that stopped
		} else if watching {
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
	s.behind = false
	for _, f := range s.files {
		if s.readFile(f) {
			changed = true
		}
	}
	s.flushDropped()
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
	bp := logChunks.Get().(*[]byte)
	defer logChunks.Put(bp)
	chunk := *bp
	read := int64(0)
	for read < logReadMax {
		n, err := io.ReadFull(fh, chunk)
		if n > 0 {
			read += int64(n)
			s.offsets[f.Path] = off + read
			s.lines(f, chunk[:n])
		}
		if err != nil {
			return read > 0 // the end of what is written so far
		}
	}
	s.behind = true
	return true
}

// logChunks holds the buffers files are read through.
var logChunks = sync.Pool{New: func() any { b := make([]byte, logChunk); return &b }}

// lines ships the complete lines of data, after what an earlier read of
// the file left without a newline. A machine over its rate costs a
// search for newlines per dropped line, no copy: once the limiter says
// no, the rest of the chunk is counted in bulk.
func (s *shipper) lines(f perchrt.LogFile, data []byte) {
	if p := s.partial[f.Path]; len(p) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			s.partial[f.Path] = s.longLine(f, append(p, data...))
			return
		}
		s.publish(f.Stream, string(append(p, data[:i]...)))
		data = data[i+1:]
		s.partial[f.Path] = nil
	}
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		if !s.limit.Allow() {
			// Over the rate: every complete line left is dropped; only
			// the last few are kept for lastLines.
			end := bytes.LastIndexByte(data, '\n')
			rest := data[:end]
			s.dropped[f.Stream] += bytes.Count(rest, []byte{'\n'}) + 1
			s.keepLast(rest)
			data = data[end+1:]
			break
		}
		s.publishAllowed(f.Stream, string(data[:i]))
		data = data[i+1:]
	}
	s.partial[f.Path] = s.longLine(f, append([]byte(nil), data...))
}

// longLine ships a line that has no newline yet and is already over
// 16 KiB as it is, and returns what is left to wait for its newline.
func (s *shipper) longLine(f perchrt.LogFile, buf []byte) []byte {
	if len(buf) > 16<<10 {
		s.publish(f.Stream, string(buf))
		return nil
	}
	return buf
}

// keepLast remembers the last lines of data (lines dropped in bulk) for
// lastLines, as publish would have.
func (s *shipper) keepLast(data []byte) {
	from := len(data)
	for n := 0; n < lastLogLines && from > 0; n++ {
		from = bytes.LastIndexByte(data[:from-1], '\n') + 1 // 0 when none
	}
	for line := range bytes.SplitSeq(data[from:], []byte{'\n'}) {
		s.remember(string(line))
	}
}

func cutLine(msg string) string {
	if len(msg) > store.LogLineMax {
		return msg[:store.LogLineMax] + " [perch: line cut at 16 KiB]"
	}
	return msg
}

// publish ships one line, or counts it dropped when the machine is over
// its rate; once a second at most, a line shipped after drops is
// preceded by a marker saying how many.
func (s *shipper) publish(stream, msg string) {
	if !s.limit.Allow() {
		s.remember(msg)
		s.dropped[stream]++
		return
	}
	s.publishAllowed(stream, msg)
}

// publishAllowed ships a line the limiter has allowed.
func (s *shipper) publishAllowed(stream, msg string) {
	msg = s.remember(msg)
	if s.dropped[stream] > 0 && time.Since(s.marked) >= time.Second {
		s.markDropped(stream)
	}
	s.send(stream, msg)
}

// remember keeps msg, cut to a log line's size, among the last lines.
func (s *shipper) remember(msg string) string {
	msg = cutLine(msg)
	s.last = append(s.last, msg)
	if len(s.last) > lastLogLines {
		s.last = s.last[len(s.last)-lastLogLines:]
	}
	return msg
}

// markDropped ships the line saying how many of stream's lines were
// dropped since the last one said so (at most one a second).
func (s *shipper) markDropped(stream string) {
	n := s.dropped[stream]
	delete(s.dropped, stream)
	s.marked = time.Now()
	s.send(stream, fmt.Sprintf("[perch] %d lines dropped: the machine printed more than %d lines a second", n, int(logRate)))
}

// flushDropped ships the markers of drops no later line has reported yet
// (a flood that stopped), once the rate allows.
func (s *shipper) flushDropped() {
	if time.Since(s.marked) < time.Second {
		return
	}
	for stream := range s.dropped {
		if !s.limit.Allow() {
			return
		}
		s.markDropped(stream)
	}
}

func (s *shipper) send(stream, msg string) {
	l := api.LogLine{
		Timestamp: time.Now().UTC(), App: s.spec.App, Region: s.spec.Region,
		MachineID: s.spec.ID, Stream: stream, Message: msg,
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
