package proxy_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
	"github.com/hakaproxy/haka-proxy/proxy"
	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// TLS 1.2 and 1.3 sessions between crypto/tls peers go through the proxy
// unchanged, with the pass-through inspector and with one that holds
// every record until it is complete.
func TestTLSThroughProxy(t *testing.T) {
	files := newTLSFiles(t)
	srvConf := &tls.Config{Certificates: []tls.Certificate{files.cert}}
	be := startBackend(t, func(c *net.TCPConn) {
		tc := tls.Server(c, srvConf)
		defer tc.Close()
		// Echo with a marker, until the client closes.
		buf := make([]byte, 64<<10)
		for {
			n, err := tc.Read(buf)
			if n > 0 {
				if _, err := tc.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	for _, fc := range []struct {
		name string
		f    inspect.Factory
	}{{"passthrough", inspect.PassThrough{}}, {"records", recordInspector{}}} {
		h := startProxy(t, be.addr, proxy.Config{Factory: fc.f})
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(fmt.Sprintf("%s/%s", fc.name, tls.VersionName(v)), func(t *testing.T) {
				c := h.dial()
				tc := tls.Client(c, &tls.Config{RootCAs: files.pool, ServerName: "localhost", MinVersion: v, MaxVersion: v})
				if err := tc.Handshake(); err != nil {
					t.Fatalf("handshake through the proxy: %v", err)
				}
				if got := tc.ConnectionState().Version; got != v {
					t.Fatalf("negotiated %s, want %s", tls.VersionName(got), tls.VersionName(v))
				}
				msg := bytes.Repeat([]byte("heartbeat? no. "), 5000) // several records
				go tc.Write(msg)
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(tc, got); err != nil {
					t.Fatalf("reading the echo: %v", err)
				}
				if !bytes.Equal(got, msg) {
					t.Fatal("echo differs from what was sent")
				}
				tc.Close()
				rec := h.record()
				if rec.Verdict != "pass" || rec.BytesUp == 0 || rec.BytesDown == 0 {
					t.Fatalf("record %+v: want verdict pass and bytes both ways", rec)
				}
			})
		}
	}
}

// openssl s_server and s_client, and curl against s_server -www and
// against a Go HTTPS server, all through the proxy.
func TestOpenSSLAndCurlThroughProxy(t *testing.T) {
	for _, tool := range []string{"openssl", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install openssl curl)", tool)
		}
	}
	files := newTLSFiles(t)
	sAddr := tlspeer.StartSServer(t, files.certFile, files.keyFile, waitFor)
	h := startProxy(t, sAddr, proxy.Config{Factory: recordInspector{}})

	t.Run("s_client", func(t *testing.T) {
		for _, v := range []string{"-tls1_2", "-tls1_3"} {
			cmd := exec.Command("openssl", "s_client", "-connect", h.addr, "-servername", "localhost",
				"-CAfile", files.certFile, "-verify_return_error", v)
			cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("s_client %s: %v\n%s", v, err, out)
			}
			if !bytes.Contains(out, []byte("Verify return code: 0 (ok)")) {
				t.Fatalf("s_client %s did not verify the server through the proxy:\n%s", v, out)
			}
			if rec := h.record(); rec.Verdict != "pass" {
				t.Fatalf("record %+v", rec)
			}
		}
	})
	t.Run("curl s_server -www", func(t *testing.T) {
		out, err := exec.Command("curl", "-sS", "--max-time", "20", "--cacert", files.certFile,
			"https://localhost:"+port(h.addr)+"/").CombinedOutput()
		if err != nil {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		if !bytes.Contains(out, []byte("s_server")) {
			t.Fatalf("curl got no s_server status page:\n%s", out)
		}
		h.record()
	})
	t.Run("curl Go HTTPS", func(t *testing.T) {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello %s over %s", r.URL.Path, tls.VersionName(r.TLS.Version))
		}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{files.cert}}
		srv.StartTLS()
		defer srv.Close()
		h := startProxy(t, srv.Listener.Addr().String(), proxy.Config{Factory: recordInspector{}})
		for _, v := range []string{"--tlsv1.2", "--tlsv1.3"} {
			max := strings.Replace(v, "--tlsv", "--tls-max ", 1)
			args := append([]string{"-sS", "--max-time", "20", "--cacert", files.certFile, v}, strings.Fields(max)...)
			args = append(args, "https://localhost:"+port(h.addr)+"/x")
			out, err := exec.Command("curl", args...).CombinedOutput()
			if err != nil {
				t.Fatalf("curl %s: %v\n%s", v, err, out)
			}
			want := "hello /x over TLS " + strings.TrimPrefix(v, "--tlsv")
			if string(out) != want {
				t.Fatalf("curl %s: got %q, want %q", v, out, want)
			}
			h.record()
		}
	})
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// hashServer reads an 8-byte seed, then streams a rotation of block
// chosen by the seed while reading what the client sends; at the client's EOF it
// answers the SHA-256 of what it received and closes.
func hashServer(block []byte) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		var seed [8]byte
		if _, err := io.ReadFull(c, seed[:]); err != nil {
			return
		}
		sent := make(chan error, 1)
		go func() {
			_, err := io.Copy(c, stream(block, binary.BigEndian.Uint64(seed[:])^0xdead))
			sent <- err
		}()
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			return
		}
		if <-sent != nil {
			return
		}
		c.Write(h.Sum(nil))
		c.CloseWrite()
	}
}

// stream is len(block) pseudo-random bytes chosen by seed: a rotation of
// one random block, so that 200 streams cost no generation time under
// -race.
func stream(block []byte, seed uint64) io.Reader {
	off := int(seed*7919) % len(block)
	return io.MultiReader(bytes.NewReader(block[off:]), bytes.NewReader(block[:off]))
}

func randomBlock(size int) []byte {
	b := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(b)
	return b
}

func sum(r io.Reader) [32]byte {
	h := sha256.New()
	io.Copy(h, r)
	var s [32]byte
	h.Sum(s[:0])
	return s
}

// 200 connections at once each carry 1 MiB both ways; the SHA-256 of
// each stream is compared at both ends.
func TestConcurrentBulk(t *testing.T) {
	const conns, size = 200, 1 << 20
	block := randomBlock(size)
	be := startBackend(t, hashServer(block))
	// Generous timeouts: the point is integrity under concurrency, on a
	// machine that may be loaded (and slowed down by -race).
	h := startProxy(t, be.addr, proxy.Config{Limits: proxy.Limits{
		DialTimeout: waitFor, HandshakeTimeout: waitFor,
	}})
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- bulkClient(h.addr, block, uint64(i))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	var up, down int64
	for range conns {
		rec := h.record()
		if rec.Verdict != "pass" || rec.Reason != "" {
			t.Errorf("record %+v", rec)
		}
		up += rec.BytesUp
		down += rec.BytesDown
	}
	if want := int64(conns * (size + 8)); up != want {
		t.Errorf("records count %d bytes up, want %d", up, want)
	}
	if want := int64(conns * (size + 32)); down != want {
		t.Errorf("records count %d bytes down, want %d", down, want)
	}
}

func bulkClient(addr string, block []byte, seed uint64) error {
	size := len(block)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	wrote := make(chan error, 1)
	go func() {
		var s [8]byte
		binary.BigEndian.PutUint64(s[:], seed)
		_, err := tc.Write(s[:])
		if err == nil {
			_, err = io.Copy(tc, stream(block, seed))
		}
		if err == nil {
			err = tc.CloseWrite()
		}
		wrote <- err
	}()
	got, err := io.ReadAll(tc)
	if err != nil {
		return fmt.Errorf("conn %d: read: %w", seed, err)
	}
	if err := <-wrote; err != nil {
		return fmt.Errorf("conn %d: write: %w", seed, err)
	}
	if len(got) != size+32 {
		return fmt.Errorf("conn %d: got %d bytes, want %d", seed, len(got), size+32)
	}
	if sum(bytes.NewReader(got[:size])) != sum(stream(block, seed^0xdead)) {
		return fmt.Errorf("conn %d: the server's stream arrived altered", seed)
	}
	if want := sum(stream(block, seed)); !bytes.Equal(got[size:], want[:]) {
		return fmt.Errorf("conn %d: the server received an altered stream", seed)
	}
	return nil
}
