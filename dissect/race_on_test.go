//go:build race

package dissect

// raceEnabled: the race detector's instrumentation allocates, which
// allocation counts allow for.
const raceEnabled = true
