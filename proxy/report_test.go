package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hakaproxy/haka-proxy/proxy"
)

// With ReportOnPoller the pollers report the connections that end on them
// themselves: every connection still gets its record, with its counts.
func TestReportOnPoller(t *testing.T) {
	be := startBackend(t, echo)
	h := startProxy(t, be.addr, proxy.Config{ReportOnPoller: true})
	const conns = 200
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		wg.Go(func() {
			c, err := net.Dial("tcp", h.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := bytes.Repeat([]byte{byte(i)}, 100+i)
			if _, err := c.Write(msg); err != nil {
				errs <- err
				return
			}
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err == nil && !bytes.Equal(got, msg) {
				err = fmt.Errorf("connection %d: echo of %d bytes, want %d", i, len(got), len(msg))
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var up int64
	for range conns {
		rec := h.record()
		if rec.Verdict != "pass" || rec.BytesUp != rec.BytesDown {
			t.Errorf("record %+v", rec)
		}
		up += rec.BytesUp
	}
	if want := int64(conns*100 + conns*(conns-1)/2); up != want {
		t.Errorf("records count %d bytes up, want %d", up, want)
	}
}

func TestWritesNeverBlock(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "alerts.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, c := range []struct {
		name string
		w    io.Writer
		want bool
	}{
		{"regular file", f, true},
		{"/dev/null", null, true},
		{"pipe", w, false},
		{"not a file", &bytes.Buffer{}, false},
	} {
		if got := proxy.WritesNeverBlock(c.w); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	f.Close()
	if proxy.WritesNeverBlock(f) {
		t.Error("a closed file: true, want false")
	}
}
