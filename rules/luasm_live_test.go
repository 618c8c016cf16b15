package rules

import (
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/hakaproxy/haka-proxy/internal/tlspeer"
	"github.com/hakaproxy/haka-proxy/rules/output"
)

// The example machine in the running proxy, with --rules pointing at a
// directory that holds it (and a file of rules checking its events):
// real crypto/tls and openssl clients and servers pass untouched, and the
// Heartbleed attacks are dropped by its rules before the leak reaches the
// attacker.
func TestExampleMachineLive(t *testing.T) {
	dir := exampleDir(t)
	if err := os.WriteFile(filepath.Join(dir, "zz_checks.lua"), []byte(eventChecks), 0o644); err != nil {
		t.Fatal(err)
	}
	b, cfg := startBackend(t)
	r := startLive(t, nil, Options{Dir: dir, PoolSize: 2}, b.Addr())

	type scenario struct {
		name    string
		rig     *liveRig
		run     func(t *testing.T) (output.Connection, error)
		verdict string
		rule    string // "" for none
		saw     []string
	}
	crypto := func(v uint16) func(t *testing.T) (output.Connection, error) {
		return func(t *testing.T) (output.Connection, error) {
			c := r.dial(t)
			err := exchange(c, cfg, v)
			c.Close()
			return r.connOf(t, c), err
		}
	}
	rule := func(text string) string { return fmt.Sprintf("ssl_state_machine.lua:%d", lineOf(t, text)) }
	scenarios := []scenario{
		{name: "crypto/tls TLS1.2", rig: r, run: crypto(tls.VersionTLS12), verdict: "pass",
			saw: []string{"client_hello sni=backend.test version=TLS1.2", "server_hello version=TLS1.2 retry=false", "established TLS1.2"}},
		{name: "crypto/tls TLS1.3", rig: r, run: crypto(tls.VersionTLS13), verdict: "pass",
			saw: []string{"client_hello sni=backend.test version=TLS1.2", "server_hello version=TLS1.3 retry=false", "established TLS1.3"}},
		{name: "cleartext heartbleed", rig: r, verdict: "drop", rule: rule("haka.rule{ on = ssl.events.heartbeat_in_handshake"),
			run: func(t *testing.T) (output.Connection, error) {
				c := r.dial(t)
				o := tlspeer.CleartextHeartbleed(c, liveWait)
				c.Close()
				if o.Leaked != 0 || !o.Closed {
					t.Errorf("the attack got %+v", o)
				}
				return r.connOf(t, c), nil
			},
			saw: []string{"server_hello version=TLS1.2"}},
		{name: "encrypted heartbleed", rig: r, verdict: "drop", rule: rule("haka.rule{ on = ssl.events.suspicious_heartbeat"),
			run: func(t *testing.T) (output.Connection, error) {
				c := r.dial(t)
				o := tlspeer.EncryptedHeartbleed(c, cfg, 64, liveWait)
				c.Close()
				if o.Leaked != 0 || !o.Closed {
					t.Errorf("the attack got %+v", o)
				}
				return r.connOf(t, c), nil
			},
			saw: []string{"established TLS1.2"}},
	}
	if _, err := exec.LookPath("openssl"); err == nil {
		certFile, keyFile := tlspeer.PEMFiles(t, "localhost")
		rs := startLive(t, nil, Options{Dir: dir, PoolSize: 2}, tlspeer.StartSServer(t, certFile, keyFile, liveWait))
		for _, v := range []string{"1.2", "1.3"} {
			scenarios = append(scenarios, scenario{name: "openssl TLS" + v, rig: rs, verdict: "pass",
				run: func(t *testing.T) (output.Connection, error) {
					cmd := exec.Command("openssl", "s_client", "-connect", rs.addr, "-servername", "localhost",
						"-CAfile", certFile, "-verify_return_error", "-ign_eof", "-tls"+strings.ReplaceAll(v, ".", "_"))
					cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
					out, err := cmd.CombinedOutput()
					if err == nil && (!strings.Contains(string(out), "Verify return code: 0 (ok)") || !strings.Contains(string(out), "</HTML>")) {
						err = fmt.Errorf("no page from s_server:\n%s", out)
					}
					var conn output.Connection
					select {
					case conn = <-rs.conns:
					case <-time.After(liveWait):
						t.Fatal("no connection line")
					}
					return conn, err
				},
				saw: []string{"client_hello sni=localhost", "server_hello version=TLS" + v, "established TLS" + v}})
		}
		t.Cleanup(func() {
			if errs := messages(rs.logs, zapcore.ErrorLevel); len(errs) > 0 {
				t.Errorf("errors behind openssl:\n%s", strings.Join(errs, "\n"))
			}
		})
	} else {
		t.Log("openssl not installed: only crypto/tls peers")
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			conn, err := sc.run(t)
			if err != nil {
				t.Error(err)
			}
			if conn.Verdict != sc.verdict || conn.Rule != sc.rule {
				t.Errorf("connection %+v, want %s by %q", conn, sc.verdict, sc.rule)
			}
			var lines []string
			for _, e := range sc.rig.logs.All() {
				if fmt.Sprint(e.ContextMap()["flow"]) == fmt.Sprint(conn.Flow.ID) {
					lines = append(lines, e.Message)
				}
			}
			all := strings.Join(lines, "\n")
			for _, want := range sc.saw {
				if !strings.Contains(all, want) {
					t.Errorf("the rules logged no %q for the connection:\n%s", want, all)
				}
			}
		})
	}
	if errs := messages(r.logs, zapcore.ErrorLevel); len(errs) > 0 {
		t.Errorf("errors:\n%s", strings.Join(errs, "\n"))
	}
}
