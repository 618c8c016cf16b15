package tlssm

// EventID names an event of the tls dissector. The numbering is internal;
// rules and users see the names.
type EventID uint8

// The events of the tls dissector, in the order of the contract table.
const (
	EvNewConnection EventID = iota
	EvClientHello
	EvServerHello
	EvCertificate
	EvHandshake
	EvChangeCipherSpec
	EvAlert
	EvHeartbeat
	EvEstablished
	EvRecord
	EvAnomaly
	EvParseError
	EvEndConnection
	NumEvents
)

// Field documents one field of an event's parameter table.
type Field struct {
	Name, Type, Doc string
}

// EventSpec is the contract of one event: its name, the name and fields of
// its second parameter (the first is always flow) and when it is raised.
type EventSpec struct {
	ID     EventID
	Name   string
	Param  string // "" when the event has no second parameter
	Fields []Field
	Raised string
}

// String returns the event's name.
func (e EventID) String() string {
	if e < NumEvents {
		return Events[e].Name
	}
	return "invalid"
}

// Events is the event contract of the tls dissector, indexed by EventID.
// Renaming a name or a field breaks users' rules: add, never rename.
var Events = [NumEvents]EventSpec{
	EvNewConnection: {EvNewConnection, "new_connection", "", nil,
		"a connection was accepted, before the upstream is dialled"},
	EvClientHello: {EvClientHello, "client_hello", "hello", []Field{
		{"version", "string", `legacy version of the hello, e.g. "TLS1.2"`},
		{"versions", "list of strings", "supported_versions extension, in order"},
		{"sni", "string", "server name (host_name entry of server_name)"},
		{"alpn", "list of strings", "application protocols offered"},
		{"ciphers", "list of numbers", "cipher suites, in order"},
		{"extensions", "list of {type=, data=}", "every extension in order, with its raw bytes"},
		{"groups", "list of numbers", "supported_groups"},
		{"sigalgs", "list of numbers", "signature_algorithms"},
		{"heartbeat", "bool", "the heartbeat extension is offered"},
		{"ech", "bool", "an encrypted_client_hello extension is present"},
		{"sslv2", "bool", "the hello came in SSLv2 record format"},
		{"ja3", "string", "JA3 string"},
		{"ja3_hash", "string", "JA3 MD5, hex"},
		{"ja4", "string", "JA4 fingerprint"},
		{"length", "number", "length of the handshake message body"},
	}, "a complete ClientHello, before its bytes are forwarded"},
	EvServerHello: {EvServerHello, "server_hello", "hello", []Field{
		{"version", "string", "negotiated version (supported_versions when present)"},
		{"cipher", "number", "selected cipher suite"},
		{"extensions", "list of {type=, data=}", "every extension in order, with its raw bytes"},
		{"retry", "bool", "this is a HelloRetryRequest"},
		{"ja3s", "string", "JA3S string"},
		{"ja3s_hash", "string", "JA3S MD5, hex"},
	}, "a complete ServerHello"},
	EvCertificate: {EvCertificate, "certificate", "cert", []Field{
		{"chain", "list of {subject=, issuer=, serial=, sans=, not_before=, not_after=, sha256=, error=}", "the certificates, leaf first; error is set when crypto/x509 rejects one"},
	}, "a cleartext Certificate message"},
	EvHandshake: {EvHandshake, "handshake", "msg", []Field{
		{"type", "string", `message name, e.g. "client_key_exchange"`},
		{"length", "number", "length of the message body"},
		{"direction", "string", `"up" or "down"`},
	}, "every cleartext handshake message"},
	EvChangeCipherSpec: {EvChangeCipherSpec, "change_cipher_spec", "direction", nil,
		"a ChangeCipherSpec record; the parameter is the direction string"},
	EvAlert: {EvAlert, "alert", "alert", []Field{
		{"level", "string", `"warning" or "fatal" (cleartext only)`},
		{"description", "string", `alert name, e.g. "handshake_failure" (cleartext only)`},
		{"encrypted", "bool", "the alert is encrypted"},
		{"direction", "string", `"up" or "down"`},
	}, "an alert record"},
	EvHeartbeat: {EvHeartbeat, "heartbeat", "hb", []Field{
		{"direction", "string", `"up" or "down"`},
		{"record_length", "number", "length of the heartbeat record"},
		{"encrypted", "bool", "the record is encrypted"},
		{"type", "string", `"request" or "response" (cleartext only)`},
		{"payload_length", "number", "declared payload length (cleartext only)"},
		{"overflow", "bool", "cleartext request whose payload_length + 19 > record_length"},
		{"leak", "bool", "response longer than the outstanding request (encrypted: by record length; cleartext: by payload_length)"},
	}, "every heartbeat record, before it is forwarded"},
	EvEstablished: {EvEstablished, "established", "", nil,
		"both directions have switched to encrypted records"},
	EvRecord: {EvRecord, "record", "rec", []Field{
		{"type", "string", `content type name, e.g. "handshake"`},
		{"version", "string", `record version, e.g. "TLS1.2"`},
		{"length", "number", "record length"},
		{"direction", "string", `"up" or "down"`},
		{"encrypted", "bool", "the record was sent after its direction switched to encryption"},
	}, "every record header (only dispatched when hooked)"},
	EvAnomaly: {EvAnomaly, "anomaly", "a", []Field{
		{"name", "string", "stable anomaly name"},
		{"direction", "string", `"up" or "down"`},
		{"detail", "string", "human-readable detail"},
	}, "a named protocol anomaly"},
	EvParseError: {EvParseError, "parse_error", "err", []Field{
		{"message", "string", "what could not be parsed"},
		{"direction", "string", `"up" or "down"`},
	}, "malformed input; the machine then fails"},
	EvEndConnection: {EvEndConnection, "end_connection", "summary", []Field{
		{"bytes_up", "number", "bytes forwarded client to server"},
		{"bytes_down", "number", "bytes forwarded server to client"},
		{"duration", "number", "seconds"},
		{"verdict", "string", `"pass", "drop", "reset" or "bypass"`},
		{"reason", "string", "why the connection ended that way, when known"},
		{"rule", "string", "what decided the verdict, when something did"},
	}, "the connection closed"},
}

// FlowFields documents the flow object, the first parameter of every event.
var FlowFields = []Field{
	{"id", "number", "connection id"},
	{"src", "string", `client "ip:port"`},
	{"dst", "string", `destination "ip:port"`},
	{"src_ip", "string", "client address"},
	{"src_port", "number", "client port"},
	{"dst_ip", "string", "destination address"},
	{"dst_port", "number", "destination port"},
	{"sni", "string", "server name, once the ClientHello was seen"},
	{"alpn", "string", "protocol selected by the server, or offered first"},
	{"version", "string", "negotiated version, once known"},
	{"ja3", "string", "JA3 hash of the ClientHello"},
	{"ja4", "string", "JA4 of the ClientHello"},
	{"state", "string", "current state of the TLS machine"},
	{"data", "table", "the rules' own per-connection state"},
}

// AnomalyNames documents the names the anomaly event's a.name takes: the
// record layer's, the message parsers' (package dissect) and the
// machine's. Like the events, names are added, never renamed.
var AnomalyNames = []Field{
	{"invalid_record_type", "record", "a record header with a content type outside 20-24 (as a connection's first bytes, before any record either way, it is parse_error \"not TLS\" instead)"},
	{"invalid_record_version", "record", "a record version outside SSL 3.0 - TLS 1.2"},
	{"invalid_record_length", "record", "a record longer than 2^14 + 2048 bytes"},
	{"invalid_sslv2_header", "record", "an SSLv2 record header that cannot be"},
	{"truncated_record", "record", "the stream ended inside a record"},
	{"zero_length_handshake_fragment", "record", "a cleartext handshake record of 0 bytes"},
	{"handshake_length_mismatch", "record", "a handshake message cut by another record type, a key change or the end of the stream"},
	{"handshake_message_too_large", "record", "a handshake message over the reassembly cap, passed uninspected"},
	{"record_spans_key_change", "record", "bytes after the TLS 1.3 ServerHello in its record"},
	{"invalid_heartbeat_type", "record", "a cleartext heartbeat neither request nor response"},
	{"invalid_heartbeat_length", "record", "a heartbeat record too short for its header"},
	{"heartbeat_padding_too_short", "record", "a cleartext heartbeat response with less than 16 bytes of padding"},
	{"heartbeat_overflow", "record", "Heartbleed layer 1: a cleartext request whose payload_length + 3 + 16 exceeds its record"},
	{"invalid_alert_length", "record", "an alert record that is not a whole number of alerts"},
	{"invalid_alert_level", "record", "an alert level other than warning or fatal"},
	{"too_many_alerts_in_record", "record", "more alerts in one record than are decoded"},
	{"invalid_change_cipher_spec", "record", "a ChangeCipherSpec other than the single byte 1"},
	{"duplicate_extension", "message", "an extension type twice in one hello"},
	{"several_sni_names", "message", "more than one name in server_name"},
	{"invalid_sni_type", "message", "a server_name entry that is not a host_name"},
	{"invalid_sni_length", "message", "a server_name list or host name of a bad length"},
	{"psk_not_last", "message", "pre_shared_key is not the last extension of the ClientHello"},
	{"invalid_certificate", "message", "crypto/x509 rejected a certificate of the chain (reported when a rule reads the chain)"},
	{AnomalyUnexpectedMessage, "machine", "a message or record the state does not allow; the connection fails"},
	{AnomalyHeartbeatDuringHandshake, "machine", "Heartbleed layer 2: a heartbeat before both directions are encrypted"},
	{AnomalyHeartbeatBeforeApplicationData, "machine", "Heartbleed layer 4: an encrypted heartbeat request before any application data in its direction"},
	{AnomalyHeartbeatRequestTooShort, "machine", "Heartbleed layer 4: an encrypted heartbeat request shorter than the negotiated cipher allows"},
	{AnomalyHeartbeatNotNegotiated, "machine", "a heartbeat the hellos did not negotiate, or a request the receiver does not allow, or any in TLS 1.3"},
	{AnomalyTooManyHeartbeatRequests, "machine", "Heartbleed layer 3: a heartbeat request while four of its direction are unanswered; past them a leak could hide behind a longer request"},
}
