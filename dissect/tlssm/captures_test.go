package tlssm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
	"github.com/hakaproxy/haka-proxy/proxy/replay"
)

// sharedCaptures lists the shared captures, relative to their root.
func sharedCaptures(t testing.TB) (string, []string) {
	t.Helper()
	root, err := pcaptest.Root()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	err = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || strings.HasSuffix(p, ".md") {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		names = append(names, rel)
		return nil
	})
	if err != nil || len(names) == 0 {
		t.Skipf("shared captures not found at %s: %v", root, err)
	}
	sort.Strings(names)
	return root, names
}

// goldenName maps a capture to its golden file.
func goldenName(capture string) string {
	return filepath.Join("captures", strings.ReplaceAll(strings.TrimSuffix(strings.TrimSuffix(capture, ".gz"), ".pcap"), "/", "_")+".golden")
}

// replayCapture runs a capture through the replay driver and a Factory of
// recorders, and renders what each stream went through: the states, the
// events with their key fields, the anomalies and the outcome.
func replayCapture(t *testing.T, path string, mk func(s *Session) *recorder) (string, []*replay.StreamStats, []*recorder) {
	t.Helper()
	f, recs := newTestFactory(t, mk)
	var stats []*replay.StreamStats
	// Midstream: a stream caught after its start (tls13-ech's first)
	// is shown to the machine all the same.
	r, err := replay.New(replay.Options{Factory: f, Midstream: true, OnStream: func(s *replay.StreamStats) { stats = append(stats, s) }})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.ReplayFile(path)
	var b strings.Builder
	var damaged *replay.DamagedError
	switch {
	case errors.As(err, &damaged):
		fmt.Fprintf(&b, "# capture damaged after %d packets\n", damaged.Packets)
	case err != nil:
		t.Fatalf("replay: %v", err)
	}
	byID := map[uint64]*replay.StreamStats{}
	for _, s := range stats {
		byID[s.ID] = s
	}
	for _, rec := range *recs {
		fl := rec.s.Flow()
		fmt.Fprintf(&b, "stream %d %s -> %s\n", fl.ID, fl.Src, fl.Dst)
		for _, l := range rec.lines {
			fmt.Fprintf(&b, "  %s\n", l)
		}
		fmt.Fprintf(&b, "  final state %s\n", rec.s.State())
		for _, a := range rec.s.Anomalies() {
			fmt.Fprintf(&b, "  anomaly %s %s\n", a.Direction, a.Name)
		}
		if st := byID[fl.ID]; st != nil {
			d := st.Decision
			fmt.Fprintf(&b, "  decision %s", d.Verdict)
			if d.Reason != "" {
				fmt.Fprintf(&b, " %q %s", d.Reason, d.Rule)
			}
			fmt.Fprintf(&b, "\n  forwarded up=%d/%d down=%d/%d\n", st.Forwarded[0], st.Stream[0], st.Forwarded[1], st.Stream[1])
			if st.ContractViolations != 0 {
				t.Errorf("stream %d: %d contract violations", fl.ID, st.ContractViolations)
			}
		}
		if rec.closed != 1 {
			t.Errorf("stream %d: handler closed %d times", fl.ID, rec.closed)
		}
	}
	return b.String(), stats, *recs
}

// TestCaptures replays every shared capture through the Session with a
// handler that hooks every event but record and passes, and compares what
// happened with testdata/captures/*.golden.
func TestCaptures(t *testing.T) {
	root, names := sharedCaptures(t)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			got, _, _ := replayCapture(t, filepath.Join(root, name), func(*Session) *recorder { return &recorder{} })
			golden(t, goldenName(name), []byte("# "+name+"\n"+got))
		})
	}
}

// The Heartbleed captures with the stock rule's decisions: each is
// dropped, and the replay forwards nothing of the request (nor, in
// heartbleed-success.pcap, of the server's leaking response).
func TestCapturesHeartbleedDropped(t *testing.T) {
	root, _ := sharedCaptures(t)
	for _, c := range []struct {
		name   string
		reason string
	}{
		{"zeek/heartbleed.pcap", "heartbleed: heartbeat_overflow"},
		{"zeek/heartbleed-success.pcap", "heartbleed: heartbeat_overflow"},
		{"zeek/heartbleed-encrypted.pcap", "heartbleed: heartbeat_before_application_data"},
	} {
		t.Run(c.name, func(t *testing.T) {
			// A first pass without rules finds where the heartbeats are.
			var at [2]int64
			_, _, recs := replayCapture(t, filepath.Join(root, c.name), func(*Session) *recorder {
				r := &recorder{}
				r.check = func(ev *Event) {
					if ev.ID == EvHeartbeat && at[ev.Dir] == 0 {
						at[ev.Dir] = ev.Offset
					}
				}
				return r
			})
			if len(recs) != 1 || at[0] == 0 {
				t.Fatalf("no heartbeat up found (%d streams)", len(recs))
			}
			_, stats, _ := replayCapture(t, filepath.Join(root, c.name), func(*Session) *recorder {
				return &recorder{verdict: heartbleedRule}
			})
			st := stats[0]
			if st.Decision.Verdict != inspect.Drop || st.Decision.Reason != c.reason {
				t.Errorf("decision %+v, want a drop for %q", st.Decision, c.reason)
			}
			if st.Forwarded[0] != at[0] {
				t.Errorf("%d bytes up forwarded, want the %d before the heartbeat", st.Forwarded[0], at[0])
			}
			if at[1] != 0 && st.Forwarded[1] > at[1] {
				t.Errorf("%d bytes down forwarded, the response starts at %d", st.Forwarded[1], at[1])
			}
		})
	}
}
