package output

import (
	"errors"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// The records are encoded by hand, into a buffer the Writer reuses: a
// connection record is written for every connection the proxy closes,
// and encoding/json's reflection cost as much CPU as the rest of the
// connection's user-space bookkeeping. The bytes are those json.Marshal
// writes for the same struct (the same field order, omitempty fields,
// HTML-safe string escapes, number and time forms); TestJSONMatchesMarshal
// and FuzzJSONMatchesMarshal hold the two to it.

var errUnsupportedFloat = errors.New("json: unsupported value: NaN or infinite duration")

// appendHead opens a record's object with its type and time.
func appendHead(b []byte, typ string, t time.Time) ([]byte, error) {
	b = append(b, `{"type":`...)
	b = appendString(b, typ)
	b = append(b, `,"time":`...)
	return appendTime(b, t)
}

// appendConnection appends c as one JSON object.
func appendConnection(b []byte, c *Connection) ([]byte, error) {
	b, err := appendHead(b, c.Type, c.Time)
	if err != nil {
		return b, err
	}
	b = append(b, `,"flow":`...)
	b = appendFlow(b, &c.Flow)
	b = append(b, `,"bytes_up":`...)
	b = strconv.AppendInt(b, c.BytesUp, 10)
	b = append(b, `,"bytes_down":`...)
	b = strconv.AppendInt(b, c.BytesDown, 10)
	b = append(b, `,"duration":`...)
	if b, err = appendFloat(b, c.Duration); err != nil {
		return b, err
	}
	b = append(b, `,"verdict":`...)
	b = appendString(b, c.Verdict)
	b = appendOptString(b, `,"reason":`, c.Reason)
	b = appendOptString(b, `,"rule":`, c.Rule)
	b = appendOptString(b, `,"version":`, c.Version)
	b = appendOptString(b, `,"alpn":`, c.ALPN)
	b = appendOptString(b, `,"ja3":`, c.JA3)
	b = appendOptString(b, `,"ja4":`, c.JA4)
	if len(c.Anomalies) > 0 {
		b = append(b, `,"anomalies":`...)
		b = appendStrings(b, c.Anomalies)
	}
	return append(b, '}'), nil
}

// appendAlert appends a as one JSON object.
func appendAlert(b []byte, a *Alert) ([]byte, error) {
	b, err := appendHead(b, a.Type, a.Time)
	if err != nil {
		return b, err
	}
	b = append(b, `,"description":`...)
	b = appendString(b, a.Description)
	b = append(b, `,"severity":`...)
	b = appendString(b, a.Severity)
	b = appendOptString(b, `,"confidence":`, a.Confidence)
	if m := a.Method; m != nil {
		b = append(b, `,"method":{`...)
		sep := len(b)
		b = appendOptString(b, `,"description":`, m.Description)
		b = appendOptString(b, `,"ref":`, m.Ref)
		if len(b) > sep {
			// The first member written has no comma before it.
			b = append(b[:sep], b[sep+1:]...)
		}
		b = append(b, '}')
	}
	if len(a.Ref) > 0 {
		b = append(b, `,"ref":`...)
		b = appendStrings(b, a.Ref)
	}
	b = append(b, `,"event":`...)
	b = appendString(b, a.Event)
	b = append(b, `,"rule":`...)
	b = appendString(b, a.Rule)
	b = append(b, `,"action":`...)
	b = appendString(b, a.Action)
	b = append(b, `,"flow":`...)
	b = appendFlow(b, &a.Flow)
	return append(b, '}'), nil
}

func appendFlow(b []byte, f *FlowRef) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendUint(b, f.ID, 10)
	b = append(b, `,"src":`...)
	b = appendString(b, f.Src)
	b = append(b, `,"dst":`...)
	b = appendString(b, f.Dst)
	b = appendOptString(b, `,"sni":`, f.SNI)
	return append(b, '}')
}

// appendOptString is an omitempty string member: key (with its comma)
// and value, or nothing for "".
func appendOptString(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendString(append(b, key...), s)
}

func appendStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

// appendTime writes t as time.Time's MarshalJSON does: RFC 3339 with
// nanoseconds, in t's own location; years outside 0-9999 are an error.
func appendTime(b []byte, t time.Time) ([]byte, error) {
	if y := t.Year(); y < 0 || y > 9999 {
		return b, errors.New("json: Time.MarshalJSON: year outside of range [0,9999]")
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), nil
}

// appendFloat writes f as encoding/json does: the shortest form that
// reads back the same, in exponent form only below 1e-6 or from 1e21,
// with a one-digit negative exponent written without its leading zero.
func appendFloat(b []byte, f float64) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return b, errUnsupportedFloat
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 becomes e-9.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string the way json.Marshal does:
// quotes, backslashes and control characters escaped (the short forms
// for \b \f \n \r \t), <, > and & as \u003c \u003e \u0026 (HTML-safe),
// invalid UTF-8 as U+FFFD, and U+2028, U+2029 escaped (JavaScript line
// terminators).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
