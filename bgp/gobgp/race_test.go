//go:build race

package gobgp

// raceDetector tells tests that the race detector is on: GoBGP itself
// races with path readers while a session restarts (see Speaker.Paths).
const raceDetector = true
