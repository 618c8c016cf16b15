package dissect

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The recorded handshakes in testdata/handshakes come from real
// implementations talking over real loopback sockets: crypto/tls in
// process, and openssl s_client to openssl s_server through a relay that
// keeps the bytes. go test -run TestRecordHandshakes -update ./dissect/
// records them again (the Go ones need this toolchain, the others the
// machine's openssl).

// recordTimeout bounds one recorded handshake; loopback handshakes take
// milliseconds, so hitting it means a peer hung.
const recordHandshakeTimeout = 20 * time.Second

// tapConn keeps what goes through a net.Conn in each direction.
type tapConn struct {
	net.Conn
	mu        sync.Mutex
	read, out bytes.Buffer
}

func (c *tapConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	c.read.Write(b[:n])
	c.mu.Unlock()
	return n, err
}

func (c *tapConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.out.Write(b)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// recordedMessages splits the cleartext handshake of a direction. TLS 1.3
// peers send a ChangeCipherSpec for middlebox compatibility and keep
// sending cleartext hellos after it (a second ClientHello after a
// HelloRetryRequest); in TLS 1.2 everything after it is encrypted.
func recordedMessages(t testing.TB, stream []byte, tls13 bool) []hsMsg {
	var hs []byte
	for off := 0; off+5 <= len(stream); {
		typ, n := stream[off], int(stream[off+3])<<8|int(stream[off+4])
		if off+5+n > len(stream) || typ == 23 || typ == 21 || typ == 20 && !tls13 {
			break
		}
		if typ == 22 {
			hs = append(hs, stream[off+5:off+5+n]...)
		}
		off += 5 + n
	}
	return splitHandshakeMsgs(t, hs)
}

type keyPair struct {
	der []byte
	key crypto.Signer
}

func newKeyPair(t testing.TB, rsaKey bool, cn string) keyPair {
	t.Helper()
	var key crypto.Signer
	var err error
	if rsaKey {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{cn},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{der, key}
}

func (k keyPair) tls() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{k.der}, PrivateKey: k.key}
}

func (k keyPair) writePEM(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	pk, err := x509.MarshalPKCS8PrivateKey(k.key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// recordGo runs one crypto/tls handshake over loopback and returns what the
// client sent and received.
func recordGo(t *testing.T, client, server *tls.Config) (up, down []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(recordHandshakeTimeout))
		s := tls.Server(c, server)
		if err := s.Handshake(); err != nil {
			srvErr <- err
			return
		}
		// Read until the client closes, so that a TLS 1.2 server's
		// NewSessionTicket and Finished are sent before we stop.
		_, err = io.Copy(io.Discard, s)
		srvErr <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(recordHandshakeTimeout))
	tap := &tapConn{Conn: conn}
	c := tls.Client(tap, client)
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-srvErr; err != nil {
		t.Fatalf("server: %v", err)
	}
	tap.mu.Lock()
	defer tap.mu.Unlock()
	return bytes.Clone(tap.out.Bytes()), bytes.Clone(tap.read.Bytes())
}

// relay accepts one connection, forwards it to target and keeps the bytes.
type tlsRelay struct {
	ln       net.Listener
	up, down bytes.Buffer
	done     chan error
}

func startTLSRelay(t *testing.T, target string) *tlsRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &tlsRelay{ln: ln, done: make(chan error, 1)}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			r.done <- err
			return
		}
		defer c.Close()
		s, err := net.Dial("tcp", target)
		if err != nil {
			r.done <- err
			return
		}
		defer s.Close()
		deadline := time.Now().Add(recordHandshakeTimeout)
		c.SetDeadline(deadline)
		s.SetDeadline(deadline)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(io.MultiWriter(s, &r.up), c)
			s.(*net.TCPConn).CloseWrite()
		}()
		io.Copy(io.MultiWriter(c, &r.down), s)
		c.(*net.TCPConn).CloseWrite()
		wg.Wait()
		r.done <- nil
	}()
	return r
}

// recordOpenSSL runs openssl s_server and s_client with the given
// arguments through a relay and returns the client's two streams.
func recordOpenSSL(t *testing.T, serverArgs, clientArgs []string) (up, down []byte) {
	t.Helper()
	srv := exec.Command("openssl", append([]string{"s_server", "-accept", "127.0.0.1:0", "-naccept", "1"}, serverArgs...)...)
	// s_server drops the connection when its stdin ends: keep it open.
	stdin, err := srv.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	srv.Stderr = srv.Stdout
	if err := srv.Start(); err != nil {
		t.Skipf("openssl: %v", err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	// s_server prints "ACCEPT" once listening; with port 0 it names the
	// port on the line before ("Using default temp DH parameters" lines
	// may precede both).
	port := ""
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "ACCEPT") {
			if i := strings.LastIndex(line, ":"); i >= 0 {
				port = line[i+1:]
			}
			break
		}
	}
	if port == "" {
		t.Fatalf("s_server did not report its port (%v)", sc.Err())
	}
	go io.Copy(io.Discard, stdout)
	r := startTLSRelay(t, "127.0.0.1:"+port)
	defer r.ln.Close()
	cli := exec.Command("openssl", append([]string{"s_client", "-connect", r.ln.Addr().String()}, clientArgs...)...)
	cli.Stdin = strings.NewReader("")
	if out, err := cli.CombinedOutput(); err != nil {
		t.Fatalf("s_client: %v\n%s", err, out)
	}
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
	return r.up.Bytes(), r.down.Bytes()
}

// recordingSpecs lists what TestRecordHandshakes records.
func recordingSpecs(t *testing.T, dir string) []struct {
	name, comment string
	tls13         bool
	run           func(t *testing.T) (up, down []byte)
} {
	ec, rsaKP := newKeyPair(t, false, "ecdsa.proxy.test"), newKeyPair(t, true, "rsa.proxy.test")
	clientKP := newKeyPair(t, false, "client.proxy.test")
	pool := x509.NewCertPool()
	for _, k := range []keyPair{ec, rsaKP} {
		c, _ := x509.ParseCertificate(k.der)
		pool.AddCert(c)
	}
	goClient := func(name string, mod func(*tls.Config)) *tls.Config {
		c := &tls.Config{ServerName: name, RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	goServer := func(k keyPair, mod func(*tls.Config)) *tls.Config {
		c := &tls.Config{Certificates: []tls.Certificate{k.tls()}, NextProtos: []string{"h2"}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	ecCert, ecKey := ec.writePEM(t, dir, "ec")
	rsaCert, rsaKey := rsaKP.writePEM(t, dir, "rsa")
	cliCert, cliKey := clientKP.writePEM(t, dir, "client")
	goVersion := "crypto/tls of " + runtime.Version()
	type spec = struct {
		name, comment string
		tls13         bool
		run           func(t *testing.T) (up, down []byte)
	}
	return []spec{
		{"go-tls13-x25519mlkem768", goVersion + ": TLS 1.3, default curves (X25519MLKEM768 first)", true, func(t *testing.T) ([]byte, []byte) {
			return recordGo(t, goClient("ecdsa.proxy.test", nil), goServer(ec, nil))
		}},
		{"go-tls13-x25519", goVersion + ": TLS 1.3, X25519 only", true, func(t *testing.T) ([]byte, []byte) {
			return recordGo(t, goClient("ecdsa.proxy.test", func(c *tls.Config) { c.CurvePreferences = []tls.CurveID{tls.X25519} }),
				goServer(ec, nil))
		}},
		{"go-tls13-hrr", goVersion + ": TLS 1.3, the server wants P-256: HelloRetryRequest and a second ClientHello", true, func(t *testing.T) ([]byte, []byte) {
			return recordGo(t, goClient("ecdsa.proxy.test", func(c *tls.Config) { c.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256} }),
				goServer(ec, func(c *tls.Config) { c.CurvePreferences = []tls.CurveID{tls.CurveP256} }))
		}},
		{"go-tls12-ecdhe-rsa-clientauth", goVersion + ": TLS 1.2 ECDHE-RSA, the server asks for a client certificate and issues a ticket", false, func(t *testing.T) ([]byte, []byte) {
			return recordGo(t, goClient("rsa.proxy.test", func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }),
				goServer(rsaKP, func(c *tls.Config) { c.ClientAuth = tls.RequestClientCert }))
		}},
		{"go-tls12-rsa-kx", goVersion + ": TLS 1.2 with RSA key exchange (no ServerKeyExchange)", false, func(t *testing.T) ([]byte, []byte) {
			return recordGo(t, goClient("rsa.proxy.test", func(c *tls.Config) {
				c.MaxVersion = tls.VersionTLS12
				c.CipherSuites = []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
			}), goServer(rsaKP, func(c *tls.Config) { c.CipherSuites = []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256} }))
		}},
		{"openssl-tls13", opensslVersion() + ": s_client to s_server, TLS 1.3, SNI and ALPN", true, func(t *testing.T) ([]byte, []byte) {
			return recordOpenSSL(t, []string{"-cert", ecCert, "-key", ecKey, "-alpn", "h2"},
				[]string{"-servername", "ecdsa.proxy.test", "-alpn", "h2,http/1.1"})
		}},
		{"openssl-tls12-dhe-rsa", opensslVersion() + ": s_client to s_server, TLS 1.2 DHE-RSA-AES128-GCM-SHA256", false, func(t *testing.T) ([]byte, []byte) {
			return recordOpenSSL(t, []string{"-cert", rsaCert, "-key", rsaKey, "-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256"},
				[]string{"-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256", "-servername", "rsa.proxy.test"})
		}},
		{"openssl-tls12-ecdhe-ecdsa-clientcert", opensslVersion() + ": s_client to s_server, TLS 1.2 ECDHE-ECDSA with a client certificate (Verify)", false, func(t *testing.T) ([]byte, []byte) {
			return recordOpenSSL(t, []string{"-cert", ecCert, "-key", ecKey, "-tls1_2", "-Verify", "1", "-CAfile", cliCert},
				[]string{"-tls1_2", "-cert", cliCert, "-key", cliKey, "-servername", "ecdsa.proxy.test"})
		}},
		{"openssl-tls12-ocsp", opensslVersion() + ": s_client -status to s_server -status_file, TLS 1.2 (CertificateStatus)", false, func(t *testing.T) ([]byte, []byte) {
			resp := ocspResponse(t, dir, ec)
			return recordOpenSSL(t, []string{"-cert", ecCert, "-key", ecKey, "-tls1_2", "-status_file", resp},
				[]string{"-tls1_2", "-status", "-servername", "ecdsa.proxy.test"})
		}},
	}
}

func opensslVersion() string {
	out, err := exec.Command("openssl", "version").Output()
	if err != nil {
		return "openssl (unknown version)"
	}
	return strings.TrimSpace(string(out))
}

// ocspResponse has openssl act as the OCSP responder for the (self-signed)
// certificate and returns the DER response file.
func ocspResponse(t *testing.T, dir string, k keyPair) string {
	t.Helper()
	certFile, keyFile := k.writePEM(t, dir, "ocsp")
	c, _ := x509.ParseCertificate(k.der)
	index := filepath.Join(dir, "index.txt")
	line := "V\t" + c.NotAfter.UTC().Format("060102150405Z") + "\t\t" + strings.ToUpper(c.SerialNumber.Text(16)) + "\tunknown\t/CN=" + c.Subject.CommonName + "\n"
	if err := os.WriteFile(index, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	resp := filepath.Join(dir, "ocsp.der")
	out, err := exec.Command("openssl", "ocsp", "-index", index, "-CA", certFile, "-rsigner", certFile, "-rkey", keyFile,
		"-issuer", certFile, "-cert", certFile, "-respout", resp, "-ndays", "1").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl ocsp: %v\n%s", err, out)
	}
	return resp
}

func TestRecordHandshakes(t *testing.T) {
	if !updateRecordings() {
		t.Skip("records only with -update")
	}
	dir := t.TempDir()
	for _, s := range recordingSpecs(t, dir) {
		t.Run(s.name, func(t *testing.T) {
			up, down := s.run(t)
			r := recording{name: s.name, up: recordedMessages(t, up, s.tls13), down: recordedMessages(t, down, s.tls13)}
			if len(r.up) == 0 || len(r.down) == 0 {
				t.Fatalf("nothing recorded: %d up, %d down", len(r.up), len(r.down))
			}
			writeRecording(t, r, s.comment+"\nCleartext handshake messages, one per line: direction, then the message with its 4-byte header, hex.\nRegenerate: go test -run TestRecordHandshakes -update ./dissect/")
		})
	}
}
