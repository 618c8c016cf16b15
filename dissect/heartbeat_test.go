package dissect

import (
	"slices"
	"testing"
)

// recHeartbeat builds the fragment of a heartbeat record.
func recHeartbeat(typ uint8, payloadLength, payload, padding int) []byte {
	b := []byte{typ, byte(payloadLength >> 8), byte(payloadLength)}
	return append(append(b, recBytes(payload, 'A')...), recBytes(padding, 'B')...)
}

func TestHeartbeat(t *testing.T) {
	tests := []struct {
		name     string
		frag     []byte
		anomaly  string
		hb       Heartbeat
		overflow bool
	}{
		{"request", recHeartbeat(1, 20, 20, 16), "", Heartbeat{Type: 1, PayloadLength: 20, PaddingLength: 16}, false},
		{"response", recHeartbeat(2, 20, 20, 30), "", Heartbeat{Type: 2, PayloadLength: 20, PaddingLength: 30}, false},
		{"request with 15 bytes of padding", recHeartbeat(1, 20, 20, 15), AnomalyHeartbeatOverflow, Heartbeat{Type: 1, PayloadLength: 20, PaddingLength: 15, Overflow: true}, true},
		// zeek/heartbleed.pcap: payload_length 16365 in a 16368-byte
		// record. payload_length + 3 == record length, so a "+3" check
		// passes it; the padding it swallows gives it away.
		{"heartbleed.pcap", recHeartbeat(1, 16365, 16349, 16), AnomalyHeartbeatOverflow, Heartbeat{Type: 1, PayloadLength: 16365, PaddingLength: 0, Overflow: true}, true},
		// The classic probe: 18 03 0x 00 03 01 40 00.
		{"3-byte probe", []byte{1, 0x40, 0x00}, AnomalyHeartbeatOverflow, Heartbeat{Type: 1, PayloadLength: 16384, PaddingLength: -16384, Overflow: true}, true},
		{"response short of padding", recHeartbeat(2, 20, 20, 3), AnomalyHeartbeatPaddingTooShort, Heartbeat{Type: 2, PayloadLength: 20, PaddingLength: 3}, false},
		{"response past the record", []byte{2, 0, 100, 1, 2}, AnomalyHeartbeatPaddingTooShort, Heartbeat{Type: 2, PayloadLength: 100, PaddingLength: -98}, false},
		{"unknown type", recHeartbeat(3, 20, 20, 16), AnomalyInvalidHeartbeatType, Heartbeat{Type: 3, PayloadLength: 20, PaddingLength: 16}, false},
		{"type 0", recHeartbeat(0, 0, 0, 16), AnomalyInvalidHeartbeatType, Heartbeat{Type: 0, PaddingLength: 16}, false},
		{"two bytes", []byte{1, 0}, AnomalyInvalidHeartbeatLength, Heartbeat{Type: 1}, false},
		{"empty", nil, AnomalyInvalidHeartbeatLength, Heartbeat{}, false},
	}
	for _, tt := range tests {
		// Through a Conn, as a cleartext record.
		c := NewConn(Limits{})
		units, _, err := recUnits(t, c, Up, recRecord(TypeHeartbeat, VersionTLS12, tt.frag))
		if err != nil || len(units) != 1 {
			t.Fatalf("%s: %v", tt.name, err)
		}
		u := units[0]
		if u.Heartbeat != tt.hb || u.Heartbeat.Overflow != tt.overflow || u.Encrypted {
			t.Errorf("%s: %+v, want %+v", tt.name, u.Heartbeat, tt.hb)
		}
		var want []string
		if tt.anomaly != "" {
			want = []string{tt.anomaly}
		}
		if got := recAnomalyNames(units); !slices.Equal(got, want) {
			t.Errorf("%s: anomalies %q, want %q", tt.name, got, want)
		}
	}
}

func TestHeartbeatTypeName(t *testing.T) {
	for typ, name := range map[uint8]string{1: "request", 2: "response", 7: "unknown(7)"} {
		if got := (Heartbeat{Type: typ}).TypeName(); got != name {
			t.Errorf("%d: %q", typ, got)
		}
	}
}

// zeek/heartbleed.pcap: heartbeat_overflow on the 16368-byte request sent
// in place of the ClientKeyExchange.
func TestRecordCaptureHeartbleed(t *testing.T) {
	for _, name := range []string{"zeek/heartbleed.pcap", "zeek/heartbleed-success.pcap"} {
		var hbs []Unit
		_, found, _ := recRunCapture(t, recCapture{name: name}, func(_ int, p *recPump) {
			p.hook = func(dir Direction, u Unit) {
				if u.Kind == UnitRecord && u.Header.Type == TypeHeartbeat {
					u.Anomalies = slices.Clone(u.Anomalies)
					hbs = append(hbs, u)
				}
			}
		})
		if !slices.Equal(found, []string{AnomalyHeartbeatOverflow}) {
			t.Fatalf("%s: anomalies %q", name, found)
		}
		req := hbs[0]
		if req.Header.Length != 16368 || req.Encrypted || req.Heartbeat.Type != HeartbeatRequest || req.Heartbeat.PayloadLength != 16365 || !req.Heartbeat.Overflow {
			t.Fatalf("%s: request %+v %+v", name, req.Header, req.Heartbeat)
		}
		if len(req.Anomalies) != 1 || req.Anomalies[0].Direction != Up {
			t.Fatalf("%s: request anomalies %v", name, req.Anomalies)
		}
		if name == "zeek/heartbleed-success.pcap" {
			// The leaking response is well formed: 16365 + 3 + 16 = 16384.
			resp := hbs[1]
			if len(hbs) != 2 || resp.Header.Length != 16384 || resp.Heartbeat.Type != HeartbeatResponse || resp.Heartbeat.PaddingLength != 16 || len(resp.Anomalies) != 0 {
				t.Fatalf("response %+v %+v %v", resp.Header, resp.Heartbeat, resp.Anomalies)
			}
		} else if len(hbs) != 1 {
			t.Fatalf("%d heartbeats", len(hbs))
		}
	}
}

// zeek/heartbleed-encrypted.pcap: a heartbeat record after the switch to
// encryption stays a heartbeat record, encrypted and undecoded.
func TestRecordCaptureEncryptedHeartbeat(t *testing.T) {
	var hbs []Unit
	_, found, _ := recRunCapture(t, recCapture{name: "zeek/heartbleed-encrypted.pcap"}, func(_ int, p *recPump) {
		p.hook = func(dir Direction, u Unit) {
			if u.Kind == UnitRecord && u.Header.Type == TypeHeartbeat {
				hbs = append(hbs, u)
			}
		}
	})
	if len(found) != 0 {
		t.Fatalf("anomalies %q", found)
	}
	if len(hbs) != 1 || !hbs[0].Encrypted || hbs[0].Header.Length != 86 || hbs[0].Heartbeat != (Heartbeat{}) || len(hbs[0].Fragment) != 86 {
		t.Fatalf("%+v", hbs)
	}
}
