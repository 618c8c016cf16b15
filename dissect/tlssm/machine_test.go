package tlssm

import (
	"bytes"
	"strings"
	"testing"

	"github.com/hakaproxy/haka-proxy/dissect"
)

// The handshakes the machine follows, on crafted sessions: the states it
// goes through, and nothing flagged.

func sslv2Record(msgType uint8, body []byte) []byte {
	n := 1 + len(body)
	return append([]byte{0x80 | byte(n>>8), byte(n), msgType}, body...)
}

// sslv2ClientHello is an SSLv2-format CLIENT-HELLO offering version v.
func sslv2ClientHello(v uint16) []byte {
	specs := []byte{0x01, 0x00, 0x80, 0x00, 0x00, 0x2f, 0x00, 0xc0, 0x2f}
	b := []byte{byte(v >> 8), byte(v), 0, byte(len(specs)), 0, 0, 0, 16}
	b = append(b, specs...)
	return sslv2Record(dissect.SSLv2ClientHello, append(b, random(16)...))
}

func TestHandshakes(t *testing.T) {
	full := []string{StateClientHello, StateServerHello, StateServerFlight, StateClientFlight, StateServerFinished, StateEstablished}
	resumed := []string{StateClientHello, StateServerHello, StateServerFlight, StateClientFinished, StateEstablished}
	tls13 := []string{StateClientHello, StateServerHello, StateEstablished}
	sid := random(32)
	for _, tc := range []struct {
		name   string
		build  func(c *conv)
		states []string
		// has lists event lines that must appear.
		has []string
	}{
		{"TLS 1.2 full", func(c *conv) {
			established12(c)
			c.up(opaque(dissect.TypeAlert, 26))
		}, full, []string{"up client_hello version=TLS1.2 sni=haka.test", "down certificate certificates=1", "-- established", "up alert encrypted"}},
		{"TLS 1.2 client certificate", func(c *conv) {
			c.up(hs(clientHello(helloOpts{})))
			c.down(hs(serverHello(shOpts{}), certificate(2), ecdheKeyExchange(), certificateRequest(), serverHelloDone()))
			c.up(hs(certificate(1), ecdheClientKeyExchange(), certificateVerify()), ccs(), finished())
			c.down(ccs(), finished())
			c.up(appData(20))
		}, full, []string{"down certificate certificates=2", "up certificate certificates=1", "up handshake certificate_verify", "down handshake certificate_request"}},
		{"TLS 1.2 client without a certificate", func(c *conv) {
			c.up(hs(clientHello(helloOpts{})))
			c.down(hs(serverHello(shOpts{}), certificate(1), ecdheKeyExchange(), certificateRequest(), serverHelloDone()))
			c.up(hs(certificate(0), ecdheClientKeyExchange()), ccs(), finished())
			c.down(ccs(), finished())
		}, full, []string{"up certificate certificates=0"}},
		{"TLS 1.2 with a new ticket, false start", func(c *conv) {
			c.up(hs(clientHello(helloOpts{ticket: []byte{}})))
			c.down(hs(serverHello(shOpts{ticketExt: true}), certificate(1), ecdheKeyExchange(), serverHelloDone()))
			c.up(hs(ecdheClientKeyExchange()), ccs(), finished(), appData(200))
			c.down(hs(newSessionTicket()), ccs(), finished())
		}, full, []string{"down handshake new_session_ticket"}},
		{"TLS 1.2 resumed by session id", func(c *conv) {
			c.up(hs(clientHello(helloOpts{sessionID: sid})))
			c.down(hs(serverHello(shOpts{sessionID: sid})), ccs(), finished())
			c.up(ccs(), finished(), appData(10))
			c.down(appData(10))
		}, resumed, nil},
		{"TLS 1.2 resumed by ticket, with a new ticket", func(c *conv) {
			c.up(hs(clientHello(helloOpts{ticket: random(100)})))
			c.down(hs(serverHello(shOpts{ticketExt: true}), newSessionTicket()), ccs(), finished())
			c.up(ccs(), finished())
		}, resumed, []string{"down handshake new_session_ticket"}},
		{"TLS 1.2 renegotiation, opaque", func(c *conv) {
			established12(c)
			c.up(opaque(dissect.TypeHandshake, 300))
			c.down(opaque(dissect.TypeHandshake, 3000))
			c.up(opaque(dissect.TypeChangeCipherSpec, 25), opaque(dissect.TypeHandshake, 40))
			c.down(opaque(dissect.TypeChangeCipherSpec, 25), opaque(dissect.TypeHandshake, 40))
			c.up(appData(10))
		}, full, []string{"up change_cipher_spec"}},
		{"TLS 1.1", func(c *conv) {
			c.up(recV(dissect.TypeHandshake, dissect.VersionTLS10, clientHello(helloOpts{version: dissect.VersionTLS11})))
			c.down(recV(dissect.TypeHandshake, dissect.VersionTLS11, bytes.Join([][]byte{serverHello(shOpts{version: dissect.VersionTLS11, suite: 0x002f}), certificate(1), serverHelloDone()}, nil)))
			c.up(recV(dissect.TypeHandshake, dissect.VersionTLS11, msg(dissect.MsgClientKeyExchange, append([]byte{0, 128}, random(128)...))),
				recV(dissect.TypeChangeCipherSpec, dissect.VersionTLS11, []byte{1}), recV(dissect.TypeHandshake, dissect.VersionTLS11, random(64)))
			c.down(recV(dissect.TypeChangeCipherSpec, dissect.VersionTLS11, []byte{1}), recV(dissect.TypeHandshake, dissect.VersionTLS11, random(64)))
		}, full, []string{"down server_hello version=TLS1.1 cipher=0x002f"}},
		{"SSL 3.0", func(c *conv) {
			v := dissect.VersionSSL30
			c.up(recV(dissect.TypeHandshake, v, clientHello(helloOpts{version: v, suites: []uint16{0x0005}})))
			c.down(recV(dissect.TypeHandshake, v, bytes.Join([][]byte{serverHello(shOpts{version: v, suite: 0x0005}), certificate(1), serverHelloDone()}, nil)))
			c.up(recV(dissect.TypeHandshake, v, msg(dissect.MsgClientKeyExchange, random(128))),
				recV(dissect.TypeChangeCipherSpec, v, []byte{1}), recV(dissect.TypeHandshake, v, random(56)))
			c.down(recV(dissect.TypeChangeCipherSpec, v, []byte{1}), recV(dissect.TypeHandshake, v, random(56)))
			c.up(recV(dissect.TypeApplicationData, v, random(40)))
		}, full, []string{"down server_hello version=SSL3.0"}},
		{"TLS 1.3", func(c *conv) {
			c.up(hs(clientHello(helloOpts{tls13: true, sni: "haka.test"})))
			c.down(hs(serverHello(shOpts{tls13: true})), ccs(), appData(30), appData(900), appData(300), appData(60))
			c.up(ccs(), appData(60), appData(200))
			c.down(appData(250), appData(1000))
			c.up(opaque(dissect.TypeApplicationData, 19))
		}, tls13, []string{"down server_hello version=TLS1.3 cipher=0x1301", "-- established", "up change_cipher_spec", "down change_cipher_spec"}},
		{"TLS 1.3 compatibility CCS right after the ClientHello", func(c *conv) {
			c.up(hs(clientHello(helloOpts{tls13: true})), ccs())
			c.down(hs(serverHello(shOpts{tls13: true})), appData(900))
			c.up(appData(60))
		}, tls13, nil},
		{"TLS 1.3 HelloRetryRequest", func(c *conv) {
			c.up(hs(clientHello(helloOpts{tls13: true})))
			c.down(hs(serverHello(shOpts{retry: true})), ccs())
			c.up(ccs(), hs(clientHello(helloOpts{tls13: true})))
			c.down(hs(serverHello(shOpts{tls13: true})), appData(900))
			c.up(appData(60))
		}, []string{StateClientHello, StateServerHello, StateHelloRetry, StateServerHello, StateEstablished},
			[]string{"down server_hello version=TLS1.3 cipher=0x1301 retry"}},
		{"TLS 1.3 early data", func(c *conv) {
			c.up(hs(clientHello(helloOpts{tls13: true, earlyData: true})), ccs(), appData(500), appData(500))
			c.down(hs(serverHello(shOpts{tls13: true})), appData(900))
			c.up(appData(40), appData(60))
		}, tls13, nil},
		{"SSLv2-compatible ClientHello, TLS 1.0 answer", func(c *conv) {
			c.up(sslv2ClientHello(dissect.VersionTLS10))
			c.down(recV(dissect.TypeHandshake, dissect.VersionTLS10, bytes.Join([][]byte{serverHello(shOpts{version: dissect.VersionTLS10, suite: 0x002f}), certificate(1), serverHelloDone()}, nil)))
			c.up(recV(dissect.TypeHandshake, dissect.VersionTLS10, msg(dissect.MsgClientKeyExchange, append([]byte{0, 128}, random(128)...))),
				recV(dissect.TypeChangeCipherSpec, dissect.VersionTLS10, []byte{1}), recV(dissect.TypeHandshake, dissect.VersionTLS10, random(48)))
			c.down(recV(dissect.TypeChangeCipherSpec, dissect.VersionTLS10, []byte{1}), recV(dissect.TypeHandshake, dissect.VersionTLS10, random(48)))
		}, full, []string{"up client_hello version=TLS1.0 ciphers=2 extensions=0 sslv2"}},
		{"SSLv2", func(c *conv) {
			c.up(sslv2ClientHello(dissect.VersionSSL20))
			// SERVER-HELLO: no session hit, X.509, version 2, a
			// 16-byte certificate, one cipher spec, a 16-byte connection id.
			sh := []byte{0, 1, 0, 2, 0, 16, 0, 3, 0, 16}
			sh = append(append(append(sh, random(16)...), 1, 0, 0x80), random(16)...)
			c.down(sslv2Record(dissect.SSLv2ServerHello, sh))
			c.up(sslv2Record(dissect.SSLv2ClientMasterKey, append([]byte{1, 0, 0x80, 0, 0, 0, 16, 0, 0}, random(16)...)))
			c.down(append([]byte{0x80, 33}, random(33)...))
			c.up(append([]byte{0x80, 33}, random(33)...))
		}, []string{StateClientHello, StateServerHello, StateSSLv2}, []string{"sslv2", "-- established"}},
		{"alerts and a close", func(c *conv) {
			established12(c)
			c.up(opaque(dissect.TypeAlert, 26))
			c.down(opaque(dissect.TypeAlert, 26))
		}, full, []string{"up alert encrypted", "down alert encrypted"}},
		{"a handshake failure", func(c *conv) {
			c.up(hs(clientHello(helloOpts{})))
			c.down(rec(dissect.TypeAlert, []byte{2, 40}))
		}, []string{StateClientHello, StateServerHello}, []string{"down alert fatal handshake_failure"}},
		{"a ClientHello split over records", func(c *conv) {
			ch := clientHello(helloOpts{sni: "split.example"})
			c.up(rec(dissect.TypeHandshake, ch[:3]))
			c.up(rec(dissect.TypeHandshake, ch[3:40]), rec(dissect.TypeHandshake, ch[40:]))
			c.down(hs(serverHello(shOpts{}), certificate(1), ecdheKeyExchange(), serverHelloDone()))
		}, []string{StateClientHello, StateServerHello, StateServerFlight, StateClientFlight}, []string{"sni=split.example"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newConv()
			tc.build(c)
			for _, split := range []func(int) []int{nil, byteSplit} {
				r := runConv(t, c, runOpts{split: split})
				wantStates(t, r, tc.states...)
				wantAnomalies(t, r)
				wantPass(t, r, c)
				for _, h := range tc.has {
					if !r.has(h) {
						t.Errorf("no event with %q:\n%s", h, strings.Join(r.rec.lines, "\n"))
					}
				}
			}
		})
	}
}

// What the RFCs forbid fails the machine: an unexpected_message anomaly or
// a parse error, a drop, and not one byte of the offending record
// forwarded.
func TestViolations(t *testing.T) {
	for _, tc := range []struct {
		name  string
		build func(c *conv) (dissect.Direction, int64)
		// reason is part of the decision's reason.
		reason string
	}{
		{"ServerHello from the client", func(c *conv) (dissect.Direction, int64) {
			return dissect.Up, c.up(hs(serverHello(shOpts{})))
		}, "unexpected message: server_hello from the client in state client_hello"},
		{"the server speaks first", func(c *conv) (dissect.Direction, int64) {
			return dissect.Down, c.down(hs(serverHello(shOpts{})))
		}, "unexpected message: server_hello from the server in state client_hello"},
		{"application data before any handshake", func(c *conv) (dissect.Direction, int64) {
			return dissect.Up, c.up(appData(100))
		}, "unexpected message: application_data record from the client in state client_hello"},
		{"a heartbeat before any handshake", func(c *conv) (dissect.Direction, int64) {
			return dissect.Up, c.up(cleartextHeartbeat(1, 16, 16, 16))
		}, "unexpected message: heartbeat record"},
		{"a Certificate before the ServerHello", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{})))
			return dissect.Down, c.down(hs(certificate(1)))
		}, "unexpected message: certificate from the server in state server_hello"},
		{"application data before the ServerHello without early_data", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{tls13: true})))
			return dissect.Up, c.up(appData(100))
		}, "application_data record from the client in state server_hello"},
		{"a second ClientHello after a TLS 1.2 ServerHello", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{})))
			c.down(hs(serverHello(shOpts{})))
			return dissect.Up, c.up(hs(clientHello(helloOpts{})))
		}, "client_hello from the client in state server_flight"},
		{"two ClientHellos", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{})))
			return dissect.Up, c.up(hs(clientHello(helloOpts{})))
		}, "client_hello from the client in state server_hello"},
		{"an early ChangeCipherSpec from the server (CVE-2014-0224)", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{})))
			c.down(hs(serverHello(shOpts{})))
			return dissect.Down, c.down(ccs())
		}, "change_cipher_spec record from the server in state server_flight"},
		{"a ChangeCipherSpec before the ClientKeyExchange", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{})))
			c.down(hs(serverHello(shOpts{}), certificate(1), ecdheKeyExchange(), serverHelloDone()))
			return dissect.Up, c.up(ccs())
		}, "change_cipher_spec record from the client in state client_flight"},
		{"a cleartext Finished", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{})))
			c.down(hs(serverHello(shOpts{}), certificate(1), ecdheKeyExchange(), serverHelloDone()))
			return dissect.Up, c.up(hs(ecdheClientKeyExchange(), msg(dissect.MsgFinished, random(12))))
		}, "finished from the client in state client_flight"},
		{"the server flight out of order", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{})))
			return dissect.Down, c.down(hs(serverHello(shOpts{}), ecdheKeyExchange(), certificate(1)))
		}, "certificate from the server in state server_flight"},
		{"a ServerKeyExchange for static RSA (FREAK)", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{})))
			return dissect.Down, c.down(hs(serverHello(shOpts{suite: 0x002f}), certificate(1), ecdheKeyExchange()))
		}, "server_key_exchange from the server in state server_flight"},
		{"a CertificateVerify without a certificate", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{})))
			c.down(hs(serverHello(shOpts{}), certificate(1), ecdheKeyExchange(), serverHelloDone()))
			return dissect.Up, c.up(hs(ecdheClientKeyExchange(), certificateVerify()))
		}, "certificate_verify from the client in state client_flight"},
		{"an unassigned handshake type", func(c *conv) (dissect.Direction, int64) {
			return dissect.Up, c.up(hs(msg(99, random(10))))
		}, "unknown_99 from the client"},
		{"a second HelloRetryRequest", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{tls13: true})))
			c.down(hs(serverHello(shOpts{retry: true})))
			c.up(hs(clientHello(helloOpts{tls13: true})))
			return dissect.Down, c.down(hs(serverHello(shOpts{retry: true})))
		}, "server_hello from the server in state server_hello"},
		{"a second compatibility ChangeCipherSpec", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{tls13: true})), ccs())
			c.down(hs(serverHello(shOpts{tls13: true})))
			return dissect.Up, c.up(ccs())
		}, "change_cipher_spec record from the client in state established"},
		{"a ChangeCipherSpec of two bytes", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{tls13: true})))
			return dissect.Up, c.up(rec(dissect.TypeChangeCipherSpec, []byte{1, 1}))
		}, "parse error: change_cipher_spec: malformed"},
		{"a malformed ClientHello", func(c *conv) (dissect.Direction, int64) {
			ch := clientHello(helloOpts{})
			ch[4+2+32] = 200 // session_id length past the end
			return dissect.Up, c.up(hs(ch))
		}, "parse error: client_hello: malformed session_id"},
		{"a zero-length handshake record", func(c *conv) (dissect.Direction, int64) {
			return dissect.Up, c.up(rec(dissect.TypeHandshake, nil))
		}, "parse error: handshake record of 0 bytes"},
		{"HTTP", func(c *conv) (dissect.Direction, int64) {
			return dissect.Up, c.up([]byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"))
		}, `parse error: not TLS: the client's first bytes "GET " are not a TLS or SSLv2 record (content type 71)`},
		{"SSH", func(c *conv) (dissect.Direction, int64) {
			return dissect.Up, c.up([]byte("SSH-2.0-OpenSSH_9.2p1\r\n"))
		}, `parse error: not TLS: the client's first bytes "SSH-" are not a TLS or SSLv2 record (content type 83)`},
		{"an SSH server speaking first", func(c *conv) (dissect.Direction, int64) {
			return dissect.Down, c.down([]byte("SSH-2.0-OpenSSH_9.2p1\r\n"))
		}, `parse error: not TLS: the server's first bytes "SSH-" are not a TLS or SSLv2 record (content type 83)`},
		{"a handshake record of a version no TLS has", func(c *conv) (dissect.Direction, int64) {
			return dissect.Up, c.up([]byte{22, 0, 0, 0, 1, 1})
		}, `parse error: not TLS: the client's first bytes "\x16\x00\x00" are not a TLS or SSLv2 record (version 0x0000 in a handshake record)`},
		{"a server's bad first record after the client's hello", func(c *conv) (dissect.Direction, int64) {
			c.up(hs(clientHello(helloOpts{})))
			return dissect.Down, c.down([]byte{0, 0, 0, 0, 2, 0, 40})
		}, "parse error: down: invalid_record_type: content type 0"},
		{"garbage after a valid handshake", func(c *conv) (dissect.Direction, int64) {
			established12(c)
			return dissect.Down, c.down([]byte("HTTP/1.1 200 OK\r\n"))
		}, "parse error: down: invalid_record_type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newConv()
			d, at := tc.build(c)
			// More bytes after the offending ones change nothing.
			c.send(d, appData(10))
			for _, split := range []func(int) []int{nil, byteSplit} {
				r := runConv(t, c, runOpts{split: split})
				wantDrop(t, r, tc.reason, d, at)
				if r.p.fwd[d] != at {
					t.Errorf("%s: %d bytes forwarded, want the %d before the offending record", d, r.p.fwd[d], at)
				}
				if r.p.decision.Rule != RuleFail {
					t.Errorf("rule %q, want %q", r.p.decision.Rule, RuleFail)
				}
				if r.rec.s.State() != "fail" {
					t.Errorf("state %q, want fail", r.rec.s.State())
				}
			}
		})
	}
}
