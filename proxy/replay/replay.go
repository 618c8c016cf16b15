package replay

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// Defaults for Options, in packet time.
const (
	// DefaultReorderWindow is how long bytes that arrived after a hole
	// wait for the missing segment. A segment lost on the wire is
	// retransmitted after the sender's RTO, which starts at 1 s and
	// doubles (RFC 6298): 30 s covers four retransmissions. A segment the
	// capture missed never comes, and waiting only delays the gap.
	DefaultReorderWindow = 30 * time.Second
	// DefaultIdleTimeout ends a stream with no packet for that long:
	// Suricata's default for established TCP flows.
	DefaultIdleTimeout = 10 * time.Minute
)

// sweepInterval is how often, in packet time, holes older than the
// reorder window and idle streams are looked for. Each sweep visits every
// open stream, so it is not done per packet; 5 s keeps a hole's wait
// within a sixth of the default window.
const sweepInterval = 5 * time.Second

// Options configures a Replayer.
type Options struct {
	// Factory makes the inspector of every TCP stream. Required.
	Factory inspect.Factory
	// Output receives one connection line per stream, when the stream
	// closes. Nil discards them.
	Output *output.Writer
	// ReorderWindow: zero means DefaultReorderWindow.
	ReorderWindow time.Duration
	// IdleTimeout: zero means DefaultIdleTimeout, negative never ends an
	// idle stream before the end of its capture. It is at least the
	// reorder window.
	IdleTimeout time.Duration
	// Midstream inspects the streams whose start was not captured (no
	// SYN either way before their first bytes), as Suricata's
	// stream.midstream does. Their first bytes are then shown to the
	// inspector as if the connection began there, although they may be
	// the middle of a TLS session or of a record, which the TLS machine
	// takes for malformed or unexpected input. By default such a stream
	// is not inspected: its bytes are forwarded unseen and its
	// connection line names the anomaly "midstream".
	Midstream bool
	// OnStream, if set, is given the final figures of each stream once no
	// later packet can belong to it: its 4-tuple was reused, it idled
	// out, or its capture ended. It is called on the replaying goroutine.
	OnStream func(*StreamStats)
}

// GapHandler may be implemented by an Inspector that can go on past bytes
// missing from the capture (the live proxy never meets a gap).
//
// Gap reports that n bytes of dir were never captured, right after the
// pending bytes the last Feed or Gap call was shown. Result.Forward clears
// the head of those pending bytes as Feed's does; the pending bytes it
// does not clear can never be completed and are dropped. The next Feed
// starts with the first byte after the gap, and Result.Pass counts bytes
// after the gap that may be forwarded unseen. A killing decision ends the
// connection as from Feed.
//
// An Inspector without it has the gap reported as the end of that
// direction (EOF); the rest of the direction is then counted as forwarded
// without being inspected, and the connection line lists the anomaly
// "gap".
type GapHandler interface {
	Gap(dir dissect.Direction, n int, now time.Time) inspect.Result
}

// AnomalyLister may be implemented by an Inspector to have the anomalies it
// found named in the connection line, before the replay's own ("gap").
type AnomalyLister interface {
	Anomalies() []dissect.Anomaly
}

// StreamStats are the figures of one TCP stream. Arrays are indexed by
// dissect.Direction (Up is client to server).
type StreamStats struct {
	ID             uint64
	Client, Server netip.AddrPort
	// First and Last are the stream times of its first and last packet.
	First, Last time.Time
	// Packets, WireBytes and Payload count the captured segments, their
	// frame lengths on the wire and their TCP payload, retransmissions
	// included.
	Packets, WireBytes, Payload [2]int64
	// Stream counts the reassembled bytes, each once, in order: the sum
	// of Forwarded and Dropped.
	Stream [2]int64
	// Forwarded are the bytes delivered to the other side (what the
	// connection line reports); Dropped the bytes a verdict or a held
	// record that never completed kept back, and everything after a
	// killing verdict.
	Forwarded, Dropped [2]int64
	// Gaps and GapBytes count holes in the capture: bytes never seen.
	Gaps, GapBytes [2]int64
	Decision       inspect.Decision
	// ContractViolations counts Results that broke the inspector
	// contract (Forward outside pending, Pass with bytes still pending);
	// they are clamped or ignored.
	ContractViolations int64
}

// Stats counts what replaying one capture met.
type Stats struct {
	// Packets and Bytes count the frames read and their captured length.
	Packets, Bytes int64
	// TCP counts the segments given to reassembly.
	TCP int64
	// NotTCP counts frames without TCP (ARP, UDP, ...).
	NotTCP int64
	// Fragments counts IP fragments, Defragmented the datagrams rebuilt
	// from them (a datagram whose fragments did not all come is lost).
	Fragments, Defragmented int64
	// Malformed counts frames whose headers do not parse.
	Malformed int64
	// Unsupported counts frames of an unsupported link type.
	Unsupported int64
	// Streams counts TCP streams.
	Streams int64
	// Gaps and GapBytes count holes in the TCP streams.
	Gaps, GapBytes int64
}

// ErrOutput wraps the error of writing a connection line: the replay stops
// at once, since nothing it produces could be seen.
var ErrOutput = errors.New("writing output")

// Replayer plays captures through inspectors. Flow IDs go on from one
// capture to the next; streams do not (each capture ends its own).
// A Replayer is used from one goroutine.
type Replayer struct {
	opts   Options
	nextID uint64
}

// New returns a Replayer.
func New(opts Options) (*Replayer, error) {
	if opts.Factory == nil {
		return nil, errors.New("replay: no inspector factory")
	}
	if opts.ReorderWindow <= 0 {
		opts.ReorderWindow = DefaultReorderWindow
	}
	switch {
	case opts.IdleTimeout == 0:
		opts.IdleTimeout = DefaultIdleTimeout
	case opts.IdleTimeout > 0 && opts.IdleTimeout < opts.ReorderWindow:
		opts.IdleTimeout = opts.ReorderWindow
	}
	return &Replayer{opts: opts, nextID: 1}, nil
}

// ReplayFile replays the capture at path. Its error is a *DamagedError
// when the file could not be read to its end (the part before the damage
// has been replayed and reported), a *LinkTypeError for a pcap file of a
// link type it cannot decode (nothing is replayed) or, joined, for the
// pcapng interfaces of such a link type (the others are replayed), or
// ErrOutput.
func (r *Replayer) ReplayFile(path string) (Stats, error) {
	f, err := os.Open(path)
	if err != nil {
		return Stats{}, err
	}
	defer f.Close()
	return r.Replay(f)
}

// Replay replays the capture read from rd (pcap or pcapng, gzip-compressed
// or not), as ReplayFile.
func (r *Replayer) Replay(rd io.Reader) (Stats, error) {
	src, err := openCapture(rd)
	if err != nil {
		return Stats{}, err
	}
	defer src.close()
	if src.fixed {
		if _, ok := firstLayer(src.link); !ok {
			return Stats{}, &LinkTypeError{LinkType: src.link}
		}
	}
	ru := newRun(r)
	frames := startReader(src)
	var readErr error
batches:
	for b := range frames.out {
		for i := range b.frames {
			ru.packet(&b.frames[i])
			if ru.werr != nil {
				break batches
			}
		}
		if b.err != nil && b.err != io.EOF {
			readErr = &DamagedError{Packets: ru.stats.Packets, Offset: b.errOff, Err: b.err}
		}
		frames.recycle(b)
	}
	if ru.werr != nil {
		// Nothing more can be shown: the reader is told to stop, but
		// not waited for, as it may be blocked reading a pipe.
		frames.abandon()
		return ru.stats, fmt.Errorf("%w: %w", ErrOutput, ru.werr)
	}
	frames.wait()
	ru.end()
	ru.stats.Fragments, ru.stats.Defragmented = frames.dec.fragments, frames.dec.defragmented
	if ru.werr != nil {
		return ru.stats, fmt.Errorf("%w: %w", ErrOutput, ru.werr)
	}
	errs := []error{readErr}
	for _, e := range ru.linkErrs {
		errs = append(errs, e)
	}
	return ru.stats, errors.Join(errs...)
}
