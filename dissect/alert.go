package dissect

import (
	"fmt"
	"strconv"
)

// Alert levels (RFC 5246, section 7.2).
const (
	AlertWarning uint8 = 1
	AlertFatal   uint8 = 2
)

// MaxAlertsPerRecord is how many alerts of one record are decoded. Every
// stack sends one alert per record and TLS 1.3 requires it; a record packed
// with alerts is an anomaly (an alert flood such as CVE-2016-8610), and
// decoding a handful keeps the cost of such a record constant.
const MaxAlertsPerRecord = 4

// alertLen is the level and description of an alert.
const alertLen = 2

// Alert is one alert message.
type Alert struct {
	Level, Description uint8
}

// LevelName returns "warning", "fatal" or "unknown(N)".
func (a Alert) LevelName() string {
	switch a.Level {
	case AlertWarning:
		return "warning"
	case AlertFatal:
		return "fatal"
	}
	return "unknown(" + strconv.Itoa(int(a.Level)) + ")"
}

// alertNames are the AlertDescription names of the IANA TLS registry.
var alertNames = map[uint8]string{
	0:   "close_notify",
	10:  "unexpected_message",
	20:  "bad_record_mac",
	21:  "decryption_failed",
	22:  "record_overflow",
	30:  "decompression_failure",
	40:  "handshake_failure",
	41:  "no_certificate",
	42:  "bad_certificate",
	43:  "unsupported_certificate",
	44:  "certificate_revoked",
	45:  "certificate_expired",
	46:  "certificate_unknown",
	47:  "illegal_parameter",
	48:  "unknown_ca",
	49:  "access_denied",
	50:  "decode_error",
	51:  "decrypt_error",
	60:  "export_restriction",
	70:  "protocol_version",
	71:  "insufficient_security",
	80:  "internal_error",
	86:  "inappropriate_fallback",
	90:  "user_canceled",
	100: "no_renegotiation",
	109: "missing_extension",
	110: "unsupported_extension",
	111: "certificate_unobtainable",
	112: "unrecognized_name",
	113: "bad_certificate_status_response",
	114: "bad_certificate_hash_value",
	115: "unknown_psk_identity",
	116: "certificate_required",
	120: "no_application_protocol",
	121: "ech_required",
}

// DescriptionName returns the alert's name ("handshake_failure", ...) or
// "unknown(N)".
func (a Alert) DescriptionName() string {
	if n, ok := alertNames[a.Description]; ok {
		return n
	}
	return "unknown(" + strconv.Itoa(int(a.Description)) + ")"
}

func (a Alert) String() string { return a.LevelName() + " " + a.DescriptionName() }

// parseAlerts decodes up to len(dst) alerts of a cleartext alert record
// into dst and calls anomaly for each problem: a length that is not a
// whole number of alerts, more than len(dst) alerts, an unknown level.
func parseAlerts(fragment []byte, dst []Alert, anomaly func(name, detail string)) []Alert {
	if len(fragment) == 0 || len(fragment)%alertLen != 0 {
		anomaly(AnomalyInvalidAlertLength, fmt.Sprintf("alert record of %d bytes", len(fragment)))
	}
	if n := len(fragment) / alertLen; n > len(dst) {
		anomaly(AnomalyTooManyAlertsInRecord, fmt.Sprintf("%d alerts in one record, at most %d decoded", n, len(dst)))
	}
	out := dst[:0]
	for len(fragment) >= alertLen && len(out) < len(dst) {
		a := Alert{Level: fragment[0], Description: fragment[1]}
		if a.Level != AlertWarning && a.Level != AlertFatal {
			anomaly(AnomalyInvalidAlertLevel, fmt.Sprintf("level %d (%s)", a.Level, a.DescriptionName()))
		}
		out = append(out, a)
		fragment = fragment[alertLen:]
	}
	return out
}

// validChangeCipherSpec reports whether a change_cipher_spec fragment is
// the single byte 1, the only one RFC 5246 (section 7.1) and RFC 8446
// (section 5) allow.
func validChangeCipherSpec(fragment []byte) bool {
	return len(fragment) == 1 && fragment[0] == 1
}
