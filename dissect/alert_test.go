package dissect

import (
	"slices"
	"testing"
)

func TestAlerts(t *testing.T) {
	tests := []struct {
		name      string
		frag      []byte
		alerts    []Alert
		anomalies []string
	}{
		{"one", []byte{2, 40}, []Alert{{2, 40}}, nil},
		{"two", []byte{1, 0, 2, 10}, []Alert{{1, 0}, {2, 10}}, nil},
		{"four", []byte{1, 0, 1, 0, 1, 0, 1, 0}, []Alert{{1, 0}, {1, 0}, {1, 0}, {1, 0}}, nil},
		{"five", []byte{1, 90, 1, 90, 1, 90, 1, 90, 1, 90}, []Alert{{1, 90}, {1, 90}, {1, 90}, {1, 90}}, []string{AnomalyTooManyAlertsInRecord}},
		{"odd length", []byte{2, 40, 2}, []Alert{{2, 40}}, []string{AnomalyInvalidAlertLength}},
		{"empty", nil, nil, []string{AnomalyInvalidAlertLength}},
		{"one byte", []byte{2}, nil, []string{AnomalyInvalidAlertLength}},
		{"level 3", []byte{3, 40}, []Alert{{3, 40}}, []string{AnomalyInvalidAlertLevel}},
	}
	for _, tt := range tests {
		c := NewConn(Limits{})
		units, _, err := recUnits(t, c, Down, recRecord(TypeAlert, VersionTLS12, tt.frag))
		if err != nil || len(units) != 1 {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if !slices.Equal(units[0].Alerts, tt.alerts) {
			t.Errorf("%s: alerts %v, want %v", tt.name, units[0].Alerts, tt.alerts)
		}
		if got := recAnomalyNames(units); !slices.Equal(got, tt.anomalies) {
			t.Errorf("%s: anomalies %q, want %q", tt.name, got, tt.anomalies)
		}
	}
}

func TestAlertNames(t *testing.T) {
	for a, want := range map[Alert]string{
		{2, 40}:  "fatal handshake_failure",
		{1, 0}:   "warning close_notify",
		{2, 121}: "fatal ech_required",
		{1, 86}:  "warning inappropriate_fallback",
		{9, 200}: "unknown(9) unknown(200)",
	} {
		if got := a.String(); got != want {
			t.Errorf("%v: %q, want %q", [2]uint8{a.Level, a.Description}, got, want)
		}
	}
}

func TestChangeCipherSpec(t *testing.T) {
	for _, tt := range []struct {
		frag  []byte
		valid bool
	}{
		{[]byte{1}, true}, {[]byte{0}, false}, {[]byte{2}, false}, {[]byte{1, 1}, false}, {nil, false},
	} {
		c := NewConn(Limits{})
		units, _, _ := recUnits(t, c, Up, recRecord(TypeChangeCipherSpec, VersionTLS12, tt.frag))
		var want []string
		if !tt.valid {
			want = []string{AnomalyInvalidChangeCipherSpec}
		}
		if got := recAnomalyNames(units); !slices.Equal(got, want) {
			t.Errorf("% x: anomalies %q, want %q", tt.frag, got, want)
		}
	}
}

// zeek/tls-1.2-handshake-failure.pcap: the server's fatal alert.
func TestRecordCaptureAlert(t *testing.T) {
	var alerts []Alert
	_, found, _ := recRunCapture(t, recCapture{name: "zeek/tls-1.2-handshake-failure.pcap"}, func(_ int, p *recPump) {
		p.hook = func(dir Direction, u Unit) {
			if u.Kind == UnitRecord && u.Header.Type == TypeAlert && dir == Down {
				alerts = append(alerts, u.Alerts...)
			}
		}
	})
	if len(found) != 0 || !slices.Equal(alerts, []Alert{{AlertFatal, 40}}) {
		t.Fatalf("anomalies %q, alerts %v", found, alerts)
	}
}
