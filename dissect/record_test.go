package dissect

import (
	"errors"
	"strings"
	"testing"
)

// recRecord builds a TLS record.
func recRecord(t ContentType, version uint16, frag []byte) []byte {
	b := []byte{byte(t), byte(version >> 8), byte(version), byte(len(frag) >> 8), byte(len(frag))}
	return append(b, frag...)
}

// recMsg builds a handshake message.
func recMsg(typ uint8, body []byte) []byte {
	n := len(body)
	return append([]byte{typ, byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

func recBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestContentTypeNames(t *testing.T) {
	want := map[ContentType]string{
		20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data", 24: "heartbeat",
		0: "unknown(0)", 19: "unknown(19)", 25: "unknown(25)", 255: "unknown(255)",
	}
	for ct, name := range want {
		if got := ct.String(); got != name {
			t.Errorf("ContentType(%d) = %q, want %q", ct, got, name)
		}
		if ct.Known() != (ct >= 20 && ct <= 24) {
			t.Errorf("ContentType(%d).Known() = %v", ct, ct.Known())
		}
	}
}

func TestCheckHeader(t *testing.T) {
	tests := []struct {
		name    string
		hdr     []byte
		anomaly string
		h       Header
	}{
		{"ssl3 handshake", []byte{22, 3, 0, 0, 4}, "", Header{TypeHandshake, VersionSSL30, 4}},
		{"tls1.0 first hello", []byte{22, 3, 1, 0x02, 0x00}, "", Header{TypeHandshake, VersionTLS10, 512}},
		{"tls1.2 alert", []byte{21, 3, 3, 0, 2}, "", Header{TypeAlert, VersionTLS12, 2}},
		{"ccs", []byte{20, 3, 3, 0, 1}, "", Header{TypeChangeCipherSpec, VersionTLS12, 1}},
		{"heartbeat", []byte{24, 3, 2, 0x3f, 0xf0}, "", Header{TypeHeartbeat, VersionTLS11, 16368}},
		{"appdata at the cap", []byte{23, 3, 3, 0x48, 0x00}, "", Header{TypeApplicationData, VersionTLS12, MaxRecordLength}},
		{"empty appdata", []byte{23, 3, 3, 0, 0}, "", Header{TypeApplicationData, VersionTLS12, 0}},
		{"type 0", []byte{0, 0, 0, 0, 2}, AnomalyInvalidRecordType, Header{}},
		{"type 19", []byte{19, 3, 3, 0, 2}, AnomalyInvalidRecordType, Header{}},
		{"type 25", []byte{25, 3, 3, 0, 2}, AnomalyInvalidRecordType, Header{}},
		{"ssh", []byte("SSH-2"), AnomalyInvalidRecordType, Header{}},
		{"version 3.4", []byte{22, 3, 4, 0, 2}, AnomalyInvalidRecordVersion, Header{}},
		{"version 2.0", []byte{22, 2, 0, 0, 2}, AnomalyInvalidRecordVersion, Header{}},
		{"version 0", []byte{22, 0, 0, 0, 2}, AnomalyInvalidRecordVersion, Header{}},
		{"version 0x0303 byte-swapped", []byte{22, 3, 0x33, 0, 2}, AnomalyInvalidRecordVersion, Header{}},
		{"over the cap", []byte{23, 3, 3, 0x48, 0x01}, AnomalyInvalidRecordLength, Header{}},
		{"max uint16", []byte{22, 3, 3, 0xff, 0xff}, AnomalyInvalidRecordLength, Header{}},
	}
	for _, tt := range tests {
		h, complete, name, detail := checkHeader(tt.hdr)
		if name != tt.anomaly {
			t.Errorf("%s: anomaly %q (%s), want %q", tt.name, name, detail, tt.anomaly)
			continue
		}
		if tt.anomaly != "" {
			if complete || detail == "" {
				t.Errorf("%s: complete %v, detail %q", tt.name, complete, detail)
			}
			continue
		}
		if !complete || h != tt.h {
			t.Errorf("%s: %+v complete %v, want %+v", tt.name, h, complete, tt.h)
		}
		// Every strict prefix of a valid header is accepted but incomplete.
		for i := range len(tt.hdr) {
			if _, complete, name, _ := checkHeader(tt.hdr[:i]); complete || name != "" {
				t.Errorf("%s: prefix of %d bytes: complete %v, anomaly %q", tt.name, i, complete, name)
			}
		}
	}
}

// A bad type is rejected on the first byte, a bad version on the third,
// without waiting for a whole header.
func TestCheckHeaderFailsEarly(t *testing.T) {
	if _, _, name, _ := checkHeader([]byte{'S'}); name != AnomalyInvalidRecordType {
		t.Errorf("one byte of SSH: %q", name)
	}
	if _, _, name, _ := checkHeader([]byte{22, 3}); name != "" {
		t.Errorf("two bytes of a handshake header: %q", name)
	}
	if _, _, name, _ := checkHeader([]byte{22, 3, 9}); name != AnomalyInvalidRecordVersion {
		t.Errorf("three bytes with version 3.9: %q", name)
	}
}

func TestRecordError(t *testing.T) {
	f := NewFramer(Down)
	_, _, err := f.Next([]byte{0, 0, 0, 0, 2, 0, 40})
	var re *RecordError
	if !errors.As(err, &re) {
		t.Fatalf("error %v is not a *RecordError", err)
	}
	if re.Anomaly.Name != AnomalyInvalidRecordType || re.Anomaly.Direction != Down || re.Offset != 0 {
		t.Fatalf("got %+v", re)
	}
	if msg := err.Error(); !strings.Contains(msg, "down: invalid_record_type: content type 0") || !strings.Contains(msg, "offset 0") {
		t.Fatalf("message %q", msg)
	}
	// The error sticks, whatever comes next.
	if _, _, err2 := f.Next(recRecord(TypeAlert, VersionTLS12, []byte{2, 40})); err2 != err {
		t.Fatalf("second call: %v", err2)
	}
}
