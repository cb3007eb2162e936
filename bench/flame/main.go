// Command flame draws a CPU profile as an SVG flame graph: each box a
// function, its width the share of samples with it on the stack, its
// callers below it. Perch's own functions are blue, the runtime grey,
// the rest warm. It reads the stacks with `go tool pprof -traces`, so it
// needs nothing but the Go toolchain.
//
//	go run ./bench/flame -o bench/edge/flame.svg -title "..." profile.pprof
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"hash/fnv"
	"html"
	"log"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"
)

// node is a function on a stack, under its caller.
type node struct {
	name     string
	value    time.Duration
	children map[string]*node
}

func (n *node) child(name string) *node {
	c := n.children[name]
	if c == nil {
		c = &node{name: name, children: map[string]*node{}}
		n.children[name] = c
	}
	return c
}

const (
	width   = 1200.0
	rowH    = 16.0
	minW    = 1.0 // boxes narrower than this (pixels) are left out
	charW   = 6.6 // of the 11 px font, roughly
	padding = 10.0
)

func main() {
	out := flag.String("o", "flame.svg", "the SVG file to write")
	title := flag.String("title", "CPU flame graph", "the graph's title")
	flag.Parse()
	if flag.NArg() != 1 {
		log.Fatal("usage: flame [-o out.svg] [-title text] cpu.pprof")
	}
	traces, err := exec.Command("go", "tool", "pprof", "-traces", flag.Arg(0)).Output()
	if err != nil {
		log.Fatalf("go tool pprof -traces %s: %v", flag.Arg(0), err)
	}
	root := parse(traces)
	if root.value == 0 {
		log.Fatalf("%s: no samples", flag.Arg(0))
	}
	depth := maxDepth(root, 0)
	height := float64(depth+1)*rowH + 3*padding + rowH
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="monospace" font-size="11">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#fdfdf6"/><text x="%.0f" y="%.0f" font-size="14" text-anchor="middle">%s (%s of samples)</text>`+"\n",
		width/2, padding+rowH/2+4, html.EscapeString(*title), root.value)
	draw(&b, root, padding, width-2*padding, height-padding-rowH, root.value)
	b.WriteString("</svg>\n")
	if err := os.WriteFile(*out, b.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
}

// parse reads pprof's -traces output: blocks of a value and a stack,
// leaf first, between lines of dashes.
func parse(traces []byte) *node {
	root := &node{name: "all", children: map[string]*node{}}
	var stack []string
	var value time.Duration
	flush := func() {
		if len(stack) > 0 && value > 0 {
			root.value += value
			n := root
			for i := len(stack) - 1; i >= 0; i-- {
				n = n.child(stack[i])
				n.value += value
			}
		}
		stack, value = stack[:0], 0
	}
	sc := bufio.NewScanner(bytes.NewReader(traces))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	in := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-----------+") {
			flush()
			in = true
			continue
		}
		if !in || strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		if len(stack) == 0 && len(f) >= 2 {
			if d, err := time.ParseDuration(f[0]); err == nil {
				value = d
				f = f[1:]
			}
		}
		stack = append(stack, strings.Join(f, " "))
	}
	flush()
	return root
}

func maxDepth(n *node, d int) int {
	m := d
	for _, c := range n.children {
		m = max(m, maxDepth(c, d+1))
	}
	return m
}

// draw draws n at x, y (its bottom row) w wide, and its callees above it,
// the largest first.
func draw(b *bytes.Buffer, n *node, x, w, y float64, total time.Duration) {
	if w < minW {
		return
	}
	fmt.Fprintf(b, `<g><title>%s: %s, %.1f%%</title><rect x="%.2f" y="%.1f" width="%.2f" height="%.0f" fill="%s" stroke="#fdfdf6" stroke-width="0.5"/>`,
		html.EscapeString(n.name), n.value, 100*float64(n.value)/float64(total), x, y, w, rowH-1, color(n.name))
	if label := fit(n.name, w); label != "" {
		fmt.Fprintf(b, `<text x="%.2f" y="%.1f">%s</text>`, x+3, y+rowH-5, html.EscapeString(label))
	}
	b.WriteString("</g>\n")
	kids := make([]*node, 0, len(n.children))
	for _, c := range n.children {
		kids = append(kids, c)
	}
	sort.Slice(kids, func(i, j int) bool {
		if kids[i].value != kids[j].value {
			return kids[i].value > kids[j].value
		}
		return kids[i].name < kids[j].name
	})
	cx := x
	for _, c := range kids {
		cw := w * float64(c.value) / float64(n.value)
		draw(b, c, cx, cw, y-rowH, total)
		cx += cw
	}
}

// fit is the part of name (without its package path) that fits w.
func fit(name string, w float64) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	n := int((w - 6) / charW)
	switch {
	case n < 3:
		return ""
	case len(name) > n:
		return name[:n-2] + ".."
	}
	return name
}

// color: Perch's code blue, the Go runtime grey, the rest warm, each
// function its own shade.
func color(name string) string {
	h := fnv.New32a()
	h.Write([]byte(name))
	v := h.Sum32()
	switch {
	case strings.HasPrefix(name, "github.com/perchhq/"):
		return fmt.Sprintf("rgb(%d,%d,%d)", 90+v%40, 140+v%50, 220+v%30)
	case strings.HasPrefix(name, "runtime.") || strings.HasPrefix(name, "internal/runtime") || strings.HasPrefix(name, "internal/poll") || strings.HasPrefix(name, "syscall."):
		return fmt.Sprintf("rgb(%d,%d,%d)", 170+v%40, 170+v%40, 170+v%40)
	}
	return fmt.Sprintf("rgb(%d,%d,%d)", 220+v%35, 100+v%100, 40+v%40)
}
