package dissect

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/internal/pcaptest"
)

// recOpenSSLSession runs openssl s_client against openssl s_server -www
// through a relay on 127.0.0.1 that records each direction as it passes.
func recOpenSSLSession(t *testing.T, versionFlag string) []pcaptest.Chunk {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	cert, err := recCert()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	server := exec.CommandContext(ctx, "openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-www",
		"-cert", certFile, "-key", keyFile, versionFlag)
	out, err := server.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	defer server.Wait()
	defer server.Process.Kill()
	// s_server says where it listens once it does.
	sc := bufio.NewScanner(out)
	var serverAddr string
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ACCEPT "); ok {
			serverAddr = a
			break
		}
	}
	if serverAddr == "" {
		t.Fatalf("s_server did not start: %v", sc.Err())
	}
	go io.Copy(io.Discard, out)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	log := &recLog{}
	relayed := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			relayed <- err
			return
		}
		defer c.Close()
		s, err := net.Dial("tcp", serverAddr)
		if err != nil {
			relayed <- err
			return
		}
		defer s.Close()
		var wg sync.WaitGroup
		pipe := func(dst, src *net.TCPConn, up bool) {
			defer wg.Done()
			io.Copy(recWriter{dst, log, up}, src)
			dst.CloseWrite()
		}
		wg.Add(2)
		go pipe(s.(*net.TCPConn), c.(*net.TCPConn), true)
		go pipe(c.(*net.TCPConn), s.(*net.TCPConn), false)
		wg.Wait()
		relayed <- nil
	}()

	client := exec.CommandContext(ctx, "openssl", "s_client", "-connect", ln.Addr().String(), "-quiet", versionFlag)
	client.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
	page, err := client.Output()
	if err != nil {
		t.Fatalf("s_client: %v", err)
	}
	if !strings.Contains(string(page), "200 ok") {
		t.Fatalf("s_client got %q", page)
	}
	if err := <-relayed; err != nil {
		t.Fatal(err)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	return log.chunks
}

// Sessions between OpenSSL peers frame cleanly and switch where they
// should, as crypto/tls ones do.
func TestConnRealOpenSSL(t *testing.T) {
	t.Run("TLS1.2", func(t *testing.T) {
		r := recReplay(t, recOpenSSLSession(t, "-tls1_2"))
		if r.msgs[Up][0] != 1 || !slices.Contains(r.msgs[Up], 16) || !slices.Equal(r.msgs[Down][:4], []uint8{2, 11, 12, 14}) || r.c.Version() != VersionTLS12 {
			t.Fatalf("messages %v, version %s", r.msgs, VersionName(r.c.Version()))
		}
	})
	t.Run("TLS1.3", func(t *testing.T) {
		r := recReplay(t, recOpenSSLSession(t, "-tls1_3"))
		if !slices.Equal(r.msgs[Up], []uint8{1}) || !slices.Equal(r.msgs[Down], []uint8{2}) || r.c.Version() != VersionTLS13 {
			t.Fatalf("messages %v, version %s", r.msgs, VersionName(r.c.Version()))
		}
	})
}
