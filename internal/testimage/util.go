package testimage

import (
	"bytes"
	"io"
	"iter"
	"slices"
	"sort"
)

type ioReadCloser = io.ReadCloser

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

func sortedKeys[V any](m map[string]V) iter.Seq2[string, V] {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return func(yield func(string, V) bool) {
		for _, k := range keys {
			if !yield(k, m[k]) {
				return
			}
		}
	}
}

func sortedDirs(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for d := range m {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}
