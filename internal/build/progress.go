package build

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/moby/buildkit/client"
	digest "github.com/opencontainers/go-digest"
)

// keepLines is how many output lines of each step are kept for the error
// of a failed step.
const keepLines = 10

// printer writes a concise build log: a line when a step starts, is found
// in the cache (CACHED) or ends (DONE with its time), the steps' output
// lines indented under "|", and keeps each step's last lines.
type printer struct {
	w       io.Writer
	steps   map[digest.Digest]*step
	errStep *step
}

type step struct {
	name              string
	started, finished bool
	partial           []byte   // output after the last newline
	last              []string // last keepLines lines
}

func newPrinter(w io.Writer) *printer {
	if w == nil {
		w = io.Discard
	}
	return &printer{w: w, steps: map[digest.Digest]*step{}}
}

func (p *printer) step(d digest.Digest) *step {
	s := p.steps[d]
	if s == nil {
		s = &step{}
		p.steps[d] = s
	}
	return s
}

func (p *printer) update(st *client.SolveStatus) {
	for _, v := range st.Vertexes {
		s := p.step(v.Digest)
		s.name = v.Name
		switch {
		case v.Cached && !s.finished:
			s.finished = true
			fmt.Fprintf(p.w, "=> CACHED %s\n", v.Name)
		case v.Started != nil && !s.started && !s.finished && v.Completed == nil:
			s.started = true
			fmt.Fprintf(p.w, "=> %s\n", v.Name)
		}
		if v.Completed != nil && !s.finished {
			s.finished = true
			if v.Error != "" {
				p.flush(s)
				if p.errStep == nil && !strings.Contains(v.Error, "context canceled") {
					p.errStep = s
				}
				fmt.Fprintf(p.w, "=> ERROR %s: %s\n", v.Name, v.Error)
				continue
			}
			took := time.Duration(0)
			if v.Started != nil {
				took = v.Completed.Sub(*v.Started)
			}
			fmt.Fprintf(p.w, "=> DONE %s %.1fs\n", v.Name, took.Seconds())
		}
	}
	for _, l := range st.Logs {
		s := p.step(l.Vertex)
		data := append(s.partial, l.Data...)
		for {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				break
			}
			p.line(s, string(bytes.TrimRight(data[:i], "\r")))
			data = data[i+1:]
		}
		s.partial = append([]byte(nil), data...)
	}
}

func (p *printer) flush(s *step) {
	if len(s.partial) > 0 {
		p.line(s, string(s.partial))
		s.partial = nil
	}
}

func (p *printer) line(s *step, l string) {
	fmt.Fprintf(p.w, "   | %s\n", l)
	s.last = append(s.last, l)
	if len(s.last) > keepLines {
		s.last = s.last[len(s.last)-keepLines:]
	}
}

// failed returns the first step that failed, and its last output lines.
func (p *printer) failed() (string, []string) {
	if p.errStep == nil {
		return "", nil
	}
	return p.errStep.name, p.errStep.last
}
