package config

import (
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// path names a value in the document: key parts, with "\x00N" parts for the
// N-th element of an array (which no TOML key can collide with).
type path []string

func (p path) key(k string) path { return append(p[:len(p):len(p)], k) }

func (p path) index(i int) path { return append(p[:len(p):len(p)], "\x00"+strconv.Itoa(i)) }

func isIndex(part string) bool { return strings.HasPrefix(part, "\x00") }

func (p path) String() string { return strings.Join(p, "\x1f") }

// section names the table p is, the way the file writes it:
// [http_service], [[services]], [[services.ports]], [services.concurrency].
func (p path) section() string {
	var keys []string
	for _, part := range p {
		if !isIndex(part) {
			keys = append(keys, part)
		}
	}
	if len(keys) == 0 {
		return ""
	}
	if isIndex(p[len(p)-1]) {
		return "[[" + strings.Join(keys, ".") + "]]"
	}
	return "[" + strings.Join(keys, ".") + "]"
}

// lineIndex maps every key, table and array element of a document to the
// line it starts on. go-toml's decoder reports positions only for syntax
// errors, so this is what lets a bad value be reported at its line.
type lineIndex struct {
	lines  map[string]int
	starts []int // offset of the start of each line
}

// line is the line of p, or of its nearest ancestor the index knows.
func (x *lineIndex) line(p path) int {
	for ; len(p) > 0; p = p[:len(p)-1] {
		if n, ok := x.lines[p.String()]; ok {
			return n
		}
	}
	return 1
}

func (x *lineIndex) set(p path, line int) { x.lines[p.String()] = line }

func (x *lineIndex) setIfAbsent(p path, line int) {
	if _, ok := x.lines[p.String()]; !ok {
		x.set(p, line)
	}
}

// setPrefixes gives tables that a header defines implicitly ([a] for
// [a.b]) the header's line, unless they appeared earlier.
func (x *lineIndex) setPrefixes(p path, line int) {
	for i := 1; i < len(p); i++ {
		x.setIfAbsent(p[:i], line)
	}
}

func (x *lineIndex) lineAt(offset uint32) int {
	return sort.Search(len(x.starts), func(i int) bool { return x.starts[i] > int(offset) })
}

func indexLines(data []byte) (*lineIndex, error) {
	x := &lineIndex{lines: make(map[string]int), starts: []int{0}}
	for i, b := range data {
		if b == '\n' {
			x.starts = append(x.starts, i+1)
		}
	}
	var p unstable.Parser
	p.Reset(data)
	var cur path
	arrays := make(map[string]int) // array-of-tables path -> elements so far
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			parts, line := x.keyParts(e.Key())
			if e.Kind == unstable.Table {
				cur = resolve(parts, arrays)
				x.setPrefixes(cur, line)
				x.set(cur, line)
				continue
			}
			base := resolve(parts[:len(parts)-1], arrays).key(parts[len(parts)-1])
			x.setPrefixes(base, line)
			n := arrays[base.String()]
			arrays[base.String()] = n + 1
			x.setIfAbsent(base, line)
			cur = base.index(n)
			x.set(cur, line)
		case unstable.KeyValue:
			x.keyValue(cur, e)
		}
	}
	return x, p.Error()
}

// resolve turns a table header's keys into a path: a key naming an array of
// tables means its last element, as in TOML.
func resolve(parts []string, arrays map[string]int) path {
	var p path
	for _, k := range parts {
		p = p.key(k)
		if n, ok := arrays[p.String()]; ok {
			p = p.index(n - 1)
		}
	}
	return p
}

func (x *lineIndex) keyParts(it unstable.Iterator) ([]string, int) {
	var parts []string
	line := 0
	for it.Next() {
		n := it.Node()
		if line == 0 {
			line = x.lineAt(n.Raw.Offset)
		}
		parts = append(parts, string(n.Data))
	}
	return parts, line
}

func (x *lineIndex) keyValue(prefix path, kv *unstable.Node) {
	parts, line := x.keyParts(kv.Key())
	p := prefix
	for _, k := range parts {
		p = p.key(k)
		// A dotted key (http_service.internal_port = 80) also defines its
		// tables, at the same line.
		x.setIfAbsent(p, line)
	}
	x.set(p, line)
	x.value(p, kv.Value(), line)
}

func (x *lineIndex) value(p path, n *unstable.Node, line int) {
	switch n.Kind {
	case unstable.InlineTable:
		it := n.Children()
		for it.Next() {
			x.keyValue(p, it.Node())
		}
	case unstable.Array:
		it := n.Children()
		for i := 0; it.Next(); i++ {
			el := it.Node()
			elLine := x.nodeLine(el, line)
			x.set(p.index(i), elLine)
			x.value(p.index(i), el, elLine)
		}
	}
}

// nodeLine is where a value starts; arrays carry no position of their own,
// so they take their first element's, else the key's.
func (x *lineIndex) nodeLine(n *unstable.Node, fallback int) int {
	switch n.Kind {
	case unstable.Array:
		if c := n.Child(); c != nil {
			return x.nodeLine(c, fallback)
		}
		return fallback
	case unstable.Comment, unstable.Invalid:
		return fallback
	}
	return x.lineAt(n.Raw.Offset)
}
