package tlssm

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/dissect"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run with -update if the change is intended):\n%s", path, diffLines(string(want), string(got)))
	}
}

// diffLines shows the first lines where want and got differ.
func diffLines(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < max(len(w), len(g)) && shown < 12; i++ {
		var a, c string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			c = g[i]
		}
		if a != c {
			fmt.Fprintf(&b, "line %d:\n  want %q\n  got  %q\n", i+1, a, c)
			shown++
		}
	}
	return b.String()
}

// recorder is a Handler that hooks the events of hook (all but record when
// nil), writes each as a line and answers with verdict(ev).
type recorder struct {
	s       *Session
	hook    func(EventID) bool
	verdict func(ev *Event) inspect.Decision
	lines   []string
	state   string
	closed  int
	// check, if set, is called on every event first.
	check func(ev *Event)
}

func (r *recorder) Hooked(id EventID) bool {
	if r.hook != nil {
		return r.hook(id)
	}
	return id != EvRecord
}

func (r *recorder) Event(ev *Event) inspect.Decision {
	if r.check != nil {
		r.check(ev)
	}
	if st := r.s.State(); st != r.state {
		r.lines = append(r.lines, "state "+st)
		r.state = st
	}
	r.lines = append(r.lines, formatEvent(ev))
	if r.verdict != nil {
		return r.verdict(ev)
	}
	return inspect.Decision{}
}

func (r *recorder) Close() { r.closed++ }

// formatEvent renders an event with its key fields on one line.
func formatEvent(ev *Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", dirName(ev), ev.ID)
	f := func(format string, args ...any) { fmt.Fprintf(&b, " "+format, args...) }
	switch ev.ID {
	case EvClientHello:
		h := ev.ClientHello
		f("version=%s", dissect.VersionName(h.LegacyVersion))
		if len(h.SupportedVersions) > 0 {
			var vs []string
			for _, v := range h.SupportedVersions {
				vs = append(vs, dissect.VersionName(v))
			}
			f("versions=%s", strings.Join(vs, ","))
		}
		if h.ServerName != "" {
			f("sni=%s", h.ServerName)
		}
		if alpn := h.ALPNStrings(); len(alpn) > 0 {
			f("alpn=%s", strings.Join(alpn, ","))
		}
		f("ciphers=%d extensions=%d", len(h.CipherSuites), len(h.Extensions))
		if h.Heartbeat {
			f("heartbeat")
		}
		if h.ECH {
			f("ech")
		}
		if h.SSLv2 {
			f("sslv2")
		}
		f("length=%d ja3=%s ja4=%s", ev.Message.Length, ev.JA3Hash, ev.JA4)
	case EvServerHello:
		h := ev.ServerHello
		f("version=%s cipher=0x%04x", dissect.VersionName(h.Version()), h.CipherSuite)
		if h.HelloRetryRequest {
			f("retry")
		}
		if h.Heartbeat {
			f("heartbeat")
		}
		f("extensions=%d ja3s=%s", len(h.Extensions), ev.JA3SHash)
	case EvCertificate:
		chain := ev.Chain()
		f("certificates=%d", len(chain))
		if len(chain) > 0 {
			f("leaf=%q sha256=%.16s", chain[0].Subject, chain[0].SHA256Hex())
		}
	case EvHandshake:
		f("%s length=%d", ev.Message.Type, ev.Message.Length)
	case EvAlert:
		if ev.Alert.Encrypted {
			f("encrypted")
		} else {
			f("%s %s", ev.Alert.LevelName(), ev.Alert.DescriptionName())
		}
	case EvHeartbeat:
		hb := ev.Heartbeat
		f("record_length=%d", hb.RecordLength)
		if hb.Encrypted {
			f("encrypted")
		} else {
			f("type=%s payload_length=%d", hb.TypeName(), hb.PayloadLength)
		}
		if hb.Overflow {
			f("overflow")
		}
		if hb.Leak {
			f("leak")
		}
	case EvRecord:
		f("%s %s length=%d", ev.Record.TypeName(), dissect.VersionName(ev.Record.Version), ev.Record.Length)
		if ev.Record.Encrypted {
			f("encrypted")
		}
	case EvAnomaly:
		f("%s: %s", ev.Anomaly.Name, ev.Anomaly.Detail)
	case EvParseError:
		f("%s", errText(ev.Err))
	case EvEndConnection:
		s := ev.Summary
		f("bytes_up=%d bytes_down=%d verdict=%s", s.BytesUp, s.BytesDown, s.Decision.Verdict)
		if s.Decision.Reason != "" {
			f("reason=%q", s.Decision.Reason)
		}
	}
	return b.String()
}

func dirName(ev *Event) string {
	switch ev.ID {
	case EvNewConnection, EvEstablished, EvEndConnection:
		return "--"
	}
	return ev.Dir.String()
}

// newTestFactory returns a factory whose handlers are recorders made by mk.
func newTestFactory(t testing.TB, mk func(s *Session) *recorder) (*Factory, *[]*recorder) {
	t.Helper()
	var recs []*recorder
	f, err := NewFactory(Options{
		NoTimers: true,
		NewHandler: func(_ *inspect.Flow, s *Session) Handler {
			r := mk(s)
			r.s = s
			recs = append(recs, r)
			return r
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return f, &recs
}

var t0 = time.Date(2014, 4, 8, 12, 0, 0, 0, time.UTC)
