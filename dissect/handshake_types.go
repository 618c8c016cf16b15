package dissect

import "errors"

// HandshakeType is the msg_type byte of a handshake message header.
type HandshakeType uint8

// Handshake message types (IANA "TLS HandshakeType" registry).
const (
	MsgHelloRequest             HandshakeType = 0
	MsgClientHello              HandshakeType = 1
	MsgServerHello              HandshakeType = 2
	MsgHelloVerifyRequest       HandshakeType = 3 // DTLS only
	MsgNewSessionTicket         HandshakeType = 4
	MsgEndOfEarlyData           HandshakeType = 5
	MsgHelloRetryRequest        HandshakeType = 6 // TLS 1.3 drafts before 22 only
	MsgEncryptedExtensions      HandshakeType = 8
	MsgRequestConnectionID      HandshakeType = 9  // DTLS 1.3
	MsgNewConnectionID          HandshakeType = 10 // DTLS 1.3
	MsgCertificate              HandshakeType = 11
	MsgServerKeyExchange        HandshakeType = 12
	MsgCertificateRequest       HandshakeType = 13
	MsgServerHelloDone          HandshakeType = 14
	MsgCertificateVerify        HandshakeType = 15
	MsgClientKeyExchange        HandshakeType = 16
	MsgClientCertificateRequest HandshakeType = 17 // RFC 9261
	MsgFinished                 HandshakeType = 20
	MsgCertificateURL           HandshakeType = 21
	MsgCertificateStatus        HandshakeType = 22
	MsgSupplementalData         HandshakeType = 23
	MsgKeyUpdate                HandshakeType = 24
	MsgCompressedCertificate    HandshakeType = 25 // RFC 8879
	MsgEKTKey                   HandshakeType = 26 // RFC 8870
	MsgNextProtocol             HandshakeType = 67 // NPN, never standardised
	MsgMessageHash              HandshakeType = 254
)

var handshakeTypeNames = [...]string{
	MsgHelloRequest:             "hello_request",
	MsgClientHello:              "client_hello",
	MsgServerHello:              "server_hello",
	MsgHelloVerifyRequest:       "hello_verify_request",
	MsgNewSessionTicket:         "new_session_ticket",
	MsgEndOfEarlyData:           "end_of_early_data",
	MsgHelloRetryRequest:        "hello_retry_request",
	MsgEncryptedExtensions:      "encrypted_extensions",
	MsgRequestConnectionID:      "request_connection_id",
	MsgNewConnectionID:          "new_connection_id",
	MsgCertificate:              "certificate",
	MsgServerKeyExchange:        "server_key_exchange",
	MsgCertificateRequest:       "certificate_request",
	MsgServerHelloDone:          "server_hello_done",
	MsgCertificateVerify:        "certificate_verify",
	MsgClientKeyExchange:        "client_key_exchange",
	MsgClientCertificateRequest: "client_certificate_request",
	MsgFinished:                 "finished",
	MsgCertificateURL:           "certificate_url",
	MsgCertificateStatus:        "certificate_status",
	MsgSupplementalData:         "supplemental_data",
	MsgKeyUpdate:                "key_update",
	MsgCompressedCertificate:    "compressed_certificate",
	MsgEKTKey:                   "ekt_key",
	MsgNextProtocol:             "next_protocol",
	MsgMessageHash:              "message_hash",
}

// String returns the registry name of the type ("client_hello", ...), the
// name rules see in the handshake event, or "unknown_N" for an unassigned
// value.
func (t HandshakeType) String() string {
	if int(t) < len(handshakeTypeNames) && handshakeTypeNames[t] != "" {
		return handshakeTypeNames[t]
	}
	return "unknown_" + string(appendDecimal(nil, uint64(t)))
}

// Known reports whether t is an assigned handshake type.
func (t HandshakeType) Known() bool {
	return int(t) < len(handshakeTypeNames) && handshakeTypeNames[t] != ""
}

// ErrMalformedMessage is the error every handshake message parser wraps: a
// body that does not follow the message's grammar. errors.Is(err,
// ErrMalformedMessage) tells it apart from other failures.
var ErrMalformedMessage = errors.New("malformed handshake message")

// MessageError says which message and which part of it could not be parsed.
// Field names the element of the grammar, in the RFC's words
// ("cipher_suites", "key_share extension", "certificate_list"...).
type MessageError struct {
	Type  HandshakeType
	Field string
}

func (e *MessageError) Error() string {
	return "dissect: " + e.Type.String() + ": malformed " + e.Field
}

// Unwrap makes errors.Is(err, ErrMalformedMessage) hold.
func (e *MessageError) Unwrap() error { return ErrMalformedMessage }

func malformedMsg(t HandshakeType, field string) error {
	return &MessageError{Type: t, Field: field}
}

// Names of the anomalies the message parsers report. They are part of the
// rule contract (the anomaly event's name field): add, never rename.
const (
	// AnomalyDuplicateExtension: an extension type occurs twice in one
	// hello (RFC 8446 4.2 forbids it). The first occurrence is decoded.
	AnomalyDuplicateExtension = "duplicate_extension"
	// AnomalySeveralSNINames: the server_name list has more than one
	// entry (RFC 6066 3 allows one name per type, and one type exists).
	AnomalySeveralSNINames = "several_sni_names"
	// AnomalyInvalidSNIType: a server_name entry whose name_type is not
	// host_name (0).
	AnomalyInvalidSNIType = "invalid_sni_type"
	// AnomalyInvalidSNILength: a server_name list or host name whose length
	// does not fit its container, is empty, or exceeds maxHostNameLen.
	AnomalyInvalidSNILength = "invalid_sni_length"
	// AnomalyPSKNotLast: pre_shared_key is not the last extension of the
	// ClientHello (RFC 8446 4.2.11).
	AnomalyPSKNotLast = "psk_not_last"
	// AnomalyInvalidCertificate: crypto/x509 rejected a certificate of a
	// Certificate message; its DER and SHA-256 are still reported.
	AnomalyInvalidCertificate = "invalid_certificate"
)

// appendAnomaly records an anomaly for the caller to stamp with the
// direction (the parsers do not know which stream a message came from).
// Nothing is allocated until a message has an anomaly.
func appendAnomaly(dst []Anomaly, name, detail string) []Anomaly {
	return append(dst, Anomaly{Name: name, Detail: detail})
}
