package tlspeer

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// WritePEM writes c's leaf certificate and its key (PKCS #8) as PEM files
// in dir, for openssl and curl, and returns their paths.
func WritePEM(dir string, c tls.Certificate) (certFile, keyFile string, err error) {
	key, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// PEMFiles writes a fresh certificate for name and its key in a
// temporary directory of the test.
func PEMFiles(tb testing.TB, name string) (certFile, keyFile string) {
	tb.Helper()
	cert, _, err := NewCert(name)
	if err != nil {
		tb.Fatal(err)
	}
	certFile, keyFile, err = WritePEM(tb.TempDir(), cert)
	if err != nil {
		tb.Fatal(err)
	}
	return certFile, keyFile
}

// StartSServer runs `openssl s_server -www` on a free port of 127.0.0.1
// for the length of the test and returns its address, read from its
// "ACCEPT host:port" line within wait.
func StartSServer(tb testing.TB, certFile, keyFile string, wait time.Duration) string {
	tb.Helper()
	cmd := exec.Command("openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", certFile, "-key", keyFile, "-www")
	// Dies with the test process, even one killed by a timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			if a, ok := strings.CutPrefix(s.Text(), "ACCEPT "); ok {
				addr <- a
				break
			}
		}
		close(addr)
		io.Copy(io.Discard, out)
	}()
	select {
	case a, ok := <-addr:
		if !ok {
			tb.Fatal("openssl s_server exited before listening")
		}
		return a
	case <-time.After(wait):
		tb.Fatal("openssl s_server did not say where it listens")
	}
	return ""
}
