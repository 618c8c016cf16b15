package dissect

import (
	"fmt"
	"strconv"

	"golang.org/x/crypto/cryptobyte"
)

// Heartbeat message types (RFC 6520, section 3).
const (
	HeartbeatRequest  uint8 = 1
	HeartbeatResponse uint8 = 2
)

// HeartbeatMinPadding is the padding every heartbeat message must carry
// (RFC 6520, section 4). A request whose payload_length leaves less than
// this is how Heartbleed reads memory past the request: the OpenSSL fix
// discards any message where payload_length + 3 + 16 exceeds the record.
const HeartbeatMinPadding = 16

// heartbeatHeaderLen is the type and payload_length of a heartbeat message.
const heartbeatHeaderLen = 3

// Heartbeat is the decoded header of a cleartext heartbeat record.
type Heartbeat struct {
	// Type is HeartbeatRequest or HeartbeatResponse, or what the record
	// said.
	Type uint8
	// PayloadLength is the payload length the message declares.
	PayloadLength int
	// PaddingLength is what the record holds after the payload: record
	// length - 3 - PayloadLength. It is negative when the declared payload
	// runs past the record.
	PaddingLength int
	// Overflow reports a request whose payload_length + 3 + 16 exceeds
	// the record length: a peer that echoes the payload would send back
	// bytes that were never in the request.
	Overflow bool
}

// TypeName returns "request", "response" or "unknown(N)".
func (h Heartbeat) TypeName() string {
	switch h.Type {
	case HeartbeatRequest:
		return "request"
	case HeartbeatResponse:
		return "response"
	}
	return "unknown(" + strconv.Itoa(int(h.Type)) + ")"
}

// parseHeartbeat decodes the fragment of a cleartext heartbeat record. It
// returns the anomaly name and detail of the first problem found, if any;
// ok is false when the record cannot even hold a heartbeat header.
func parseHeartbeat(fragment []byte) (h Heartbeat, ok bool, name, detail string) {
	s := cryptobyte.String(fragment)
	var plen uint16
	if !s.ReadUint8(&h.Type) || !s.ReadUint16(&plen) {
		return h, false, AnomalyInvalidHeartbeatLength, fmt.Sprintf("heartbeat record of %d bytes", len(fragment))
	}
	h.PayloadLength = int(plen)
	h.PaddingLength = len(fragment) - heartbeatHeaderLen - h.PayloadLength
	switch {
	case h.Type != HeartbeatRequest && h.Type != HeartbeatResponse:
		return h, true, AnomalyInvalidHeartbeatType, "type " + strconv.Itoa(int(h.Type))
	case h.PaddingLength < HeartbeatMinPadding && h.Type == HeartbeatRequest:
		h.Overflow = true
		return h, true, AnomalyHeartbeatOverflow, fmt.Sprintf("request payload_length %d + 3 + %d > record length %d", h.PayloadLength, HeartbeatMinPadding, len(fragment))
	case h.PaddingLength < HeartbeatMinPadding:
		return h, true, AnomalyHeartbeatPaddingTooShort, fmt.Sprintf("response payload_length %d leaves %d bytes of padding in a record of %d", h.PayloadLength, h.PaddingLength, len(fragment))
	}
	return h, true, "", ""
}
