// Package output writes the two record kinds that haka-proxy emits for
// people and tools downstream: alerts and connection summaries, one JSON
// object per line (or one readable line each in text format). The live
// proxy and the pcap replay write through the same Writer, so a SIEM sees
// the same shapes from both.
package output

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// FlowRef identifies the connection a record is about.
type FlowRef struct {
	ID  uint64 `json:"id"`
	Src string `json:"src"`
	Dst string `json:"dst"`
	SNI string `json:"sni,omitempty"`
}

// Method is how an alert was detected (haka.alert's method field).
type Method struct {
	Description string `json:"description,omitempty"`
	Ref         string `json:"ref,omitempty"`
}

// Alert is a raised alert. Type is always "alert".
type Alert struct {
	Type        string    `json:"type"`
	Time        time.Time `json:"time"`
	Description string    `json:"description"`
	Severity    string    `json:"severity"`
	Confidence  string    `json:"confidence,omitempty"`
	Method      *Method   `json:"method,omitempty"`
	Ref         []string  `json:"ref,omitempty"`
	// Event is the event being evaluated when the alert was raised.
	Event string `json:"event"`
	// Rule is "file.lua:line" of the rule that raised it.
	Rule string `json:"rule"`
	// Action is what the flow got: "drop", "reset" or "none".
	Action string  `json:"action"`
	Flow   FlowRef `json:"flow"`
}

// Connection is the summary of a closed connection (end_connection).
// Type is always "connection".
type Connection struct {
	Type      string    `json:"type"`
	Time      time.Time `json:"time"`
	Flow      FlowRef   `json:"flow"`
	BytesUp   int64     `json:"bytes_up"`
	BytesDown int64     `json:"bytes_down"`
	// Duration is in seconds.
	Duration float64 `json:"duration"`
	Verdict  string  `json:"verdict"`
	Reason   string  `json:"reason,omitempty"`
	Rule     string  `json:"rule,omitempty"`
	Version  string  `json:"version,omitempty"`
	ALPN     string  `json:"alpn,omitempty"`
	JA3      string  `json:"ja3,omitempty"`
	JA4      string  `json:"ja4,omitempty"`
	// Anomalies lists the names of the anomalies seen, in order.
	Anomalies []string `json:"anomalies,omitempty"`
}

// Format selects how records are written.
type Format uint8

const (
	// JSON writes one JSON object per line.
	JSON Format = iota
	// Text writes one readable line per record.
	Text
)

// ParseFormat reads "json" or "text".
func ParseFormat(s string) (Format, error) {
	switch strings.ToLower(s) {
	case "json", "":
		return JSON, nil
	case "text":
		return Text, nil
	}
	return 0, fmt.Errorf("unknown output format %q (want json or text)", s)
}

// Writer serialises records to an io.Writer; it is safe for concurrent use.
// A nil *Writer discards everything. Each record is flushed as it is
// written, unless the caller holds the Writer (Hold) to write a batch.
type Writer struct {
	mu     sync.Mutex
	w      *bufio.Writer
	buf    []byte // the JSON encoding of the record being written
	format Format
	held   int // Hold calls not yet released
	err    error
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer, f Format) *Writer {
	return &Writer{w: bufio.NewWriter(w), format: f}
}

// Alert writes an alert; the Type field is set for the caller.
func (w *Writer) Alert(a *Alert) error {
	if w == nil {
		return nil
	}
	a.Type = "alert"
	if w.format == Text {
		return w.line(fmt.Sprintf("%s ALERT %s [%s] %s -> %s sni=%q event=%s rule=%s action=%s",
			a.Time.UTC().Format(time.RFC3339Nano), a.Description, a.Severity,
			a.Flow.Src, a.Flow.Dst, a.Flow.SNI, a.Event, a.Rule, a.Action))
	}
	return writeJSON(w, a, appendAlert)
}

// Connection writes a connection summary; the Type field is set for the
// caller.
func (w *Writer) Connection(c *Connection) error {
	if w == nil {
		return nil
	}
	c.Type = "connection"
	if w.format == Text {
		s := fmt.Sprintf("%s CONN %s -> %s sni=%q version=%s up=%d down=%d duration=%.3fs verdict=%s",
			c.Time.UTC().Format(time.RFC3339Nano), c.Flow.Src, c.Flow.Dst, c.Flow.SNI, c.Version,
			c.BytesUp, c.BytesDown, c.Duration, c.Verdict)
		if c.Rule != "" {
			s += " rule=" + c.Rule
		}
		if c.Reason != "" {
			s += fmt.Sprintf(" reason=%q", c.Reason)
		}
		if len(c.Anomalies) > 0 {
			s += " anomalies=" + strings.Join(c.Anomalies, ",")
		}
		return w.line(s)
	}
	return writeJSON(w, c, appendConnection)
}

// Hold makes the records written until the matching Release go out in
// one write, at Release (or when the buffer fills): a caller with a batch
// of records to write costs the output one system call, not one each.
// Records written meanwhile by others wait with them.
func (w *Writer) Hold() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.held++
	w.mu.Unlock()
}

// Release ends a Hold; the last one flushes what was held. It returns
// the error of that flush: an earlier one was returned by the write
// that met it, and every write after it returns it again.
func (w *Writer) Release() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.held > 0 {
		w.held--
	}
	if w.held == 0 && w.err == nil && w.w.Buffered() > 0 {
		w.err = w.w.Flush()
		return w.err
	}
	return nil
}

// writeJSON writes record v, encoded by enc into the Writer's buffer, as
// one line.
func writeJSON[T any](w *Writer, v *T, enc func([]byte, *T) ([]byte, error)) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	b, err := enc(w.buf[:0], v)
	w.buf = b
	if err != nil {
		return err
	}
	w.buf = append(w.buf, '\n')
	return w.write(w.buf)
}

// line writes one readable record.
func (w *Writer) line(s string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	w.buf = append(append(w.buf[:0], s...), '\n')
	return w.write(w.buf)
}

// write writes one record's line and flushes it, unless the Writer is
// held, so that a reader of the alert stream sees every record as soon
// as it is raised. w.mu is held.
// A held record that does not fit the buffer's room flushes what is
// held first: every write to the output holds whole lines.
func (w *Writer) write(line []byte) error {
	if len(line) > w.w.Available() && w.w.Buffered() > 0 {
		if w.err = w.w.Flush(); w.err != nil {
			return w.err
		}
	}
	if _, w.err = w.w.Write(line); w.err == nil && w.held == 0 {
		w.err = w.w.Flush()
	}
	return w.err
}
