// Package inspect is the contract between the proxy's per-connection pump
// and whatever judges a connection's bytes (the TLS state machine with the
// rules, or the pass-through inspector). The replay command drives the same
// contract from a capture, so the live proxy and the replay see the same
// verdicts.
//
// The pump owns the bytes. For each direction it keeps the bytes it has
// read but not yet forwarded ("pending"), calls Feed with all of them after
// every read, forwards the head that the inspector cleared and keeps the
// rest. An inspector therefore never copies a record that it holds: the
// bytes stay in the pump's buffer until they are cleared or the connection
// dies. Slices passed to Feed are valid only during the call.
package inspect

import (
	"net/netip"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
)

// Verdict is what happens to a connection.
type Verdict uint8

const (
	// Pass lets the connection go on.
	Pass Verdict = iota
	// Drop stops forwarding and closes both sides (FIN).
	Drop
	// Reset closes both sides with RST (SO_LINGER 0).
	Reset
	// Bypass stops inspecting: the rest of the connection is spliced in
	// the kernel.
	Bypass
)

var verdictNames = [...]string{Pass: "pass", Drop: "drop", Reset: "reset", Bypass: "bypass"}

// String returns the lower-case name used in logs, alerts and metrics.
func (v Verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return "invalid"
}

// Kills reports whether the verdict ends the connection.
func (v Verdict) Kills() bool { return v == Drop || v == Reset }

// Decision is a verdict with the reason and the rule that gave it.
type Decision struct {
	Verdict Verdict
	// Reason says why, for the connection's log line ("heartbleed",
	// "parse error: ...", "upstream refused", ...).
	Reason string
	// Rule names what decided: "heartbleed.lua:12" for a Lua rule,
	// "builtin:fail" for the state machine's default. Empty for Pass.
	Rule string
}

// RulePanic is the Rule of the Decision an inspector gives kill when it
// recovered a panic on a goroutine of its own (a timer's), where no pump
// can recover it: Reason is "panic: " and the panic's value. The proxy
// counts it as a panic, logs it with the stack and resets the connection,
// as it does for a panic in Feed; so that the stack shows where it
// panicked, kill is called from the deferred function that recovered it.
const RulePanic = "proxy:panic"

// Flow is what is known of a connection when it is accepted.
type Flow struct {
	ID uint64
	// Src is the client's address (from the PROXY header when one was
	// accepted); Dst is the address the client connected to (the original
	// destination under TPROXY, the listener's address otherwise).
	Src, Dst netip.AddrPort
	Start    time.Time
}

// Result is an inspector's answer to Feed.
type Result struct {
	// Forward is how many bytes at the head of pending may be written to
	// the other side now. The pump removes them from pending.
	Forward int
	// Pass is how many further bytes of this direction, after the
	// Forward ones and not yet read, may be forwarded without being shown
	// to the inspector (the rest of an application-data record whose
	// header was judged). The pump may splice them in the kernel.
	Pass int64
	// HelloDone reports that the client's opening message is complete,
	// which lifts the handshake (slowloris) timeout.
	HelloDone bool
	// Decision ends the connection when its verdict kills it; Bypass makes
	// the pump forward all pending bytes and splice from then on.
	Decision Decision
}

// Info is what an inspector learnt of a connection, for its log line.
type Info struct {
	SNI, ALPN, Version, JA3, JA4 string
}

// Summary is the end of a connection, for the end_connection event.
type Summary struct {
	BytesUp, BytesDown int64
	Duration           time.Duration
	Decision           Decision
}

// Inspector judges one connection. Feed and EOF are called from the
// goroutine of each direction, so an implementation serialises them; it
// must not keep pending after the call returns.
type Inspector interface {
	// Feed is given every byte of dir read and not yet forwarded, oldest
	// first; the bytes it has seen before are at the head. now is the
	// stream time (wall clock live, packet time in replay).
	Feed(dir dissect.Direction, pending []byte, now time.Time) Result
	// EOF reports the end of dir's stream with pending bytes left in it.
	// The pump forwards Result.Forward of them and then half-closes.
	EOF(dir dissect.Direction, pending []byte, now time.Time) Result
	// Info returns what is known so far; it is safe to call at any time.
	Info() Info
	// Close ends the inspection (end_connection); no call follows it.
	Close(s Summary)
}

// Factory makes the inspector of each new connection.
type Factory interface {
	// New is called when a connection is accepted, before the upstream is
	// dialled (new_connection). kill ends the connection from outside a
	// Feed call (a timeout of the state machine); it is safe to call from
	// any goroutine and more than once.
	New(f *Flow, kill func(Decision)) (Inspector, Decision)
}

// PassThrough is the Factory of inspectors that judge nothing: every byte
// is cleared as soon as it is read.
type PassThrough struct{}

// New implements Factory.
func (PassThrough) New(*Flow, func(Decision)) (Inspector, Decision) {
	return passThrough{}, Decision{}
}

type passThrough struct{}

func (passThrough) Feed(_ dissect.Direction, p []byte, _ time.Time) Result {
	return Result{Forward: len(p), HelloDone: true}
}

func (passThrough) EOF(_ dissect.Direction, p []byte, _ time.Time) Result {
	return Result{Forward: len(p)}
}

func (passThrough) Info() Info    { return Info{} }
func (passThrough) Close(Summary) {}
