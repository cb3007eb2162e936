//go:build race

package store

// raceDetector says the tests run under the race detector.
const raceDetector = true
