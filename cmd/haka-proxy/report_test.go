package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// reportOnPoller: the pollers write the connections' lines and records
// themselves only where no write can wait on a reader.
func TestReportOnPollerDecision(t *testing.T) {
	dir := t.TempDir()
	file := func(name string) *os.File {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	r, pipe, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer pipe.Close()
	for _, c := range []struct {
		name            string
		records, stderr interface{ Write([]byte) (int, error) }
		level           string
		want            bool
	}{
		{"records to a file, no line per connection", file("a1"), pipe, "warn", true},
		{"records to a file, lines to a pipe", file("a2"), pipe, "info", false},
		{"records and lines to files", file("a3"), file("log"), "info", true},
		{"records to a pipe", pipe, file("log2"), "warn", false},
		{"records to a buffer", &bytes.Buffer{}, file("log3"), "error", false},
	} {
		log, err := newLogger(c.level, "json", c.stderr)
		if err != nil {
			t.Fatal(err)
		}
		if got := reportOnPoller(c.records, c.stderr, log); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
