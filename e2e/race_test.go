//go:build race

package e2e

// raceEnabled builds the relay with -race when the tests run with it, so the
// race detector watches the relay while real clients use it.
const raceEnabled = true
